"""Status writes that only the holder of a claim's lease can make.

The job runner sets `Worker.fence` to a `Fence` for the claim it is running; `Worker.status_for` then hands out
`FencedStatusRecord`s, whose every write is one script that checks the claim's lease first (see
`WorkQueue.write_hash_if_leased`). A runner whose lease was reaped while it was cut off or paused (a zombie)
gets LeaseLost instead of moving a status that another runner now owns, for instance back from `done`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from function.queue import Claim, WorkQueue
from function.status import StatusRecord


class FencedStatusRecord(StatusRecord):
    """A StatusRecord whose writes need the claim's lease; raises LeaseLost (a Transient) when it is gone."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        ttl_s: int,
        state_fields: tuple[str, ...],
        queue: WorkQueue,
        claim: Claim,
        **options: Any,
    ) -> None:
        super().__init__(client, key, ttl_s, state_fields, **options)
        self._queue = queue
        self._claim = claim

    def _apply(self, cleared: list[str], pairs: list[str]) -> None:
        self._queue.write_hash_if_leased(self._claim, self.key, self._ttl_s, cleared, pairs)


@dataclass(frozen=True)
class Fence:
    """The claim a runner is working on, and the queue that holds its lease."""

    queue: WorkQueue
    claim: Claim

    def status_record(
        self, client: redis.Redis, key: str, ttl_s: int, state_fields: tuple[str, ...], **options: Any
    ) -> StatusRecord:
        """A fenced StatusRecord; `options` as StatusRecord's (keep_expiry, state_map)."""
        return FencedStatusRecord(client, key, ttl_s, state_fields, self.queue, self.claim, **options)
