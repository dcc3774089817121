-- The head of a stream, read atomically: its last generated ID, its first retained ID ('' when
-- it holds nothing) and how many entries were ever removed from it (entries-added - length).
-- Given an account's epoch key as well, also that epoch, created if missing.
--
-- KEYS[1] a stream   KEYS[2] (optional) account:{id}:epoch
local epoch = ''
if KEYS[2] then
  local now = redis.call('TIME')
  local fresh = now[1] .. string.format('%06d', tonumber(now[2]))
  epoch = redis.call('SET', KEYS[2], fresh, 'NX', 'GET') or fresh
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', '', 0, epoch}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local fields = {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
local first = ''
if fields['first-entry'] then first = fields['first-entry'][1] end
return {fields['last-generated-id'], first, fields['entries-added'] - fields['length'], epoch}
