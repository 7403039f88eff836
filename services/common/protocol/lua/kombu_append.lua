#!lua flags=allow-oom
-- kombu's record of a delivered, not yet acked message (QoS.append), made allow-oom: the
-- message was already popped from its list, so a refused write here would lose it.
-- KEYS[1] = unacked index (zset), KEYS[2] = unacked hash, KEYS[3] (optional) = a set of
-- the tags this worker holds, KEYS[4] (optional) = this worker's fence key, KEYS[5] (with
-- KEYS[4]) = the queue the message came from. ARGV[1] = delivery time (epoch s),
-- ARGV[2] = delivery tag, ARGV[3] = unacked record json, ARGV[4] (with KEYS[4]) = the
-- message as it sat in its queue.
-- A worker declared dead (fenced) may still pop a message: it was paused in BRPOP, or it
-- fetched between the reaper's look at its held set and the deletion of that set. Its
-- record would sit in unacked with no live holder until the visibility timeout, so the
-- message goes back to the head of its queue instead. Returns 1 (recorded) or 0 (fenced).
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RPUSH', KEYS[5], ARGV[4])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[2]) end
return 1
