-- Unclaim jobs a worker claimed but never ran. KEYS[1]=queued index, then job keys.
-- ARGV[1]=worker, ARGV[2]=now, then job ids. The delivery is not counted.

local n = 0
for i = 2, #KEYS do
  local st, w = unpack(redis.call('HMGET', KEYS[i], 'status', 'worker'))
  if st == 'running' and w == ARGV[1] then
    redis.call('HSET', KEYS[i], 'status', 'queued')
    redis.call('HDEL', KEYS[i], 'worker', 'started')
    redis.call('HINCRBY', KEYS[i], 'deliveries', -1)
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
