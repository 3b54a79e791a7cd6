"""Time one reap with 16 leased claims in flight and 2,000 queued messages, at 0 and 100,000 unrelated keys.

Two shapes of the in-flight state: `leased` (every processing entry has a lease: the reaper answers from the
lease count alone) and `one-unleased` (one entry is between its claim and its lease write: the reaper reads the
processing list and the leases). For contrast, the previous release's reaper (a KEYS pattern per message, one
script call per distinct message) is timed on the same state with its string lease keys.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench.fleet.common import QUEUE, Report, say
from function.queue import WorkQueue
from workbench.local_services import RedisServer

# The previous release's reaper script, kept here only to measure what the new one replaced.
LEGACY_REAP_ONE = """
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

IN_FLIGHT = 16
QUEUED = 2000


def legacy_reap(client: redis.Redis, script) -> int:
    """The previous release's WorkQueue.reap: one script call per distinct message in the processing list."""
    moved = 0
    entries = client.lrange(f"{QUEUE}:processing", 0, -1)
    for message in dict.fromkeys(bytes(e) for e in entries):
        digest = hashlib.sha256(message).hexdigest()[:32]
        moved += script(
            keys=[f"{QUEUE}:processing", QUEUE, f"{QUEUE}:orphans"],
            args=[message, digest, f"{QUEUE}:lease:{digest}:*", 3600, "left"],
        )
    return moved


def add_unrelated_keys(client: redis.Redis, count: int) -> None:
    """`count` keys of another application (REST sessions and caches) in the same database."""
    batch = 1000
    for start in range(0, count, batch):
        client.mset({f"rest:session:{n}": f"user-{n}" for n in range(start, min(count, start + batch))})


def prepare(client: redis.Redis, unrelated: int, unleased: bool) -> WorkQueue:
    client.flushall()
    add_unrelated_keys(client, unrelated)
    client.rpush(QUEUE, *(f'{{"id": "queued{n:05d}"}}' for n in range(QUEUED)))
    queue = WorkQueue(client, QUEUE, lease_s=3600, orphan_grace_s=3600)
    for _ in range(IN_FLIGHT):
        claim = queue.claim(0)
        assert claim is not None
        # The previous release's lease for the same claim, so the legacy reaper sees the same live claims.
        client.set(f"{QUEUE}:lease:{hashlib.sha256(claim.message).hexdigest()[:32]}:{claim.token}", "1", ex=3600)
    if unleased:
        client.lpush(f"{QUEUE}:processing", '{"id": "between-claim-and-lease"}')
    return queue


def time_calls(client: redis.Redis, call, repeat: int) -> dict[str, float]:
    client.config_resetstat()
    client.slowlog_reset()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        moved = call()
        samples.append((time.perf_counter() - started) * 1000)
        assert moved == 0, moved  # nothing is due: the state stays the same for every sample
    stats = client.info("commandstats")
    scripts = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    slow = [entry for entry in client.slowlog_get(128) if entry["duration"] > 10_000]
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        "server_us_per_reap": round(scripts["usec"] / repeat, 1),
        "keys_calls": stats.get("cmdstat_keys", {}).get("calls", 0),
        "scan_calls": stats.get("cmdstat_scan", {}).get("calls", 0),
        "slowlog_over_10ms": len(slow),
    }


def run(unrelated_counts: list[int], repeat: int, legacy_repeat: int, out: Path | None) -> int:
    report = Report("reap-timing")
    server = RedisServer(Path(tempfile.mkdtemp(prefix="fleet-reap-"))).start()
    client = redis.Redis.from_url(server.url)
    client.config_set("slowlog-log-slower-than", 10_000)
    legacy_script = client.register_script(LEGACY_REAP_ONE)
    rows = []
    try:
        for unrelated in unrelated_counts:
            for unleased in (False, True):
                queue = prepare(client, unrelated, unleased)
                shape = "one-unleased" if unleased else "leased"
                say(f"{unrelated} unrelated keys, {shape}: {repeat} reaps")
                new = time_calls(client, queue.reap, repeat)
                old = time_calls(client, lambda: legacy_reap(client, legacy_script), legacy_repeat)
                rows.append({"unrelated_keys": unrelated, "shape": shape, "reaper": "leases (this release)", **new})
                rows.append({"unrelated_keys": unrelated, "shape": shape, "reaper": "KEYS (previous)", **old})
    finally:
        client.close()
        server.stop()
    print(
        "\n| unrelated keys | in flight | reaper | median ms | p99 ms | server us/reap | KEYS/SCAN calls "
        "| slowlog > 10 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['unrelated_keys']:,} | {IN_FLIGHT} leased{' + 1 unleased' if row['shape'] != 'leased' else ''}"
            f" | {row['reaper']} | {row['median_ms']} | {row['p99_ms']} | {row['server_us_per_reap']} | "
            f"{row['keys_calls']}/{row['scan_calls']} | {row['slowlog_over_10ms']} |"
        )
    print()
    report.figures["rows"] = rows
    new_rows = [row for row in rows if row["reaper"].startswith("leases")]
    report.check(
        "the reaper calls neither KEYS nor SCAN",
        all(r["keys_calls"] == r["scan_calls"] == 0 for r in new_rows),
        "commandstats",
    )
    for shape in ("leased", "one-unleased"):
        by_keys = {r["unrelated_keys"]: r["server_us_per_reap"] for r in new_rows if r["shape"] == shape}
        low, high = by_keys[min(by_keys)], by_keys[max(by_keys)]
        # Same work at every keyspace size: allow timer noise, never a growth with the keyspace.
        report.check(
            f"time per reap does not grow with unrelated keys ({shape})",
            high <= max(2 * low, low + 50),
            f"server us per reap {by_keys}",
        )
    report.check(
        "no reap over 10 ms in SLOWLOG",
        all(r["slowlog_over_10ms"] == 0 for r in new_rows),
        [r["slowlog_over_10ms"] for r in new_rows],
    )
    report.write(out)
    return 0 if report.ok else 1
