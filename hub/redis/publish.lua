-- hub's publish script: the one way events enter the hub.
-- Appends the event to the account's stream and a pointer to it to the index, trims both,
-- makes sure the account has an epoch, and returns the event's stream ID. Being one script,
-- every notification points at a stored event and every stored event is notified.
--
-- With an idempotency key (KEYS[4]), a repeat within the window stores nothing: the script
-- returns {first event's ID, 1}, or {first event's ID, 2} when the repeat's digest (ARGV[7], of
-- its type and payload) differs, and {new ID, 0} the first time. Without a key it returns the ID.
--
-- KEYS[1] account:{id}:log   KEYS[2] hub:index   KEYS[3] account:{id}:epoch
-- KEYS[4] (optional) account:{id}:idempotency:{digest of the key}
-- ARGV[1] account ID   ARGV[2] type   ARGV[3] payload (JSON text)
-- ARGV[4] retention of the account stream (0 = unlimited)   ARGV[5] retention of the index
-- ARGV[6], ARGV[7] (with KEYS[4]) seconds a key is remembered, digest of type and payload
if KEYS[4] then
  local first = redis.call('GET', KEYS[4])
  if first then
    local space = string.find(first, ' ', 1, true)
    if string.sub(first, space + 1) ~= ARGV[7] then
      return {string.sub(first, 1, space - 1), 2}
    end
    -- A write that changes nothing, so that a WAIT after this replay also covers the first
    -- event's replication (Redis moves a client's WAIT offset only when it writes).
    redis.call('SET', KEYS[4], first, 'KEEPTTL')
    return {string.sub(first, 1, space - 1), 1}
  end
end
local id
local retention = tonumber(ARGV[4])
if retention > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', retention, '*',
                  'type', ARGV[2], 'payload', ARGV[3])
else
  id = redis.call('XADD', KEYS[1], '*', 'type', ARGV[2], 'payload', ARGV[3])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'account', ARGV[1], 'id', id)
if redis.call('EXISTS', KEYS[3]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
end
if KEYS[4] then
  redis.call('SET', KEYS[4], id .. ' ' .. ARGV[7], 'EX', ARGV[6])
  return {id, 0}
end
return id
