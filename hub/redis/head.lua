-- The heads of streams, each read atomically: its last generated ID, its first retained ID ('' when
-- it holds nothing), how many entries were ever removed from it (entries-added - length),
-- whether it holds an entry at a given position, and the newest ID removed by XDEL. One call serves many streams, so that
-- concurrent socket opens cost Redis one command.
--
-- ARGV[1] = '1': every key is a stream.
-- ARGV[1] = '2': keys come in pairs (stream, account:{id}:epoch); each head also carries that
--                epoch, created if missing.
-- ARGV[1 + n]: a position to look up in the n-th stream ('' or absent: none).
-- Replies one {last-generated-id, first-id, removed, epoch, holds-position, max-deleted-id} per
-- stream, in KEYS order.
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
  local head = {'0-0', '', 0, epoch, 0, '0-0'}
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    local first = ''
    if fields['first-entry'] then first = fields['first-entry'][1] end
    local holds = 0
    local position = ARGV[1 + #heads + 1]
    if position and position ~= '' and #redis.call('XRANGE', KEYS[i], position, position) > 0 then
      holds = 1
    end
    head = {fields['last-generated-id'], first, fields['entries-added'] - fields['length'], epoch,
            holds, fields['max-deleted-entry-id']}
  end
  heads[#heads + 1] = head
end
return heads
