"""The age of the oldest waiting message, which the queue itself does not know.

Messages on the list are raw bytes without timestamps. Each observation (an exporter scrape, `stemworker
stats`) records, in the sorted set `<queue>:seen`, the Redis time at which it first saw each of the newest
WINDOW messages at the push end, keyed by the SHA-1 of the message; the age of the oldest waiting message is
then Redis time now minus that record for the message at the claim end. So it means: seconds since a stemworker
observer first saw that message waiting (for a message put back by a requeue, since it was put back). It is
exact to one observation interval (the exporter's scrape interval) as long as fewer than WINDOW messages
arrive between two observations, and None when the claim end holds a message no observer saw arrive (say, a
message that was already queued deep behind a longer backlog when observing started: it is recorded once it
comes within WINDOW of the push end, or its age is None).

Bounded: entries older than MAX_AGE_S go, at most MAX_MEMBERS are kept, and whenever the whole queue fits in
the window every entry for a message no longer queued is dropped. One Lua script does it all atomically, so
concurrent observers never undo each other's records.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import redis

from function import keys
from function.config import Settings
from function.errors import InvalidJob
from function.messages import event_from_message, job_id_or_none

WINDOW = 1000
MAX_AGE_S = keys.STATUS_TTL_S
MAX_MEMBERS = 100_000

OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = redis.call('LLEN', KEYS[1])
local w = tonumber(ARGV[2])
local window, head
if ARGV[1] == 'left' then
  window = redis.call('LRANGE', KEYS[1], -w, -1)
  head = redis.call('LINDEX', KEYS[1], 0)
else
  window = redis.call('LRANGE', KEYS[1], 0, w - 1)
  head = redis.call('LINDEX', KEYS[1], -1)
end
local queued = {}
for _, message in ipairs(window) do
  local digest = redis.sha1hex(message)
  queued[digest] = true
  redis.call('ZADD', KEYS[2], 'NX', now, digest)
end
if n <= w then
  for _, digest in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if not queued[digest] then redis.call('ZREM', KEYS[2], digest) end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]) - 1)
local first = false
if head then first = redis.call('ZSCORE', KEYS[2], redis.sha1hex(head)) end
return {tostring(now), first or ''}
"""


def oldest_waiting_age_s(client: redis.Redis, settings: Settings) -> float | None:
    """Record what is newly waiting and return the age in seconds of the message at the claim end (None when
    the queue is empty or no observer saw that message arrive)."""
    script = client.register_script(OBSERVE)
    now, first = script(
        keys=[settings.queue_key, keys.seen_key(settings.queue_key)],
        args=[settings.queue_pop, WINDOW, MAX_AGE_S, MAX_MEMBERS],
    )
    if not first:
        return None
    return max(0.0, float(now) - float(first))


@dataclass(frozen=True)
class WaitingMessage:
    """A message in the queue that no runner has claimed: its place in line (0 is claimed next), its job id (None
    when the message names no valid one) and how long an observer has seen it waiting (None when never seen)."""

    position: int
    job_id: str | None
    waiting_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def waiting_messages(client: redis.Redis, settings: Settings, limit: int) -> list[WaitingMessage]:
    """The next `limit` messages to be claimed, in claim order (QUEUE_POP's end first)."""
    if settings.queue_pop == "left":
        raw = client.lrange(settings.queue_key, 0, limit - 1)
    else:
        raw = list(reversed(client.lrange(settings.queue_key, -limit, -1)))
    if not raw:
        return []
    now_s, micros = client.time()
    now = now_s + micros / 1e6
    digests = [hashlib.sha1(m if isinstance(m, bytes) else m.encode()).hexdigest() for m in raw]
    seen = client.zmscore(keys.seen_key(settings.queue_key), digests)
    found = []
    for position, (message, first) in enumerate(zip(raw, seen, strict=True)):
        try:
            job_id = job_id_or_none(event_from_message(message, settings.max_message_bytes))
        except InvalidJob:
            job_id = None
        found.append(WaitingMessage(position, job_id, None if first is None else round(max(0.0, now - first), 3)))
    return found
