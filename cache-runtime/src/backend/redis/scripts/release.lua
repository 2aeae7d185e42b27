if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('DEL', KEYS[2]) == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
  end
  return 1
end
return 0
