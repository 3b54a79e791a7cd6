"""Who runs what: what the job runner records about each claim beside the queue's own lease bookkeeping.

- `<queue>:holders` (hash): lease token -> JSON `{"pod", "job_id", "claimed_at"}` (claimed_at in Unix seconds),
  written right after the claim and removed when the runner lets the claim go. It sits beside `<queue>:leases`
  and `<queue>:leased` (function/queue.py) and never decides anything: a token counts only while its lease is
  live, and readers (`stemworker workers`, `jobs`, `stats`) drop entries whose lease is gone (a runner killed
  before it could remove its own), in one script.
- The queue wait of each job's first claim, as a histogram in `<queue>:metrics:queue_wait`: from the CloudEvent's
  `time` when the message is a structured CloudEvent that has one, else from when an observer first saw the message
  waiting (`<queue>:seen`, stemops/waiting.py); unknown (not recorded) otherwise.

Everything here is best effort: a Redis failure is logged and never fails a claim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from function import keys
from function.config import Settings

log = logging.getLogger("stemworker.claims")

# Seconds: a message taken at once to one that waited a day behind a backlog.
QUEUE_WAIT_BUCKETS_S = (
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)


def queue_wait_key(queue_key: str) -> str:
    """Hash: histogram buckets (`<le>`, observations in that bucket alone) and `sum` of queue waits."""
    return keys.metrics_key(queue_key, "queue_wait")


def pod_name(settings: Settings) -> str:
    """POD_NAME (the downward API's metadata.name), else the host name (a pod's host name is its name)."""
    return settings.pod_name or socket.gethostname()


def producer_time(message: bytes) -> float | None:
    """The `time` of a structured-mode CloudEvent message, in Unix seconds; None for any other message."""
    try:
        payload = json.loads(message)
        stamp = payload["time"] if isinstance(payload, dict) and "specversion" in payload else None
        return datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else None
    except (ValueError, KeyError, TypeError):
        return None


def queued_since(client: redis.Redis, queue_key: str, message: bytes) -> float | None:
    """When the message started waiting: its CloudEvent `time`, else when an observer first saw it queued."""
    produced = producer_time(message)
    if produced is not None:
        return produced
    seen = client.zscore(keys.seen_key(queue_key), hashlib.sha1(message).hexdigest())
    return float(seen) if seen is not None else None


def record_claim(
    client: redis.Redis,
    settings: Settings,
    token: str,
    message: bytes,
    attempt: int,
    job_id: str | None,
    recorder: Any | None = None,
) -> None:
    """Record who holds the claim `token` and, on a message's first claim, how long it waited in the queue."""
    now = time.time()
    holder = json.dumps({"pod": pod_name(settings), "job_id": job_id, "claimed_at": round(now, 3)})
    try:
        client.hset(keys.holders_key(settings.queue_key), token, holder)
        since = queued_since(client, settings.queue_key, message) if attempt == 1 else None
    except redis.RedisError as err:
        log.warning("could not record the holder of claim %s: %s", token, err)
        return
    if since is not None and recorder is not None:
        recorder.queue_wait(max(0.0, now - since))


def forget_claim(client: redis.Redis, queue_key: str, token: str) -> None:
    """The runner let its claim go (done, requeued, dead-lettered or lost)."""
    try:
        client.hdel(keys.holders_key(queue_key), token)
    except redis.RedisError as err:
        log.warning("could not drop the holder of claim %s: %s", token, err)


# KEYS: holders, leases. Drops holders whose lease is gone; returns {token, holder JSON, lease deadline, now}...
LIVE_HOLDERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local result = {tostring(now)}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local deadline = redis.call('ZSCORE', KEYS[2], entries[i])
  if deadline then
    table.insert(result, entries[i])
    table.insert(result, entries[i + 1])
    table.insert(result, deadline)
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  if redis.call('HEXISTS', KEYS[1], token) == 0 then
    table.insert(result, token)
    table.insert(result, '{}')
    table.insert(result, redis.call('ZSCORE', KEYS[2], token))
  end
end
return result
"""


@dataclass(frozen=True)
class Holding:
    """One live claim: the runner's pod (None when it recorded none), its job and how long it has held it."""

    token: str
    pod: str | None
    job_id: str | None
    claimed_at: float | None
    age_s: float | None
    lease_left_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "pod": self.pod,
            "job_id": self.job_id,
            "claimed_at": self.claimed_at,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "lease_left_s": round(self.lease_left_s, 3),
        }


def live_claims(client: redis.Redis, queue_key: str) -> list[Holding]:
    """Every claim whose lease is live, oldest first, with its holder where one was recorded; drops the records of
    claims whose lease is gone. One script: its cost grows with the live leases, never the keyspace."""
    raw = client.eval(LIVE_HOLDERS, 2, keys.holders_key(queue_key), keys.leases_key(queue_key))
    now = float(raw[0])
    found = []
    for index in range(1, len(raw), 3):
        token, holder, deadline = raw[index].decode(), json.loads(raw[index + 1]), float(raw[index + 2])
        if deadline < now:
            continue  # expired, waiting for a reaper: nobody runs it
        claimed_at = holder.get("claimed_at")
        found.append(
            Holding(
                token=token,
                pod=holder.get("pod"),
                job_id=holder.get("job_id"),
                claimed_at=claimed_at,
                age_s=None if claimed_at is None else max(0.0, now - float(claimed_at)),
                lease_left_s=deadline - now,
            )
        )
    return sorted(found, key=lambda h: (h.claimed_at is None, h.claimed_at or 0.0))
