-- Store the outcomes of a batch (succeeded or failed), one call for the whole batch.
-- KEYS: done channel, queued index, then (job record, image) pairs.
-- ARGV: now, result_ttl, worker, then per job (id, status, result JSON, error JSON,
--       timings JSON), '' where there is none.
-- A result is stored only by the worker that holds the job's claim: after a worker was
-- declared dead (gpu_worker/reaper.py) and its job claimed again elsewhere, a late finish
-- from it (it was only paused) stores nothing, and neither does a second finish of a job
-- already ended. Returns 1 (stored) or 0 per job.
local out = {}
local n = (#KEYS - 2) / 2
for i = 0, n - 1 do
  local jk, ik = KEYS[3 + 2*i], KEYS[4 + 2*i]
  local a = 4 + 5*i
  local st, w = unpack(redis.call('HMGET', jk, 'status', 'worker'))
  if st == 'running' and w == ARGV[3] then
    redis.call('HSET', jk, 'finished', ARGV[1])
    if ARGV[a + 2] ~= '' then redis.call('HSET', jk, 'result', ARGV[a + 2]) end
    if ARGV[a + 4] ~= '' then redis.call('HSET', jk, 'timings', ARGV[a + 4]) end
    -- Counts how often a result was written: the fault tests prove it stays 1.
    redis.call('HINCRBY', jk, 'stores', 1)
    finish(jk, ik, KEYS[2], KEYS[1], ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[2])
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
return out
