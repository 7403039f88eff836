-- Every way a job ends passes through this function (prepended to the scripts that end
-- jobs): the terminal status, the error when there is one, the image bytes deleted, the
-- record kept for the result TTL, the job out of the index of jobs waiting for a claim,
-- and its id published so that waiting requests wake up.
-- The notice carries what a waiting request answers with (the fields of JobRecord, as a
-- JSON array after a newline), so it need not read the record back; a record too large to
-- send to every API process goes as its id alone, and the API reads it.
local function finish(jk, ik, queued, channel, id, status, err, ttl)
  redis.call('HSET', jk, 'status', status)
  if err ~= '' then redis.call('HSET', jk, 'error', err) end
  redis.call('DEL', ik)
  redis.call('EXPIRE', jk, ttl)
  redis.call('ZREM', queued, id)
  local fields = redis.call('HMGET', jk, 'model', 'status', 'filename', 'result', 'error',
                            'timings')
  local size = 0
  for _, v in ipairs(fields) do if v then size = size + #v end end
  if size <= 16384 then
    redis.call('PUBLISH', channel, id .. '\n' .. cjson.encode(fields))
  else
    redis.call('PUBLISH', channel, id)
  end
end
