local fence = redis.call('GET', KEYS[2])
local stored = 0
-- ARGV[7], unless empty: the bytes the entry must still hold (a fail-safe write-back replaces
-- only the stale value its claim read, never a newer fill made under the same fence).
if (fence or '') == ARGV[1] and (ARGV[7] == '' or redis.call('GET', KEYS[1]) == ARGV[7]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  stored = 1
  -- ARGV[8], unless empty: the tiered bus, told that the entry was replaced (a refresh-ahead's
  -- fill, over an entry whose copies other processes hold in L1), ARGV[9] the message.
  if ARGV[8] ~= '' then
    redis.call('PUBLISH', ARGV[8], ARGV[9])
  end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
if redis.call('DEL', KEYS[4]) == 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return stored
