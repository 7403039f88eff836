-- Hand a worker's held messages back. KEYS[1]=unacked, KEYS[2]=unacked index,
-- KEYS[3]=held set, KEYS[3+i]=queue of message i. ARGV: (tag, payload) pairs.
-- A message goes back only if it is still unacked, so it goes back once.

local n = 0
for i = 1, #KEYS - 3 do
  local tag = ARGV[2*i - 1]
  if redis.call('HDEL', KEYS[1], tag) == 1 then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('RPUSH', KEYS[3 + i], ARGV[2*i])
    n = n + 1
  end
  redis.call('SREM', KEYS[3], tag)
end
return n
