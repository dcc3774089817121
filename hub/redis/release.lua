-- Release an email reservation, but only if it still holds the given account ID.
-- KEYS[1] email:{address}   ARGV[1] account ID
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
