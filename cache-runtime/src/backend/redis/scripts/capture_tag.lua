local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' and #current <= 19 and string.match(current, '^[0-9]+$') then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
