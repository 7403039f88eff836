-- Store a request's jobs atomically, refusing when the model's queue is too deep.
-- KEYS: queue list, queued index, then (job record, image) pairs.
-- ARGV: max_depth, job_ttl, model, created, params (JSON), deadline ('' for none), lane,
--       then (id, filename, image bytes) triples.
-- Returns -1 when the queue is too deep (nothing written), else the depth seen.
local depth = redis.call('LLEN', KEYS[1])
local n = (#KEYS - 2) / 2
if depth + n > tonumber(ARGV[1]) then return -1 end
for i = 0, n - 1 do
  local jk, ik = KEYS[3 + 2*i], KEYS[4 + 2*i]
  local a = 8 + 3*i
  redis.call('HSET', jk, 'status', 'queued', 'model', ARGV[3], 'created', ARGV[4],
             'params', ARGV[5], 'deadline', ARGV[6], 'lane', ARGV[7],
             'filename', ARGV[a + 1], 'deliveries', 0)
  redis.call('EXPIRE', jk, ARGV[2])
  redis.call('SET', ik, ARGV[a + 2], 'EX', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[a])
end
return depth
