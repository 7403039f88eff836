#!lua flags=allow-oom
-- HSET of one small field that works while Redis is full: cancelling a batch sets its
-- `cancelled` flag (a few bytes) so that the cancel, which frees queued images, can run.
-- KEYS[1] = the hash. ARGV[1] = the field. ARGV[2] = the value.
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
