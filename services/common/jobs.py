"""The job record: Redis keys, statuses, and the atomic transitions every process shares.

A job is a Redis hash ``vq:job:<id>`` plus its image bytes under ``vq:img:<id>`` (claim
check: the Celery message carries only the id). Every move to a terminal status deletes the
image, gives the record its result TTL and publishes the id on ``vq:done`` so that waiting
API requests wake up without polling. The moves that must not race (submit against the
queue limit, claim against cancel) are Lua scripts, so each is one atomic round trip.
"""

from __future__ import annotations

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
            result = self.result
            if result.get("random_weights"):
                # The worker marks results of random weights; the flag is the job's, not
                # part of the task's result.
                out["random_weights"] = True
                result = {k: v for k, v in result.items() if k != "random_weights"}
            out["result"] = result
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

# KEYS[1]=done channel, KEYS[2]=queue list, then job/image key pairs. ARGV: max_depth,
# job_ttl, model, created, top_k, deadline, lane, then (id, filename, bytes) triples.
# Returns -1 when the queue is too deep (nothing written), else the queue depth seen.
SUBMIT_LUA = """
local depth = redis.call('LLEN', KEYS[2])
local n = (#KEYS - 2) / 2
if depth + n > tonumber(ARGV[1]) then return -1 end
for i = 0, n - 1 do
  local jk, ik = KEYS[3 + 2*i], KEYS[4 + 2*i]
  local a = 8 + 3*i
  redis.call('HSET', jk, 'status', 'queued', 'model', ARGV[3], 'created', ARGV[4],
             'top_k', ARGV[5], 'deadline', ARGV[6], 'lane', ARGV[7],
             'filename', ARGV[a + 1], 'deliveries', 0)
  redis.call('EXPIRE', jk, ARGV[2])
  redis.call('SET', ik, ARGV[a + 2], 'EX', ARGV[2])
  redis.call('ZADD', 'vq:queued', ARGV[4], ARGV[a])
end
return depth
"""

# KEYS[1]=done channel, then job/image key pairs. ARGV: now, max_deliveries, result_ttl,
# worker, mode, then job ids. Per job returns {verdict, deliveries, created, top_k, image},
# where verdict is run | skip (already terminal or unknown) | expired | worker_lost |
# suspect. In mode "batch" a job already marked running (a redelivery: its last worker
# died) is only reported as suspect, not counted: the worker claims it again alone
# (mode "solo") when it is ready to run it by itself.
CLAIM_LUA = (
    _FINISH_FN
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
    _FINISH_FN
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if not st then return -1 end
if st ~= 'queued' then return 0 end
finish(KEYS[2], KEYS[3], 'cancelled', '', ARGV[1], ARGV[2])
return 1
"""
)
