local generation = false
if redis.call('EXISTS', KEYS[2]) == 1 then
  generation = redis.pcall('INCR', KEYS[2])
end
if type(generation) ~= 'number' then
  redis.call('SET', KEYS[2], ARGV[6])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
