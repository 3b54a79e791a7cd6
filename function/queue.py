"""The Redis work queue: claim into a processing list, lease, complete, requeue, dead-letter and reap.

A claimed message is never held only in memory: BLMOVE puts it in `<queue>:processing` atomically. Each claim then
holds a lease: its runner token in the sorted set `<queue>:leases`, scored by its deadline, and the message it
holds in the hash `<queue>:leased` (python-rq's StartedJobRegistry shape). The runner's heartbeat renews the
deadline. A reaper (one Lua script, so reapers running at once never requeue a message twice) reads only those
structures and the processing list, never the keyspace:
- a lease past its deadline is dropped and one copy of its message goes back to the head of the queue;
- a message with more copies in the processing list than leases on it is requeued once that deficit has lasted
  `orphan_grace_s` (so a runner between its claim and its lease write is never robbed).
Acks (done, requeue, dead-letter) are each one script that first checks the claim's token still holds a lease:
a runner whose lease was reaped is fenced and writes nothing (`LeaseLost`). The scripts are in
`function.queue_scripts`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from function import keys, queue_scripts
from function.clock import now_iso
from function.errors import LeaseLost, RedisUnavailable

# A dead-letter entry keeps this much of its message (the rest is told by its size and digest): a 1 MB message
# must not make a 1 MB entry.
DEAD_LETTER_MESSAGE_BYTES = 4096
# BLMOVE never times out below this: Redis reads a blocking timeout in milliseconds, and 0 means "forever".
MIN_BLOCK_S = 0.01


def digest(message: bytes) -> str:
    return hashlib.sha256(message).hexdigest()[:32]


def dead_letter_fields(message: bytes) -> dict[str, Any]:
    """What a dead-letter entry keeps of its message: the first DEAD_LETTER_MESSAGE_BYTES as text (undecodable
    bytes replaced), its size, its sha256, and whether it was cut (a cut message cannot be requeued from the
    entry: `stemworker dead requeue` refuses it)."""
    return {
        "message": message[:DEAD_LETTER_MESSAGE_BYTES].decode("utf-8", "replace"),
        "message_bytes": len(message),
        "message_sha256": hashlib.sha256(message).hexdigest(),
        "truncated": len(message) > DEAD_LETTER_MESSAGE_BYTES,
    }


def block_slice_s(socket_timeout_s: float) -> float:
    """The longest single BLMOVE for a client whose socket times out after `socket_timeout_s`: the blocking wait
    plus the reply's round trip must fit inside it, or the claim would fail as "Redis unavailable"."""
    return max(MIN_BLOCK_S, socket_timeout_s / 2, socket_timeout_s - 2.0)


@dataclass
class Claim:
    """One message taken from the queue by this runner; `token` names its lease."""

    message: bytes
    attempts: int
    first_seen_at: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    dataset: str = ""  # the Redis dataset marker at claim time (keys.dataset_key)
    exhausted: bool = False  # dead-lettered by the claim itself: its attempts were used up by runners that died
    dead_entry: bytes = b""  # with `exhausted`: the dead-letter entry the claim wrote

    @property
    def digest(self) -> str:
        return digest(self.message)


class WorkQueue:
    """Queue operations for one queue key. Every method raises Transient when Redis fails, and the methods that
    write for a claim raise LeaseLost when the claim's lease is gone."""

    def __init__(
        self,
        client: redis.Redis,
        queue_key: str,
        pop: Literal["left", "right"] = "left",
        lease_s: int = 120,
        orphan_grace_s: float = 10.0,
        max_attempts: int = 3,
        block_s: float | None = None,
    ) -> None:
        self.client = client
        self.queue_key = queue_key
        self.processing_key = keys.processing_key(queue_key)
        self.dead_key = keys.dead_key(queue_key)
        self.leases_key = keys.leases_key(queue_key)
        self.leased_key = keys.leased_key(queue_key)
        self.attempts_key = keys.attempts_key(queue_key)
        self.orphans_key = keys.orphans_key(queue_key)
        self.dataset_key = keys.dataset_key(queue_key)
        self.pop = pop
        self.max_attempts = max_attempts
        # One BLMOVE waits at most this long (a longer claim wait is several), so it never outlives the socket.
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self.block_s = block_s if block_s is not None else block_slice_s(timeout) if timeout else 5.0
        self.lease_s = lease_s
        self.orphan_grace_s = orphan_grace_s
        self._claim = client.register_script(queue_scripts.CLAIM)
        self._renew = client.register_script(queue_scripts.RENEW)
        self._finish_script = client.register_script(queue_scripts.FINISH)
        self._write_hash = client.register_script(queue_scripts.WRITE_HASH_IF_LEASED)
        self._reap = client.register_script(queue_scripts.REAP)
        self._complete_dead = client.register_script(queue_scripts.COMPLETE_DEAD_LETTER)

    def claim(self, wait_s: float) -> Claim | None:
        """Move the next message into the processing list and lease it; None when the queue stays empty for
        `wait_s`. The wait is made of BLMOVEs no longer than `block_s`, so any wait works with any socket timeout.

        A message whose attempts are used up (MAX_ATTEMPTS runners claimed it and died) comes back as a Claim with
        `exhausted` set: the claim script has already dead-lettered it, and it holds no lease.
        Raises LeaseLost when a reaper requeued the message before its lease was written (the lease write came
        more than `orphan_grace_s` after the move, e.g. across a Redis outage): another runner will take it."""
        side = "LEFT" if self.pop == "left" else "RIGHT"
        deadline = time.monotonic() + wait_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining >= MIN_BLOCK_S:
                    # BLMOVE takes a float timeout (Redis >= 6); redis-py's annotation says int.
                    raw = self.client.blmove(
                        self.queue_key,
                        self.processing_key,
                        min(remaining, self.block_s),  # type: ignore[arg-type]
                        side,
                        "LEFT",
                    )
                else:
                    raw = self.client.lmove(self.queue_key, self.processing_key, side, "LEFT")
                if raw is not None or time.monotonic() >= deadline - MIN_BLOCK_S:
                    break
            if raw is None:
                return None
            claim = Claim(message=raw if isinstance(raw, bytes) else raw.encode(), attempts=0, first_seen_at="")
            preview = json.dumps({**dead_letter_fields(claim.message), "job_id": None, "event": None})
            leased = self._claim(
                keys=[
                    self.processing_key,
                    self.leases_key,
                    self.leased_key,
                    self.attempts_key,
                    self.dead_key,
                    self.dataset_key,
                ],
                args=[
                    claim.token,
                    claim.message,
                    claim.digest,
                    self.lease_s,
                    now_iso(),
                    self.max_attempts,
                    uuid.uuid4().hex,
                    preview,
                ],
            )
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while claiming from {self.queue_key}: {err}") from None
        if leased is None:
            raise LeaseLost(
                f"the message claimed from {self.queue_key} was requeued by a reaper before its lease "
                f"was written (more than ORPHAN_GRACE_S={self.orphan_grace_s:g} after the claim)"
            )
        attempts, first_seen, dataset, exhausted = leased[:4]
        claim.dead_entry = bytes(leased[4]) if len(leased) > 4 else b""
        claim.attempts = int(attempts)
        claim.first_seen_at = first_seen.decode() if first_seen else now_iso()
        claim.dataset = dataset.decode() if isinstance(dataset, bytes) else str(dataset or "")
        claim.exhausted = bool(int(exhausted))
        return claim

    def name_dead_letter(self, claim: Claim, job_id: str) -> bool:
        """Write `job_id` into the entry the claim script dead-lettered an exhausted message with (it had not
        parsed the message); False when the entry is gone (an operator requeued or purged it meanwhile)."""
        entry = json.loads(claim.dead_entry)
        entry["job_id"] = job_id
        try:
            return bool(self._complete_dead(keys=[self.dead_key], args=[claim.dead_entry, json.dumps(entry)]))
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while completing a dead-letter entry: {err}") from None

    def dataset(self) -> str | None:
        """The dataset marker Redis holds now (None when it holds none: it lost its data, or no claim ran yet)."""
        try:
            value = self.client.get(self.dataset_key)
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while reading {self.dataset_key}: {err}") from None
        return value.decode() if isinstance(value, bytes) else value

    def lost_data_since(self, claim: Claim) -> bool:
        """Whether Redis lost its data since `claim` was made: its dataset marker is gone or another one."""
        return bool(claim.dataset) and self.dataset() != claim.dataset

    def renew(self, claim: Claim) -> None:
        """Extend the lease (heartbeat); LeaseLost when it is gone."""
        try:
            renewed = self._renew(keys=[self.leases_key], args=[claim.token, self.lease_s])
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while renewing a lease: {err}") from None
        if not renewed:
            raise LeaseLost(
                f"lease {claim.token} on a message of {self.queue_key} was reaped: it was not renewed "
                f"for LEASE_S={self.lease_s}"
            )

    def holds(self, claim: Claim) -> bool:
        """Whether the claim's lease is still held (a read, for reports; writes check it themselves)."""
        try:
            return self.client.zscore(self.leases_key, claim.token) is not None
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while reading a lease: {err}") from None

    def write_hash_if_leased(
        self, claim: Claim, key: str, ttl_s: int, cleared: Sequence[str], pairs: Sequence[str]
    ) -> None:
        """HDEL the `cleared` fields of hash `key`, HSET the flat name/value `pairs` and set its TTL (unless the key
        has none), in one script that first checks the claim's lease; LeaseLost, with nothing written, when the
        lease is gone."""
        args: list[Any] = [claim.token, ttl_s, len(cleared), *cleared, *pairs]
        try:
            written = self._write_hash(keys=[key, self.leases_key], args=args)
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while writing {key}: {err}") from None
        if not written:
            raise LeaseLost(
                f"not writing {key}: lease {claim.token} was reaped and the message handed to another runner"
            )

    def _finish(
        self, claim: Claim, outcome: Literal["done", "requeue", "dead"], give_back: bool = False, entry: str = ""
    ) -> None:
        try:
            finished = self._finish_script(
                keys=[
                    self.processing_key,
                    self.leases_key,
                    self.leased_key,
                    self.attempts_key,
                    self.queue_key,
                    self.dead_key,
                ],
                args=[claim.token, claim.message, claim.digest, outcome, self.pop, int(give_back), entry],
            )
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while finishing a message: {err}") from None
        if not finished:
            raise LeaseLost(
                f"not acknowledging ({outcome}): lease {claim.token} was reaped and the message handed "
                "to another runner"
            )

    def complete(self, claim: Claim) -> None:
        """The job is done: drop the message, its lease and its attempt count in one transaction."""
        self._finish(claim, "done")

    def requeue(self, claim: Claim, count_attempt: bool = True) -> None:
        """Put the message back at the head of the queue; `count_attempt=False` gives the attempt back
        (an interrupted job is not the message's fault)."""
        self._finish(claim, "requeue", give_back=not count_attempt)

    def dead_letter(self, claim: Claim, entry: dict[str, Any]) -> None:
        """Append `entry` (JSON) to the dead-letter list and drop the message, in one transaction."""
        self._finish(claim, "dead", entry=json.dumps(entry, default=str))

    def reap(self) -> int:
        """Requeue the messages of expired leases, and processing entries that have had no lease for
        `orphan_grace_s`; returns how many were moved back. One script: no KEYS, no SCAN."""
        try:
            moved = self._reap(
                keys=[self.processing_key, self.queue_key, self.leases_key, self.leased_key, self.orphans_key],
                args=[self.orphan_grace_s, self.pop],
            )
        except redis.RedisError as err:
            raise RedisUnavailable(f"Redis unavailable while reaping {self.processing_key}: {err}") from None
        return int(moved)

    def lengths(self) -> tuple[int, int, int]:
        """(queued, processing, dead) read in one transaction, so a message moving between them is seen once."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self.queue_key)
            pipe.llen(self.processing_key)
            pipe.llen(self.dead_key)
            queued, processing, dead = pipe.execute()
        return int(queued), int(processing), int(dead)
