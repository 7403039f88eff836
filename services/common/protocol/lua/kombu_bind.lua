#!lua flags=allow-oom
-- kombu's queue binding (Channel._queue_bind), made allow-oom so that a worker can start
-- (declare its queues) and drain while Redis is full. Members are tiny and usually present.
-- KEYS[1] = binding table, KEYS[2] = permanent binding table. ARGV[1] = member.
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
