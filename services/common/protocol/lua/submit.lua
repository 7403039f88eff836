-- Store and enqueue a request's jobs atomically, refusing when the model's queue is too
-- deep or Redis too full, and answering a repeated Idempotency-Key with the first
-- request's record. Each job's Celery message (services/api/messages.py) is pushed onto
-- the queue list here, as kombu's publish would: a job is never stored without its message.
-- The images were SET just before, in the same pipeline (a 37 KB string through Lua costs
-- Redis ~20x what a plain SET does): every answer that accepts nothing deletes them.
-- KEYS: queue list, queued index, then (job record, image) pairs, then the idempotency key
--       when ARGV[8] is not ''.
-- ARGV: max_depth, job_ttl, model, created, params (JSON), deadline ('' for none), lane,
--       idempotency record ('' for none), max_bytes (0 for no byte budget),
--       trace carrier (a JSON object of record fields, '' for none),
--       then (id, filename, Celery message) triples.
-- Returns -1 when the queue is too deep, -2 when Redis's used memory (the images
-- included) passes max_bytes, the stored record (a string) when the idempotency key was
-- used before (no job written in these three cases), else the depth seen.
local idem = ARGV[8] ~= ''
local n = (#KEYS - 2 - (idem and 1 or 0)) / 2
local function drop_images()
  for i = 0, n - 1 do redis.call('DEL', KEYS[4 + 2*i]) end
end
-- idempotency: a key seen before answers with its record and writes nothing
if idem then
  local seen = redis.call('GET', KEYS[#KEYS])
  if seen then drop_images() return seen end
end
local depth = redis.call('LLEN', KEYS[1])
if depth + n > tonumber(ARGV[1]) then drop_images() return -1 end
-- memory budget: refuse by bytes before Redis itself refuses writes (maxmemory)
if tonumber(ARGV[9]) > 0 then
  local bytes = tonumber(string.match(redis.call('INFO', 'memory'), 'used_memory:(%d+)'))
  if bytes > tonumber(ARGV[9]) then drop_images() return -2 end
end
local carrier = {}
if ARGV[10] ~= '' then
  for field, value in pairs(cjson.decode(ARGV[10])) do
    carrier[#carrier + 1] = field
    carrier[#carrier + 1] = value
  end
end
for i = 0, n - 1 do
  local jk = KEYS[3 + 2*i]
  local a = 11 + 3*i
  redis.call('HSET', jk, 'status', 'queued', 'model', ARGV[3], 'created', ARGV[4],
             'params', ARGV[5], 'deadline', ARGV[6], 'lane', ARGV[7],
             'filename', ARGV[a + 1], 'deliveries', 0, unpack(carrier))
  redis.call('EXPIRE', jk, ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[a])
  if ARGV[a + 2] ~= '' then redis.call('LPUSH', KEYS[1], ARGV[a + 2]) end
end
if idem then redis.call('SET', KEYS[#KEYS], ARGV[8], 'EX', ARGV[2]) end
return depth
