#!lua flags=allow-oom
-- SADD that works while Redis is full: a worker registering itself at start-up (a few
-- bytes) must not fail there, or a full Redis could never be drained.
-- KEYS[1] = the set. ARGV[1] = the member.
return redis.call('SADD', KEYS[1], ARGV[1])
