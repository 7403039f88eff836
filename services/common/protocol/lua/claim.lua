-- Claim a batch: count the delivery, mark running; or end the job.
-- KEYS: done channel, queued index, then (job record, image) pairs.
-- ARGV: now, max_deliveries, result_ttl, worker, mode ('batch' or 'solo'), then job ids.
-- Per job returns {verdict, deliveries, created, params}; verdict is
--   run | skip (already ended or unknown) | expired | worker_lost | suspect.
-- The images are not returned here: the caller reads them with MGET right after, in the
-- same pipeline (a 37 KB string through Lua costs Redis ~10x what a plain GET does).
-- In mode 'batch' a job already marked running (a redelivery: its last worker died) is
-- only reported as suspect, not counted: the worker claims it again alone (mode 'solo')
-- when it is ready to run it by itself.
local out = {}
local n = (#KEYS - 2) / 2
for i = 0, n - 1 do
  local jk, ik, id = KEYS[3 + 2*i], KEYS[4 + 2*i], ARGV[6 + i]
  local st, dl, created, params, seen = unpack(redis.call('HMGET', jk, 'status', 'deadline',
                                                          'created', 'params', 'deliveries'))
  if st ~= 'queued' and st ~= 'running' then
    out[i + 1] = {'skip', 0, '', ''}
  elseif st == 'running' and ARGV[5] == 'batch' then
    out[i + 1] = {'suspect', seen or 0, '', ''}
  else
    local d = redis.call('HINCRBY', jk, 'deliveries', 1)
    dl = tonumber(dl or '')
    created = created or ''
    if dl and tonumber(ARGV[1]) > dl then
      finish(jk, ik, KEYS[2], KEYS[1], id, 'expired', cjson.encode({code='expired',
             message='the job deadline passed before a worker reached it'}), ARGV[3])
      out[i + 1] = {'expired', d, created, ''}
    elseif d > tonumber(ARGV[2]) then
      finish(jk, ik, KEYS[2], KEYS[1], id, 'failed', cjson.encode({code='worker_lost',
             message='a worker died while running this job ' .. (d - 1) .. ' times'}),
             ARGV[3])
      out[i + 1] = {'worker_lost', d, created, ''}
    else
      redis.call('HSET', jk, 'status', 'running', 'worker', ARGV[4], 'started', ARGV[1])
      redis.call('ZREM', KEYS[2], id)
      if redis.call('EXISTS', ik) == 0 then
        finish(jk, ik, KEYS[2], KEYS[1], id, 'failed', cjson.encode({code='image_missing',
               message='the image bytes expired before a worker reached the job'}), ARGV[3])
        out[i + 1] = {'skip', d, created, ''}
      else
        out[i + 1] = {'run', d, created, params or ''}
      end
    end
  end
end
return out
