#!lua flags=allow-oom
-- allow-oom: a worker draining a full Redis must not be taken for dead (a few hundred bytes).
-- A worker's heartbeat. KEYS[1]=heartbeat key, KEYS[2]=fence key. ARGV: value, ttl ms.
-- Returns 0 when the worker was fenced (declared dead): it may not beat again.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
