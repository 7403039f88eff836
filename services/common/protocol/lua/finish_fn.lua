-- Every way a job ends passes through this function (prepended to the scripts that end
-- jobs): the terminal status, the error when there is one, the image bytes deleted, the
-- record kept for the result TTL, the job out of the index of jobs waiting for a claim,
-- and its id published so that waiting requests wake up.
local function finish(jk, ik, queued, channel, id, status, err, ttl)
  redis.call('HSET', jk, 'status', status)
  if err ~= '' then redis.call('HSET', jk, 'error', err) end
  redis.call('DEL', ik)
  redis.call('EXPIRE', jk, ttl)
  redis.call('ZREM', queued, id)
  redis.call('PUBLISH', channel, id)
end
