-- Give back unacked messages that no registered worker holds (defence in depth: a record
-- whose holder's set was lost or never written would otherwise wait for the visibility
-- timeout). KEYS[1]=unacked, KEYS[2]=unacked index, KEYS[3..2+h]=the held sets of every
-- registered worker, then KEYS[3+h+i]=queue of message i. ARGV[1]=cutoff (epoch s: only
-- records fetched before it), ARGV[2]=h, then (tag, payload) pairs.
-- Checked again here, atomically: a message re-fetched meanwhile has a newer index score
-- and a holder, and one acked or handed back meanwhile is gone, so each goes back once.
-- Returns the tags that went back.

local cutoff, h = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved = {}
for i = 1, (#ARGV - 2) / 2 do
  local tag = ARGV[1 + 2*i]
  local score = tonumber(redis.call('ZSCORE', KEYS[2], tag) or '0')
  local held = false
  for j = 3, 2 + h do
    if redis.call('SISMEMBER', KEYS[j], tag) == 1 then held = true break end
  end
  if not held and score <= cutoff and redis.call('HDEL', KEYS[1], tag) == 1 then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('RPUSH', KEYS[2 + h + i], ARGV[2 + 2*i])
    moved[#moved + 1] = tag
  end
end
return moved
