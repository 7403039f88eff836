-- Cancel jobs that have not started.
-- KEYS: done channel, queued index, then (job record, image) pairs. ARGV: result_ttl, ids.
-- Per job returns 1 when cancelled now, 0 when it exists but started or ended, -1 when
-- unknown.
local out = {}
local n = (#KEYS - 2) / 2
for i = 0, n - 1 do
  local jk, ik = KEYS[3 + 2*i], KEYS[4 + 2*i]
  local st = redis.call('HGET', jk, 'status')
  if not st then
    out[i + 1] = -1
  elseif st ~= 'queued' then
    out[i + 1] = 0
  else
    finish(jk, ik, KEYS[2], KEYS[1], ARGV[2 + i], 'cancelled', '', ARGV[1])
    out[i + 1] = 1
  end
end
return out
