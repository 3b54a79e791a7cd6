"""The Lua scripts behind `function.queue`: each is one atomic step on the queue's keys.

Every key a script touches is passed in KEYS[] (none is built or looked up inside a script), so the scripts are
valid under Redis Cluster and function flags when all of a queue's keys share a hash slot (see
docs/reliability.md: give QUEUE_KEY a hash tag, e.g. `{toWorker}`). None of them uses KEYS or SCAN: their cost
grows with the leases and the processing list, never with the rest of the keyspace.

Lease bookkeeping (python-rq's StartedJobRegistry shape):
- `<queue>:leases`  sorted set, runner token -> lease deadline (Redis TIME, unix seconds);
- `<queue>:leased`  hash, runner token -> the message that token's claim holds;
- `<queue>:orphans` hash, sha1 of a message -> Redis time a reaper first saw more copies of it in the processing
  list than leases on it (a runner between its BLMOVE and its lease write, or one that died there).
A lease is held while its token is in `<queue>:leases`. Only a reaper removes a token whose deadline passed, and
every write a runner makes for its claim (renew, ack, status) first checks its token is still there: a runner
whose lease was reaped (a zombie back from a partition or a long pause) is fenced off.
"""

from __future__ import annotations

from function.status import write_status_lua

# Redis time as unix seconds with microseconds (the same clock for every pod: no skew between runners).
_NOW = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: processing, leases, leased, attempts, dead, dataset.
# ARGV: token, message, attempts field, lease seconds, now (ISO), max attempts, a new dataset marker,
#       the dead-letter entry's bounded message preview (JSON string fields, see queue.dead_letter_fields).
# Returns {attempts, first_seen, dataset marker, exhausted[, the dead-letter entry written]}, or nil when this
# claim's copy of the message is no longer in the processing list (a reaper requeued it because the lease write came
# later than ORPHAN_GRACE_S after the claim). `exhausted` is 1 when the message had already been claimed
# MAX_ATTEMPTS times and every runner died with it: it is dead-lettered here, before any code parses it, and no lease
# is taken.
CLAIM = (
    _NOW
    + """
redis.call('SET', KEYS[6], ARGV[7], 'NX')
local dataset = redis.call('GET', KEYS[6])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  -- A retried call whose first run went through (the reply was lost): the lease is written, count nothing twice.
  return {tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '1'), redis.call('HGET', KEYS[4], ARGV[3] .. ':first_seen'),
          dataset, 0}
end
local copies = #redis.call('LPOS', KEYS[1], ARGV[2], 'COUNT', 0)
local held = 0
for _, message in ipairs(redis.call('HVALS', KEYS[3])) do
  if message == ARGV[2] then held = held + 1 end
end
if copies <= held then return false end
local attempts = redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
redis.call('HSETNX', KEYS[4], ARGV[3] .. ':first_seen', ARGV[5])
local first_seen = redis.call('HGET', KEYS[4], ARGV[3] .. ':first_seen')
if attempts > tonumber(ARGV[6]) then
  local ran = attempts - 1
  local entry = cjson.decode(ARGV[8])
  entry['error'] = 'crashed the runner ' .. ran .. ' times: every runner that claimed this message died or was ' ..
                   'killed before it could finish or give it back (MAX_ATTEMPTS=' .. ARGV[6] .. ')'
  entry['error_type'] = 'Exhausted'
  entry['permanent'] = false
  entry['attempts'] = ran
  entry['first_seen_at'] = first_seen
  entry['failed_at'] = ARGV[5]
  redis.call('LREM', KEYS[1], -1, ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[3], ARGV[3] .. ':first_seen')
  local encoded = cjson.encode(entry)
  redis.call('RPUSH', KEYS[5], encoded)
  return {ran, first_seen, dataset, 1, encoded}
end
redis.call('ZADD', KEYS[2], now_s() + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return {attempts, first_seen, dataset, 0}
"""
)

# KEYS: dead. ARGV: an entry as written, the same entry completed (its job id, read once the message was safely
# dead-lettered). Returns 1 when the entry was found and replaced.
COMPLETE_DEAD_LETTER = """
local index = redis.call('LPOS', KEYS[1], ARGV[1])
if not index then return 0 end
redis.call('LSET', KEYS[1], index, ARGV[2])
return 1
"""

# KEYS: leases. ARGV: token, lease seconds. Returns 1 when renewed, 0 when the lease is gone (reaped).
RENEW = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_s() + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: processing, leases, leased, attempts, queue, dead.
# ARGV: token, message, attempts field, outcome (done | requeue | dead), head side (left | right),
#       give the attempt back (1 | 0), dead-letter entry.
# Returns 1, or 0 when the lease is gone: then nothing is written (the message belongs to another runner now).
FINISH = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('LREM', KEYS[1], -1, ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[4] == 'requeue' then
  if ARGV[5] == 'left' then redis.call('LPUSH', KEYS[5], ARGV[2]) else redis.call('RPUSH', KEYS[5], ARGV[2]) end
  if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[4], ARGV[3], -1) end
else
  redis.call('HDEL', KEYS[4], ARGV[3], ARGV[3] .. ':first_seen')
  if ARGV[4] == 'dead' then redis.call('RPUSH', KEYS[6], ARGV[7]) end
end
return 1
"""

# KEYS: a job's status hash, leases. ARGV: token, then what status.write_status_lua takes (TTL, fields to clear,
# field/value pairs).
# Returns 1, or 0 when the lease is gone: a fenced runner cannot move a status another runner now owns.
WRITE_HASH_IF_LEASED = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
""" + write_status_lua(skip=1)

# KEYS: processing, queue, leases, leased, orphans. ARGV: orphan grace seconds, head side (left | right).
# Returns how many messages went back to the head of the queue.
REAP = (
    _NOW
    + """
local function push(message)
  if ARGV[2] == 'left' then redis.call('LPUSH', KEYS[2], message) else redis.call('RPUSH', KEYS[2], message) end
end
local now = now_s()
local moved = 0
-- 1. Leases past their deadline: the runner stopped renewing (it died, hangs, or is cut off). The lease goes and
--    one copy of its message goes back at once: the lease's own expiry was the wait.
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local message = redis.call('HGET', KEYS[4], token)
  redis.call('ZREM', KEYS[3], token)
  redis.call('HDEL', KEYS[4], token)
  if message and redis.call('LREM', KEYS[1], -1, message) == 1 then
    push(message)
    moved = moved + 1
  end
end
-- 2. Copies without any lease. Every claim adds one copy and writes one lease, every ack removes both, so as
--    many copies as leases means there is none (the common case, answered in O(1)).
if redis.call('LLEN', KEYS[1]) <= redis.call('ZCARD', KEYS[3]) then
  redis.call('DEL', KEYS[5])
  return moved
end
local held = {}
for _, message in ipairs(redis.call('HVALS', KEYS[4])) do held[message] = (held[message] or 0) + 1 end
local copies = {}
for _, message in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do copies[message] = (copies[message] or 0) + 1 end
local waiting = {}
for message, count in pairs(copies) do
  local missing = count - (held[message] or 0)
  if missing > 0 then
    local digest = redis.sha1hex(message)
    local first = redis.call('HGET', KEYS[5], digest)
    if not first then
      redis.call('HSET', KEYS[5], digest, now)
      waiting[digest] = true
    elseif now - tonumber(first) >= tonumber(ARGV[1]) then
      -- The deficit outlived the grace: those copies' runners died before writing a lease.
      for _ = 1, missing do
        redis.call('LREM', KEYS[1], -1, message)
        push(message)
        moved = moved + 1
      end
      redis.call('HDEL', KEYS[5], digest)
    else
      waiting[digest] = true
    end
  end
end
for _, digest in ipairs(redis.call('HKEYS', KEYS[5])) do
  if not waiting[digest] then redis.call('HDEL', KEYS[5], digest) end
end
return moved
"""
)
