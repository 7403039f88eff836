-- Store the outcomes of a batch (succeeded or failed), one call for the whole batch.
-- KEYS: done channel, queued index, then (job record, image) pairs.
-- ARGV: now, result_ttl, then per job (id, status, result JSON, error JSON, timings JSON),
--       '' where there is none.
local n = (#KEYS - 2) / 2
for i = 0, n - 1 do
  local jk, ik = KEYS[3 + 2*i], KEYS[4 + 2*i]
  local a = 3 + 5*i
  redis.call('HSET', jk, 'finished', ARGV[1])
  if ARGV[a + 2] ~= '' then redis.call('HSET', jk, 'result', ARGV[a + 2]) end
  if ARGV[a + 4] ~= '' then redis.call('HSET', jk, 'timings', ARGV[a + 4]) end
  -- Counts how often a result was written: the fault tests prove it stays 1.
  redis.call('HINCRBY', jk, 'stores', 1)
  finish(jk, ik, KEYS[2], KEYS[1], ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[2])
end
return n
