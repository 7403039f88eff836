#!lua flags=allow-oom
-- Several waiting messages taken and recorded in one call: what kombu does one message at
-- a time (BRPOP, then QoS.append's record), for the messages already waiting once a BRPOP
-- has returned. Each message leaves its list and enters kombu's unacked record (and this
-- worker's held set) in the same atomic step, so none is ever out of both.
-- KEYS[1] = unacked index (zset), KEYS[2] = unacked hash, KEYS[3] = this worker's held set,
-- KEYS[4] = this worker's fence key, KEYS[5..] = the queues' lists, grouped by queue in
-- kombu's queue-cycle order, each group in priority order (kombu's _q_for_pri steps).
-- ARGV[1] = delivery time (epoch s), ARGV[2] = most messages to take, ARGV[3] = lists per
-- queue (priority steps).
-- Order: as repeated BRPOPs with kombu's round-robin rotation would take them: the
-- highest priority first, across queues, and the queue just served goes last.
-- A fenced worker (declared dead) takes nothing. Returns {list, message, list, message...}.
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local now, want, per = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local order = {}
for q = 1, (#KEYS - 4) / per do order[q] = q end
local out = {}
while #out < 2 * want do
  local taken = false
  for p = 1, per do
    for i, q in ipairs(order) do
      local list = KEYS[4 + (q - 1) * per + p]
      local message = redis.call('RPOP', list)
      if message then
        -- Redis does not roll a failed script back: a message this script cannot read
        -- goes back where it was, for the next BRPOP (broker.py drops what is not JSON,
        -- with an error log; kombu and Celery judge the rest).
        local ok, decoded = pcall(cjson.decode, message)
        local props = ok and type(decoded) == 'table' and decoded['properties']
        local tag = type(props) == 'table' and props['delivery_tag']
        if type(tag) ~= 'string' then
          redis.call('RPUSH', list, message)
          return out
        end
        local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
        -- kombu's record: the JSON list [message, exchange, routing key].
        local ends = cjson.encode({info['exchange'] or '', info['routing_key'] or ''})
        redis.call('ZADD', KEYS[1], now, tag)
        redis.call('HSET', KEYS[2], tag, '[' .. message .. ', ' .. string.sub(ends, 2))
        redis.call('SADD', KEYS[3], tag)
        out[#out + 1] = list
        out[#out + 1] = message
        table.remove(order, i)
        order[#order + 1] = q
        taken = true
        break
      end
    end
    if taken then break end
  end
  if not taken then break end
end
return out
