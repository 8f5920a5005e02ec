-- KEYS[1]: the bucket hash. ARGV: op (take|throttle|peek), max_rate, burst, min_rate, decrease_factor,
-- recovery_period_s, recovery_step, ttl_ms, then take: n | throttle: pause, sent_at ('' = always cut).
-- Returns {granted, wait, now, rate, blocked_until, last_cut}, floats as strings.
if redis.replicate_commands then redis.replicate_commands() end -- servers before 5.0: TIME before writes
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f(x) return string.format('%.17g', x) end -- full precision: Redis would truncate a Lua number
local op, max_rate, cap, min_rate = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local factor, period, step = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated', 'rate', 'blocked_until', 'last_cut', 'calm_since')
local tokens, updated = math.min(tonumber(s[1]) or cap, cap), tonumber(s[2]) or now
local rate = math.min(tonumber(s[3]) or max_rate, max_rate) -- a worker configured lower is obeyed
local blocked, last_cut, calm = tonumber(s[4]) or 0, tonumber(s[5]) or 0, tonumber(s[6]) or now
local function refill() -- a clock that steps back (failover) must not remove tokens
  if now > updated then tokens = math.min(cap, tokens + (now - updated) * rate); updated = now end
end
if rate < max_rate and now >= calm + period then -- additive increase: one step per whole calm period
  local steps = math.floor((now - calm) / period)
  calm = calm + steps * period
  refill()
  rate = math.min(max_rate, rate + steps * step)
end
refill()
local granted, wait = 0, 0
if op == 'take' then
  if now >= blocked then
    granted = math.min(tonumber(ARGV[9]), math.floor(tokens + 1e-9)) -- 1e-9: float drift, as in bucket.py
    tokens = math.max(tokens - granted, 0)
  end
  if tokens < 1 - 1e-9 then wait = (1 - tokens) / rate end
  wait = math.max(wait, blocked - now, 0)
  -- a long wait at a cut rate must not outlive the next recovery step, which shortens it
  if rate < max_rate then wait = math.min(wait, math.max(calm + period - now, 0)) end
elseif op == 'throttle' then
  local pause, sent_at = tonumber(ARGV[9]), tonumber(ARGV[10])
  if sent_at == nil or sent_at > last_cut then rate = math.max(min_rate, rate * factor); last_cut = now end
  blocked = math.max(blocked, now + pause)
  -- one token when the pause ends, none saved up meanwhile: a burst then would overload the gateway again at once
  tokens = math.min(1, cap); updated = math.max(updated, blocked)
  calm = math.max(calm, now + pause)
end
if op ~= 'peek' then
  redis.call('HSET', KEYS[1], 'tokens', f(tokens), 'updated', f(updated), 'rate', f(rate), 'blocked_until',
    f(blocked), 'last_cut', f(last_cut), 'calm_since', f(calm))
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
end
return {granted, f(wait), f(now), f(rate), f(blocked), f(last_cut)}
