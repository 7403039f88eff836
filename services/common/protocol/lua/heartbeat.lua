#!lua flags=allow-oom
-- A worker's heartbeat; allow-oom so that a worker draining a full Redis is not taken for
-- dead (a few hundred bytes, rewritten in place).
-- KEYS[1] = heartbeat key. ARGV[1] = info json, ARGV[2] = ttl (ms).
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
