"""How many jobs are running now, read from the queue's leases."""

from __future__ import annotations

import redis

from function import keys


def running_jobs(client: redis.Redis, queue_key: str) -> int:
    """Jobs running now: the live leases on claimed messages (a runner renews its lease while its job runs, so a
    lease outlives its runner by at most LEASE_S).

    This is the one place that knows how leases are stored: function/queue.py keeps each claim's runner token in
    the sorted set `<queue>:leases`, scored by its deadline in Redis time (unix seconds), so the count is one
    ZCOUNT of the deadlines not yet passed: O(log n), never a walk of the keyspace."""
    seconds, micros = client.time()
    return int(client.zcount(keys.leases_key(queue_key), seconds + micros / 1e6, "+inf"))
