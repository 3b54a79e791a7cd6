"""The Redis work queue: claim into a processing list, lease, complete, requeue, dead-letter and reap.

A claimed message is never held only in memory: BLMOVE puts it in `<queue>:processing` atomically.
Each claim holds a lease key `<queue>:lease:<digest>:<token>` with a TTL that the runner renews.
A reaper puts a processing entry back at the head of the queue only when the message has fewer leases
than copies in the processing list, and that deficit has lasted `orphan_grace_seconds` (so a runner
between its claim and its first lease write is never robbed); the check and the move are one Lua script,
so reapers running at once never requeue a message twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from function import keys
from function.clock import now_iso
from function.errors import RedisUnavailable

REAP_ONE = """
local n = 0
for _, value in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if value == ARGV[1] then n = n + 1 end
end
local leases = #redis.call('KEYS', ARGV[3])
if n <= leases then
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 0
end
local now = tonumber(redis.call('TIME')[1])
local first = redis.call('HGET', KEYS[3], ARGV[2])
if not first then
  redis.call('HSET', KEYS[3], ARGV[2], now)
  return 0
end
if now - tonumber(first) < tonumber(ARGV[4]) then return 0 end
redis.call('LREM', KEYS[1], -1, ARGV[1])
if ARGV[5] == 'left' then redis.call('LPUSH', KEYS[2], ARGV[1]) else redis.call('RPUSH', KEYS[2], ARGV[1]) end
if n - 1 <= leases then redis.call('HDEL', KEYS[3], ARGV[2]) end
return 1
"""


def digest(message: bytes) -> str:
    return hashlib.sha256(message).hexdigest()[:32]


@dataclass
class Claim:
    """One message taken from the queue by this runner."""

    message: bytes
    attempts: int
    first_seen_at: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def digest(self) -> str:
        return digest(self.message)


class WorkQueue:
    """Queue operations for one queue key. Every method raises Transient when Redis fails."""

    def __init__(self, client: redis.Redis, queue_key: str, pop: Literal["left", "right"] = "left",
                 lease_s: int = 120, orphan_grace_s: float = 10.0) -> None:
        self.client = client
        self.queue_key = queue_key
        self.processing_key = keys.processing_key(queue_key)
        self.dead_key = keys.dead_key(queue_key)
        self.attempts_key = keys.attempts_key(queue_key)
        self.orphans_key = keys.orphans_key(queue_key)
        self.pop = pop
        self.lease_s = lease_s
        self.orphan_grace_s = orphan_grace_s
        self._reap_one = client.register_script(REAP_ONE)

    def _head_push(self, pipe: Any, message: bytes) -> None:
        """Put `message` where the next claim takes it from (the head of the queue)."""
        (pipe.lpush if self.pop == "left" else pipe.rpush)(self.queue_key, message)

    def claim(self, wait_s: float) -> Claim | None:
        """Move the next message into the processing list and lease it; None when the queue stays empty."""
        side = "LEFT" if self.pop == "left" else "RIGHT"
        try:
            if wait_s > 0:
                raw = self.client.blmove(self.queue_key, self.processing_key, wait_s, side, "LEFT")
            else:
                raw = self.client.lmove(self.queue_key, self.processing_key, side, "LEFT")
            if raw is None:
                return None
            message = bytes(raw)
            claim = Claim(message=message, attempts=0, first_seen_at="")
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(keys.lease_key(self.queue_key, claim.digest, claim.token), "1", ex=self.lease_s)
                pipe.hincrby(self.attempts_key, claim.digest, 1)
                pipe.hsetnx(self.attempts_key, f"{claim.digest}:first_seen", now_iso())
                pipe.hget(self.attempts_key, f"{claim.digest}:first_seen")
                _, attempts, _, first_seen = pipe.execute()
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while claiming from {self.queue_key}: {err}") from None
        claim.attempts = int(attempts)
        claim.first_seen_at = first_seen.decode() if first_seen else now_iso()
        return claim

    def renew(self, claim: Claim) -> None:
        """Extend the lease (heartbeat)."""
        try:
            self.client.set(keys.lease_key(self.queue_key, claim.digest, claim.token), "1", ex=self.lease_s)
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while renewing a lease: {err}") from None

    def _finish(self, claim: Claim, forget_attempts: bool, then: Any = None) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                if then is not None:
                    then(pipe)
                pipe.lrem(self.processing_key, -1, claim.message)
                pipe.delete(keys.lease_key(self.queue_key, claim.digest, claim.token))
                if forget_attempts:
                    pipe.hdel(self.attempts_key, claim.digest, f"{claim.digest}:first_seen")
                pipe.execute()
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while finishing a message: {err}") from None

    def complete(self, claim: Claim) -> None:
        """The job is done: drop the message, its lease and its attempt count in one transaction."""
        self._finish(claim, forget_attempts=True)

    def requeue(self, claim: Claim, count_attempt: bool = True) -> None:
        """Put the message back at the head of the queue; `count_attempt=False` gives the attempt back
        (an interrupted job is not the message's fault)."""

        def push(pipe: Any) -> None:
            self._head_push(pipe, claim.message)
            if not count_attempt:
                pipe.hincrby(self.attempts_key, claim.digest, -1)

        self._finish(claim, forget_attempts=False, then=push)

    def dead_letter(self, claim: Claim, entry: dict[str, Any]) -> None:
        """Append `entry` (JSON) to the dead-letter list and drop the message, in one transaction."""
        body = json.dumps(entry, default=str)
        self._finish(claim, forget_attempts=True, then=lambda pipe: pipe.rpush(self.dead_key, body))

    def reap(self) -> int:
        """Requeue processing entries whose lease is gone; returns how many were moved back."""
        moved = 0
        try:
            entries = self.client.lrange(self.processing_key, 0, -1)
            for message in dict.fromkeys(bytes(e) for e in entries):
                key_digest = digest(message)
                for _ in range(entries.count(message)):
                    if not self._reap_one(
                        keys=[self.processing_key, self.queue_key, self.orphans_key],
                        args=[message, key_digest, keys.lease_pattern(self.queue_key, key_digest),
                              self.orphan_grace_s, self.pop],
                    ):
                        break
                    moved += 1
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while reaping {self.processing_key}: {err}") from None
        return moved

    def lengths(self) -> tuple[int, int, int]:
        """(queued, processing, dead) read in one transaction, so a message moving between them is seen once."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self.queue_key)
            pipe.llen(self.processing_key)
            pipe.llen(self.dead_key)
            queued, processing, dead = pipe.execute()
        return int(queued), int(processing), int(dead)
