redis.call('DEL', KEYS[1])
local generation = false
if redis.call('EXISTS', KEYS[2]) == 1 then
  generation = redis.pcall('INCR', KEYS[2])
end
if type(generation) ~= 'number' then
  redis.call('SET', KEYS[2], ARGV[4])
  generation = tonumber(ARGV[4])
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return generation
