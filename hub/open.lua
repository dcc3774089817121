-- What a session needs to know of an account's stream before its WebSocket opens, read
-- atomically: the epoch (created if missing), the last generated ID, the first retained ID
-- ('' when empty) and how many entries were ever removed (entries-added - length).
--
-- KEYS[1] account:{id}:log   KEYS[2] account:{id}:epoch
local now = redis.call('TIME')
local fresh = now[1] .. string.format('%06d', tonumber(now[2]))
local epoch = redis.call('SET', KEYS[2], fresh, 'NX', 'GET')
if not epoch then epoch = fresh end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {epoch, '0-0', '', 0}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local fields = {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
local first = ''
if fields['first-entry'] then first = fields['first-entry'][1] end
return {epoch, fields['last-generated-id'], first, fields['entries-added'] - fields['length']}
