-- Store the outcomes of a batch (succeeded or failed), one call for the whole batch, and
-- ack their messages in the same step.
-- KEYS: done channel, queued index, kombu's unacked index (zset) and unacked hash, the set
--       of delivery tags this worker holds, then (job record, image) pairs.
-- ARGV: now, result_ttl, worker, then per job (id, status, result JSON, error JSON,
--       timings JSON, delivery tag), '' where there is none.
-- A result is stored only by the worker that holds the job's claim: after a worker was
-- declared dead (gpu_worker/reaper.py) and its job claimed again elsewhere, a late finish
-- from it (it was only paused) stores nothing, and neither does a second finish of a job
-- already ended. Returns 1 (stored) or 0 per job.
-- Every message given is acked here, stored or not, as kombu's ack would (the three
-- deletions of its QoS.ack): the worker acks each of them right after this call anyway,
-- and doing it here saves a round trip per message and makes store + ack one atomic step.
local out = {}
local n = (#KEYS - 5) / 2
for i = 0, n - 1 do
  local jk, ik = KEYS[6 + 2*i], KEYS[7 + 2*i]
  local a = 4 + 6*i
  local st, w = unpack(redis.call('HMGET', jk, 'status', 'worker'))
  if st == 'running' and w == ARGV[3] then
    local fields = {'finished', ARGV[1]}
    if ARGV[a + 2] ~= '' then fields[#fields + 1] = 'result'; fields[#fields + 1] = ARGV[a + 2] end
    if ARGV[a + 4] ~= '' then fields[#fields + 1] = 'timings'; fields[#fields + 1] = ARGV[a + 4] end
    redis.call('HSET', jk, unpack(fields))
    -- Counts how often a result was written: the fault tests prove it stays 1.
    redis.call('HINCRBY', jk, 'stores', 1)
    finish(jk, ik, KEYS[2], KEYS[1], ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[2])
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
  local tag = ARGV[a + 5]
  if tag ~= '' then
    redis.call('ZREM', KEYS[3], tag)
    redis.call('HDEL', KEYS[4], tag)
    redis.call('SREM', KEYS[5], tag)
  end
end
return out
