-- The lost-message sweeper's lock. KEYS[1]=lock. ARGV: owner, ttl ms.
-- The holder renews its own lock, so it never finds its own previous lock and skips a run.

local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
