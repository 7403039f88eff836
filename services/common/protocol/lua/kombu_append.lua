#!lua flags=allow-oom
-- kombu's record of a delivered, not yet acked message (QoS.append), made allow-oom: the
-- message was already popped from its list, so a refused write here would lose it.
-- KEYS[1] = unacked index (zset), KEYS[2] = unacked hash, KEYS[3] (optional) = a set of
-- the tags this worker holds. ARGV[1] = delivery time (epoch s), ARGV[2] = delivery tag,
-- ARGV[3] = message json.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[2]) end
return 1
