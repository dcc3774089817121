-- The heads of streams, each read atomically: its last generated ID, its first retained ID ('' when
-- it holds nothing) and how many entries were ever removed from it (entries-added - length).
-- One call serves many streams, so that concurrent socket opens cost Redis one command.
--
-- ARGV[1] = '1': every key is a stream.
-- ARGV[1] = '2': keys come in pairs (stream, account:{id}:epoch); each head also carries that
--                epoch, created if missing.
-- Replies one {last-generated-id, first-id, removed, epoch} per stream, in KEYS order.
local step = tonumber(ARGV[1])
local fresh = ''
if step == 2 then
  local now = redis.call('TIME')
  fresh = now[1] .. string.format('%06d', tonumber(now[2]))
end
local heads = {}
for i = 1, #KEYS, step do
  local epoch = ''
  if step == 2 then
    epoch = redis.call('SET', KEYS[i + 1], fresh, 'NX', 'GET') or fresh
  end
  local head = {'0-0', '', 0, epoch}
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    local first = ''
    if fields['first-entry'] then first = fields['first-entry'][1] end
    head = {fields['last-generated-id'], first, fields['entries-added'] - fields['length'], epoch}
  end
  heads[#heads + 1] = head
end
return heads
