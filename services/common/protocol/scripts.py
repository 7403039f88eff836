"""The Lua scripts of the job protocol, each behind one typed function.

Scripts live as ``lua/*.lua`` files; the ones that end jobs are prefixed with
``lua/finish_fn.lua``, the one place that says what ending a job means. Every key a script
touches is passed in KEYS (see keys.py), so a Redis Cluster with hash tags could run them.
Each call goes through ``register_script`` (EVALSHA, falling back to EVAL once per server),
except the three hot ones (submit, claim, finish), which run as EVALSHA inside a pipeline
with the plain commands that move the image bytes (``Lua.pipe``): big strings cost Redis
far more through Lua than through SET and MGET.

The scripts a full Redis must still run (``maxmemory`` reached, ``noeviction``) start with
``#!lua flags=allow-oom``: ending, claiming and cancelling jobs, the rate-limit bucket, the
heartbeat and kombu's delivery bookkeeping each write a few bytes so that the backlog can
drain, and each finished job frees its image. Submitting never has the flag: it is what
must stop first when memory runs out (services/common/redis_memory.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from services.common.protocol.keys import (
    DONE_CHANNEL,
    QUEUED_INDEX,
    RATE_LIMIT_PREFIX,
    image_key,
    job_pairs,
)

_LUA = Path(__file__).with_name("lua")


_ALLOW_OOM = "#!lua flags=allow-oom\n"  # must be the script's first line


def _text(name: str, ends_jobs: bool, allow_oom: bool = False) -> str:
    body = (_LUA / f"{name}.lua").read_text()
    text = ((_LUA / "finish_fn.lua").read_text() + body) if ends_jobs else body
    return _ALLOW_OOM + text if allow_oom else text


def script_text(name: str) -> str:
    """The text of ``lua/<name>.lua`` (for the worker's own scripts: heartbeat, hand-back...)."""
    return _text(name, ends_jobs=False)


@dataclass(frozen=True)
class Lua:
    """One script's text and SHA1: run by EVALSHA, loaded once when the server lacks it.

    redis-py's ``register_script`` builds a Script (hashing the text) per call, and in a
    pipeline asks SCRIPT EXISTS first: a round trip per execute. These calls ask nothing.
    """

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())

    def run(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA alone (EVAL-free: the text is loaded once when the server lacks it)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def pipe(
        self,
        client: redis.Redis,
        keys: list[str],
        args: list[Any],
        before: Callable[[Any], None] = lambda _: None,
        after: Callable[[Any], None] = lambda _: None,
    ) -> list[Any]:
        """One round trip: ``before``'s commands, the script, ``after``'s; their replies.

        A non-transactional pipeline (a full Redis refuses a whole MULTI, even its reads);
        the first error is raised. The script's server-side cache is filled on NOSCRIPT.
        """
        for attempt in (0, 1):
            pipe = client.pipeline(transaction=False)
            before(pipe)
            pipe.evalsha(self.sha, len(keys), *keys, *args)
            after(pipe)
            try:
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                client.script_load(self.text)
        raise AssertionError("unreachable")

    async def apipe(
        self,
        client: aioredis.Redis,
        keys: list[str],
        args: list[Any],
        before: Callable[[Any], None] = lambda _: None,
    ) -> list[Any]:
        """The asyncio twin of :meth:`pipe` (commands before the script only)."""
        for attempt in (0, 1):
            pipe = client.pipeline(transaction=False)
            before(pipe)
            pipe.evalsha(self.sha, len(keys), *keys, *args)
            try:
                return list(await pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                await client.script_load(self.text)
        raise AssertionError("unreachable")


SUBMIT_LUA = _text("submit", ends_jobs=False)
CLAIM_LUA = _text("claim", ends_jobs=True, allow_oom=True)
FINISH_LUA = _text("finish", ends_jobs=True, allow_oom=True)
_SUBMIT = Lua(SUBMIT_LUA)
_CLAIM = Lua(CLAIM_LUA)
_FINISH = Lua(FINISH_LUA)
CANCEL_LUA = _text("cancel", ends_jobs=True, allow_oom=True)
KOMBU_APPEND_LUA = _text("kombu_append", ends_jobs=False)  # the files carry their own flag
_KOMBU_APPEND = Lua(KOMBU_APPEND_LUA)  # once per delivered message
_KOMBU_DELIVER_MANY = Lua(_text("kombu_deliver_many", ends_jobs=False))
KOMBU_BIND_LUA = _text("kombu_bind", ends_jobs=False)


@dataclass(frozen=True)
class NewJob:
    """One job to store: its id, the client's file name, the image bytes and the Celery
    message that the script pushes onto the queue ('' to store the job only)."""

    job_id: str
    filename: str
    image: bytes
    message: str = ""


async def submit_jobs(
    client: aioredis.Redis,
    *,
    queue: str,
    jobs: list[NewJob],
    max_depth: int,
    job_ttl_s: int,
    model: str,
    created: float,
    params_json: str,
    deadline: float | None,
    lane: str,
    max_bytes: int = 0,
    idempotency: tuple[str, str] | None = None,
    carrier: dict[str, str] | None = None,
) -> int | bytes:
    """Store the jobs' records and images and push their messages, or nothing: -1 when the
    queue is too deep, -2 when Redis's used memory plus the images would pass ``max_bytes``
    (0: no such limit). ``carrier`` (trace context) is written into every record.

    ``idempotency`` is (key, record): the record is stored under the key with the jobs; when
    the key is already there, the stored record (bytes) comes back and nothing is written.
    Raises ``redis.exceptions.OutOfMemoryError`` when Redis itself refuses the write (the
    images already written are then deleted, or expire with the job TTL).

    One round trip: the images are SET first in the same pipeline, and the script deletes
    them in every case that accepts nothing.
    """
    keys = [queue, QUEUED_INDEX, *job_pairs([j.job_id for j in jobs])]
    args: list[Any] = [max_depth, job_ttl_s, model, created, params_json]
    args += ["" if deadline is None else deadline, lane]
    args += [idempotency[1] if idempotency else "", max_bytes]
    args += [json.dumps(carrier) if carrier else ""]
    for job in jobs:
        args += [job.job_id, job.filename, job.message]
    if idempotency is not None:
        keys.append(idempotency[0])

    def images(pipe: Any) -> None:
        for job in jobs:
            pipe.set(image_key(job.job_id), job.image, ex=job_ttl_s)

    try:
        replies = await _SUBMIT.apipe(client, keys, args, before=images)
    except redis.exceptions.OutOfMemoryError:
        # Some images may have been written before Redis refused: give their bytes back.
        await client.delete(*(image_key(j.job_id) for j in jobs))
        raise
    reply = replies[-1]
    return reply if isinstance(reply, bytes) else int(reply)


@dataclass(frozen=True)
class ClaimReply:
    """What the claim script said about one job."""

    verdict: str  # run | skip | expired | worker_lost | suspect | image_missing
    deliveries: int
    created: float | None
    params: str  # the handler's params as JSON ('' for the defaults)
    image: bytes


def claim_jobs(
    client: redis.Redis,
    job_ids: list[str],
    *,
    now: float,
    max_deliveries: int,
    result_ttl_s: int,
    worker: str,
    solo: bool,
) -> list[ClaimReply]:
    """Mark the jobs running (or end them: expired, poison, image gone) and fetch images.

    One round trip: the script, then MGET of the images. A ``run`` job whose image vanished
    between the two (the script saw it) comes back as ``image_missing``, still running: the
    caller ends it.
    """
    keys = [DONE_CHANNEL, QUEUED_INDEX, *job_pairs(job_ids)]
    args: list[Any] = [now, max_deliveries, result_ttl_s, worker, "solo" if solo else "batch"]
    raw, images = _CLAIM.pipe(
        client,
        keys,
        [*args, *job_ids],
        after=lambda pipe: pipe.mget([image_key(j) for j in job_ids]),
    )
    replies = []
    for (verdict, deliveries, created, params), image in zip(raw, images, strict=True):
        said = verdict.decode()
        if said == "run" and image is None:
            said = "image_missing"
        replies.append(
            ClaimReply(
                verdict=said,
                deliveries=int(deliveries),
                created=float(created) if created else None,
                params=params.decode() if params else "",
                image=image if said == "run" else b"",
            )
        )
    return replies


@dataclass(frozen=True)
class JobEnd:
    """The end of one job as the worker stores it."""

    job_id: str
    status: str  # succeeded | failed
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    timings: dict[str, Any] | None = None
    delivery_tag: str = ""  # its message, acked with the result ('' : acked by kombu)


@dataclass(frozen=True)
class AckKeys:
    """Where kombu keeps a worker's unacked messages: what an ack deletes from."""

    index: str  # zset: delivery tag -> delivery time
    table: str  # hash: delivery tag -> message
    held: str  # set: the tags this worker holds (gpu_worker/handback.py)


# Keys no message is ever recorded under: a finish without acks touches nothing there.
NO_ACKS = AckKeys("vq:no-acks", "vq:no-acks", "vq:no-acks")


def _json(value: dict[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def finish_jobs(
    client: redis.Redis,
    ends: list[JobEnd],
    *,
    now: float,
    result_ttl_s: int,
    worker: str,
    acks: AckKeys = NO_ACKS,
) -> list[bool]:
    """Store every outcome ``worker`` still owns, drop the images, wake the waiters, and
    ack each end's message (its ``delivery_tag``) whether or not its result was stored.

    One call per batch; per job, whether it was stored (see lua/finish.lua: a job claimed
    again elsewhere, or already ended, is not).
    """
    if not ends:
        return []
    keys = [DONE_CHANNEL, QUEUED_INDEX, acks.index, acks.table, acks.held]
    keys += job_pairs([e.job_id for e in ends])
    args: list[Any] = [now, result_ttl_s, worker]
    for end in ends:
        args += [end.job_id, end.status, _json(end.result), _json(end.error)]
        args += [_json(end.timings), end.delivery_tag]
    (raw,) = _FINISH.pipe(client, keys, args)
    return [bool(int(flag)) for flag in raw]


async def cancel_jobs(
    client: aioredis.Redis, job_ids: list[str], *, result_ttl_s: int
) -> list[int]:
    """Cancel jobs not yet started: per job 1 (cancelled now), 0 (started/ended), -1 (unknown)."""
    if not job_ids:
        return []
    keys = [DONE_CHANNEL, QUEUED_INDEX, *job_pairs(job_ids)]
    raw = await client.register_script(CANCEL_LUA)(keys=keys, args=[result_ttl_s, *job_ids])
    return [int(x) for x in raw]


# allow-oom: one small key per API key; reading results and cancelling must keep working
# (and drain the backlog) while Redis is at its maxmemory.
RATE_LIMIT_LUA = _text("rate_limit", ends_jobs=False, allow_oom=True)


async def take_token(
    client: aioredis.Redis, bucket: str, *, interval_ms: float, tolerance_ms: float
) -> tuple[bool, int]:
    """Take one request from a rate-limit bucket: (allowed, ms to wait when not)."""
    allowed, wait_ms = await client.register_script(RATE_LIMIT_LUA)(
        keys=[RATE_LIMIT_PREFIX + bucket], args=[interval_ms, tolerance_ms]
    )
    return bool(int(allowed)), int(wait_ms)


def kombu_append(
    client: redis.Redis,
    keys: list[str],
    *,
    delivery_time: float,
    tag: str,
    message_json: str,
    queued_json: str = "",
) -> bool:
    """kombu's unacked record of a delivered message, even while Redis is full.

    ``keys``: index zset, hash, and optionally a set of the tags one worker holds, then
    that worker's fence key and the message's queue. A fenced worker's message goes back
    to the head of its queue (``queued_json``, as it sat there) instead: returns False.
    """
    args: list[str | float] = [delivery_time, tag, message_json]
    if len(keys) > 3:
        args.append(queued_json)
    return bool(int(_KOMBU_APPEND.run(client, keys, args)))


def kombu_deliver_many(
    client: redis.Redis,
    records: tuple[str, str, str, str],
    lists: list[list[str]],
    *,
    delivery_time: float,
    most: int,
) -> list[tuple[str, str]]:
    """Take up to ``most`` waiting messages and record each as delivered, in one call.

    ``records``: kombu's unacked index and hash, the worker's held set and its fence key.
    ``lists``: per queue, in kombu's queue-cycle order, its lists in priority order (all
    of the same length). Messages come in the order repeated BRPOPs with kombu's
    round-robin rotation would take them; a fenced worker gets none. Returns (list,
    message JSON) pairs. Even while Redis is full (``allow-oom``).
    """
    per = len(lists[0]) if lists else 0
    if most <= 0 or not per or any(len(group) != per for group in lists):
        return []
    keys = [*records, *(key for group in lists for key in group)]
    reply = _KOMBU_DELIVER_MANY.run(client, keys, [delivery_time, most, per])
    pairs = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
    return list(zip(pairs[0::2], pairs[1::2], strict=True))


def kombu_bind(client: redis.Redis, table: str, permanent: str, *, member: str) -> None:
    """kombu's queue binding (both binding sets), even while Redis is full."""
    client.register_script(KOMBU_BIND_LUA)(keys=[table, permanent], args=[member])


SET_ADD_LUA = _text("set_add", ends_jobs=False)


def set_add(client: redis.Redis, key: str, member: str) -> None:
    """SADD one member, even while Redis is full (allow-oom)."""
    client.register_script(SET_ADD_LUA)(keys=[key], args=[member])


_HASH_FLAG = Lua(_text("hash_flag", ends_jobs=False))  # the file carries its own flag


async def hash_flag(client: aioredis.Redis, key: str, field: str, value: str) -> None:
    """HSET one small field, even while Redis is full (allow-oom): a flag whose purpose is
    to free memory (a batch's ``cancelled``) must not be refused for lack of it."""
    await _HASH_FLAG.apipe(client, [key], [field, value])
