local fence = redis.call('GET', KEYS[2])
local stored = 0
if (fence or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
if redis.call('DEL', KEYS[4]) == 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return stored
