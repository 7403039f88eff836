"""The job record: Redis keys, statuses, and the atomic transitions every process shares.

A job is a Redis hash ``vq:job:<id>`` plus its image bytes under ``vq:img:<id>`` (claim
check: the Celery message carries only the id). Every move to a terminal status deletes the
image, gives the record its result TTL and publishes the id on ``vq:done`` so that waiting
API requests wake up without polling. The moves that must not race (submit against the
queue limit, claim against cancel) are Lua scripts, so each is one atomic round trip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DONE_CHANNEL = "vq:done"
TASK_NAME = "visionq.infer"


class Status(StrEnum):
    """Life cycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED})


def job_key(job_id: str) -> str:
    """Redis key of a job's record."""
    return f"vq:job:{job_id}"


def image_key(job_id: str) -> str:
    """Redis key of a job's image bytes."""
    return f"vq:img:{job_id}"


INTERACTIVE = "interactive"
BULK = "bulk"
LANES = (INTERACTIVE, BULK)


def queue_name(model: str, lane: str = INTERACTIVE) -> str:
    """The dedicated queue of a model: a batch never mixes models.

    Bulk jobs (batch uploads of many images) have their own queue per model, so a deep
    backlog of them never sits in front of an interactive request in Redis.
    """
    return f"gpu.{model}" if lane == INTERACTIVE else f"gpu.{model}.{lane}"


def idempotency_key(scope: str, route: str, key: str) -> str:
    """Redis key of an Idempotency-Key's record: per API-key scope and per route path."""
    digest = hashlib.sha256(f"{route}\n{key}".encode()).hexdigest()
    return f"vq:idem:{scope}:{digest}"


def worker_key(worker_id: str) -> str:
    """Heartbeat key of a live worker."""
    return f"vq:worker:{worker_id}"


WORKER_PATTERN = "vq:worker:*"


@dataclass
class JobRecord:
    """A job as the API reports it."""

    job_id: str
    model: str
    status: str
    filename: str = ""
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
        """Build from HGETALL output."""
        h = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        return cls(
            job_id=job_id,
            model=h.get("model", ""),
            status=h.get("status", ""),
            filename=h.get("filename", ""),
            result=json.loads(h["result"]) if h.get("result") else None,
            error=json.loads(h["error"]) if h.get("error") else None,
            timings=json.loads(h["timings"]) if h.get("timings") else {},
        )

    def to_api(self) -> dict[str, Any]:
        """The JSON shape of GET /v1/jobs/{id}."""
        out: dict[str, Any] = {"job_id": self.job_id, "model": self.model, "status": self.status}
        if self.filename:
            out["filename"] = self.filename
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        out["timings"] = self.timings
        return out


# Shared Lua fragment: move job KEYS[j] to a terminal status. Arguments: job key, image key,
# status, error json ('' for none), result ttl, job id.
_FINISH_FN = """
local function finish(jk, ik, status, err, ttl, id)
  redis.call('HSET', jk, 'status', status)
  if err ~= '' then redis.call('HSET', jk, 'error', err) end
  redis.call('DEL', ik)
  redis.call('EXPIRE', jk, ttl)
  redis.call('ZREM', 'vq:queued', id)
  redis.call('PUBLISH', KEYS[1], id)
end
"""

# Jobs not yet claimed by any worker, scored by when they were (re)published; the sweeper
# (services/gpu_worker/sweeper.py) finds the ones whose message was lost.
QUEUED_INDEX = "vq:queued"

# KEYS[1]=done channel, KEYS[2]=queue list, then job/image key pairs, then the idempotency
# key when ARGV[8] is not ''. ARGV: max_depth, job_ttl, model, created, top_k, deadline, lane,
# idempotency record, max_bytes (0 = none), then (id, filename, bytes) triples.
# Returns -1 when the queue is too deep, -2 when Redis's used memory plus the images would
# pass max_bytes, the stored record (a string) when the idempotency key was used before
# (nothing written in these three cases), else the queue depth seen.
SUBMIT_LUA = """
local idem = ARGV[8] ~= ''
-- idempotency: a key seen before answers with its record and writes nothing
if idem then
  local seen = redis.call('GET', KEYS[#KEYS])
  if seen then return seen end
end
local depth = redis.call('LLEN', KEYS[2])
local n = (#KEYS - 2 - (idem and 1 or 0)) / 2
if depth + n > tonumber(ARGV[1]) then return -1 end
-- memory budget: refuse by bytes before Redis itself refuses writes (maxmemory)
if tonumber(ARGV[9]) > 0 then
  local info = redis.call('INFO', 'memory')
  local bytes = tonumber(string.match(info, 'used_memory:(%d+)'))
  for i = 0, n - 1 do bytes = bytes + #ARGV[12 + 3*i] end
  if bytes > tonumber(ARGV[9]) then return -2 end
end
for i = 0, n - 1 do
  local jk, ik = KEYS[3 + 2*i], KEYS[4 + 2*i]
  local a = 10 + 3*i
  redis.call('HSET', jk, 'status', 'queued', 'model', ARGV[3], 'created', ARGV[4],
             'top_k', ARGV[5], 'deadline', ARGV[6], 'lane', ARGV[7],
             'filename', ARGV[a + 1], 'deliveries', 0)
  redis.call('EXPIRE', jk, ARGV[2])
  redis.call('SET', ik, ARGV[a + 2], 'EX', ARGV[2])
  redis.call('ZADD', 'vq:queued', ARGV[4], ARGV[a])
end
if idem then redis.call('SET', KEYS[#KEYS], ARGV[8], 'EX', ARGV[2]) end
return depth
"""

# KEYS[1]=done channel, then job/image key pairs. ARGV: now, max_deliveries, result_ttl,
# worker, mode, then job ids. Per job returns {verdict, deliveries, created, top_k, image},
# where verdict is run | skip (already terminal or unknown) | expired | worker_lost |
# suspect. In mode "batch" a job already marked running (a redelivery: its last worker
# died) is only reported as suspect, not counted: the worker claims it again alone
# (mode "solo") when it is ready to run it by itself.
# allow-oom (here and in CANCEL_LUA): a full Redis must still drain; see services/common/lua.
_ALLOW_OOM = "#!lua flags=allow-oom\n"

CLAIM_LUA = (
    _ALLOW_OOM
    + _FINISH_FN
    + """
local out = {}
local n = (#KEYS - 1) / 2
for i = 0, n - 1 do
  local jk, ik, id = KEYS[2 + 2*i], KEYS[3 + 2*i], ARGV[6 + i]
  local st = redis.call('HGET', jk, 'status')
  if st ~= 'queued' and st ~= 'running' then
    out[i + 1] = {'skip', 0, '', '', ''}
  elseif st == 'running' and ARGV[5] == 'batch' then
    out[i + 1] = {'suspect', redis.call('HGET', jk, 'deliveries') or 0, '', '', ''}
  else
    local d = redis.call('HINCRBY', jk, 'deliveries', 1)
    local dl = tonumber(redis.call('HGET', jk, 'deadline') or '')
    local created = redis.call('HGET', jk, 'created') or ''
    if dl and tonumber(ARGV[1]) > dl then
      finish(jk, ik, 'expired', cjson.encode({code='expired',
             message='the job deadline passed before a worker reached it'}), ARGV[3], id)
      out[i + 1] = {'expired', d, created, '', ''}
    elseif d > tonumber(ARGV[2]) then
      finish(jk, ik, 'failed', cjson.encode({code='worker_lost',
             message='a worker died while running this job ' .. (d - 1) .. ' times'}),
             ARGV[3], id)
      out[i + 1] = {'worker_lost', d, created, '', ''}
    else
      redis.call('HSET', jk, 'status', 'running', 'worker', ARGV[4], 'started', ARGV[1])
      redis.call('ZREM', 'vq:queued', id)
      local img = redis.call('GET', ik)
      if not img then
        finish(jk, ik, 'failed', cjson.encode({code='image_missing',
               message='the image bytes expired before a worker reached the job'}), ARGV[3], id)
        out[i + 1] = {'skip', d, created, '', ''}
      else
        out[i + 1] = {'run', d, created, redis.call('HGET', jk, 'top_k') or '5', img}
      end
    end
  end
end
return out
"""
)

# KEYS: done channel, job key, image key. ARGV: result ttl, job id.
# Returns 1 when cancelled, 0 when the job exists but has started or ended, -1 when unknown.
CANCEL_LUA = (
    _ALLOW_OOM
    + _FINISH_FN
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if not st then return -1 end
if st ~= 'queued' then return 0 end
finish(KEYS[2], KEYS[3], 'cancelled', '', ARGV[1], ARGV[2])
return 1
"""
)
