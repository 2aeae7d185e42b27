-- A refresh-ahead (ARGV[7]: its interval, in ms) never waits: it loads only while no load holds
-- the lock and none started within the interval, so that a hot key is refreshed once per
-- interval across processes. The marker (KEYS[5]) holds when the interval ends on the
-- backend's clock (ARGV[8] is now, ARGV[9] that end), which a test clock may move; its own
-- expiry only clears it away.
if ARGV[7] then
  local ends = tonumber(redis.call('GET', KEYS[5]) or '')
  if redis.call('EXISTS', KEYS[3]) == 1 or (ends and ends > tonumber(ARGV[8])) then
    return {false, false, 0, false}
  end
end
if ARGV[6] ~= '1' then
  local value = redis.call('GET', KEYS[1])
  if value then
    return {value}
  end
end
local fence = redis.call('GET', KEYS[2])
if not fence then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  fence = ARGV[3]
end
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'none' then
  local pttl = redis.call('PTTL', KEYS[3])
  if kind ~= 'string' or pttl < 0 or pttl > tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[3])
  end
end
local taken = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
if ARGV[7] then
  redis.call('SET', KEYS[5], ARGV[9], 'PX', ARGV[7])
elseif not taken then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
end
-- Over an entry (ARGV[6]): what it holds now, read with the fence in this one step, so that a
-- value kept for fail-safe is one no invalidation removed before the fence was read.
local current = false
if ARGV[6] == '1' then
  current = redis.call('GET', KEYS[1])
end
return {false, fence, taken and 1 or 0, current}
