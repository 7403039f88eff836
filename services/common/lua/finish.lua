#!lua flags=allow-oom
-- Store the end of several jobs, drop their images, wake waiters: one atomic call.
-- allow-oom: runs while Redis is full, because deleting each image frees far more than the
-- result adds; otherwise a full Redis could never drain.
-- KEYS[1] = done channel, then (job key, image key) per job.
-- ARGV[1] = result ttl (s), ARGV[2] = now (epoch s), then per job
--   (id, status, result json or '', error json or '', timings json or '').
local n = (#KEYS - 1) / 2
for i = 0, n - 1 do
  local jk, ik = KEYS[2 + 2*i], KEYS[3 + 2*i]
  local a = 3 + 5*i
  redis.call('HSET', jk, 'status', ARGV[a + 1], 'finished', ARGV[2])
  if ARGV[a + 2] ~= '' then redis.call('HSET', jk, 'result', ARGV[a + 2]) end
  if ARGV[a + 3] ~= '' then redis.call('HSET', jk, 'error', ARGV[a + 3]) end
  if ARGV[a + 4] ~= '' then redis.call('HSET', jk, 'timings', ARGV[a + 4]) end
  -- Counts how often a result was written: the fault tests prove it stays 1.
  redis.call('HINCRBY', jk, 'stores', 1)
  redis.call('EXPIRE', jk, ARGV[1])
  redis.call('DEL', ik)
  redis.call('PUBLISH', KEYS[1], ARGV[a])
end
return n
