-- GCRA rate limit: the bucket (KEYS[1]) holds the "theoretical arrival time" (tat) of the
-- next request, in ms. A request is allowed while tat - now <= tolerance; each allowed one
-- moves tat on by interval. ARGV: interval_ms, tolerance_ms. Returns {allowed, wait_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return {0, math.ceil(wait)} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
