"""Running jobs, read from the queue's leases and the claims' holders (function/claims.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis

from function import keys
from function.claims import live_claims
from function.config import Settings


def running_jobs(client: redis.Redis, queue_key: str) -> int:
    """Jobs running now: the live leases on claimed messages (a runner renews its lease while its job runs, so a
    lease outlives its runner by at most LEASE_S).

    This is the one place that knows how leases are stored: function/queue.py keeps each claim's runner token in
    the sorted set `<queue>:leases`, scored by its deadline in Redis time (unix seconds), so the count is one
    ZCOUNT of the deadlines not yet passed: O(log n), never a walk of the keyspace."""
    seconds, micros = client.time()
    return int(client.zcount(keys.leases_key(queue_key), seconds + micros / 1e6, "+inf"))


@dataclass(frozen=True)
class RunningJob:
    """One live claim: its job, the pod running it, for how long, and the job's state and progress now."""

    job_id: str | None
    pod: str | None
    age_s: float | None
    lease_left_s: float
    state: str | None
    progress: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def running_now(client: redis.Redis, settings: Settings) -> list[RunningJob]:
    """Every live claim, the longest-running first, with its pod and age (None where the runner recorded no
    holder: one between its claim and that write, or from before holders were recorded) and its job's status."""
    claims = live_claims(client, settings.queue_key)
    with client.pipeline(transaction=False) as pipe:
        for claim in claims:
            pipe.hmget(keys.status_key(settings.status_key, claim.job_id or "-"), "state", "progress")
        statuses = pipe.execute() if claims else []
    rows = []
    for claim, (state, progress) in zip(claims, statuses, strict=True):
        known = claim.job_id is not None
        try:
            percent = int(float(progress)) if known and progress else None
        except ValueError:
            percent = None
        rows.append(
            RunningJob(
                job_id=claim.job_id,
                pod=claim.pod,
                age_s=None if claim.age_s is None else round(claim.age_s, 3),
                lease_left_s=round(claim.lease_left_s, 3),
                state=state.decode() if known and state else None,
                progress=percent,
            )
        )
    return rows
