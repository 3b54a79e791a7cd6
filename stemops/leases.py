"""How many jobs are running now, read from the queue's leases."""

from __future__ import annotations

import redis

from function import keys

SCAN_BATCH = 1000


def running_jobs(client: redis.Redis, queue_key: str) -> int:
    """Jobs running now: the live leases on claimed messages (a runner renews its lease while its job runs, so a
    lease outlives its runner by at most LEASE_SECONDS).

    This is the one place that knows how leases are stored. Today (function/queue.py) each claim holds a string
    key `<queue>:lease:<digest>:<token>` with a TTL, so they are counted with SCAN over that prefix. When
    queue.py keeps leases in a sorted set `<queue>:leases` scored by deadline, this becomes one
    `ZCOUNT <queue>:leases <now> +inf` and nothing else in stemops changes.
    """
    pattern = keys.lease_key(queue_key, "*", "*")
    return sum(1 for _ in client.scan_iter(match=pattern, count=SCAN_BATCH))
