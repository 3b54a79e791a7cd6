"""Many messages through many runner processes in a Redis shared with 100,000 unrelated keys.

Without `--faults`: every message must be done exactly once, the supervisor's reaps (it plays the reaper CronJob
every 5 s, besides the reap every runner does before each claim) are timed, and SLOWLOG must show no command over
10 ms. With `--faults`: runners are SIGKILLed and SIGTERMed mid-run (at least 10% of all runners started),
Redis (append-only file on) is restarted once and S3 is taken away for 10 s; nothing may be lost, stuck or
duplicated, and every failure must be dead-lettered with its reason.
"""

from __future__ import annotations

import json
import math
import random
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench.fleet.common import (
    QUEUE,
    Report,
    RunnerPool,
    check_end_state,
    model_repo,
    prioritise,
    runner_env,
    say,
    seed_inputs,
)
from bench.fleet.reap_timing import add_unrelated_keys
from function.keys import processing_key
from function.queue import WorkQueue
from workbench.local_services import LocalServices

SLOW_US = 10_000
REAP_EVERY_S = 5.0


def watch_slowlog(client: redis.Redis) -> None:
    client.config_set("slowlog-log-slower-than", SLOW_US)
    client.config_set("slowlog-max-len", 1024)
    client.slowlog_reset()


def slow_entries(client: redis.Redis) -> list[dict]:
    return [
        {
            "ms": round(e["duration"] / 1000, 1),
            "command": e["command"][:120].decode(errors="replace")
            if isinstance(e["command"], bytes)
            else str(e["command"])[:120],
        }
        for e in client.slowlog_get(1024)
        if e["duration"] > SLOW_US
    ]


class Faults:
    """When to strike: runner signals spread over the run, one Redis restart, one 10 s S3 outage."""

    def __init__(self, runners: int, rng: random.Random) -> None:
        per_kind = max(2, math.ceil(0.25 * runners))
        kinds = [signal.SIGKILL] * per_kind + [signal.SIGTERM] * per_kind
        rng.shuffle(kinds)
        points = sorted(rng.uniform(0.05, 0.85) for _ in kinds)
        self.strikes = list(zip(points, kinds, strict=True))
        self.redis_at, self.s3_at = 0.4, 0.6
        self.redis_done = self.s3_done = False
        self.s3_thread: threading.Thread | None = None
        self.log: list[str] = []


def run(
    messages: int,
    runners: int,
    unrelated: int,
    clip_s: float,
    faults: bool,
    seed: int,
    max_minutes: float,
    out: Path | None,
) -> int:
    report = Report("scale-faults" if faults else "scale")
    workdir = out or Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    rng = random.Random(seed)
    services = LocalServices(persistent_redis=True).start()
    assert services.redis is not None
    prioritise(services.redis.process)
    pool: RunnerPool | None = None
    try:
        client = redis.Redis.from_url(services.env()["REDIS_URL"], socket_timeout=5)
        repo = model_repo()
        ids = [f"fleet{n:05d}" for n in range(messages)]
        say(f"seeding {messages} inputs ({clip_s:g} s clips) and {unrelated:,} unrelated keys")
        seed_inputs(services, ids, clip_s)
        add_unrelated_keys(client, unrelated)
        client.rpush(QUEUE, *(json.dumps({"id": job_id}) for job_id in ids))
        watch_slowlog(client)
        client.config_resetstat()
        env = runner_env(
            services,
            repo,
            MAX_MESSAGES="100000",
            CLAIM_WAIT_S="3",
            LEASE_S="20",
            ORPHAN_GRACE_S="5",
            MAX_ATTEMPTS="5",
            REDIS_TIMEOUT_S="5",
            S3_TIMEOUT_S="10",
        )
        pool = RunnerPool(env, workdir / "logs")
        reaper = WorkQueue(client, QUEUE, lease_s=20, orphan_grace_s=5)
        plan = Faults(runners, rng) if faults else None
        slow: list[dict] = []
        reap_ms: list[float] = []
        started = time.monotonic()
        deadline = started + max_minutes * 60
        next_reap = started + REAP_EVERY_S
        last_line = 0.0
        say(f"starting {runners} runners")
        while time.monotonic() < deadline:
            try:
                queued, processing = client.llen(QUEUE), client.llen(processing_key(QUEUE))
            except redis.RedisError:
                time.sleep(0.5)
                continue
            live = pool.live()
            remaining = queued + processing
            if remaining == 0 and not live:
                break
            if queued > 0:
                for _ in range(runners - len(live)):
                    pool.start()
            now = time.monotonic()
            if now >= next_reap:
                next_reap = now + REAP_EVERY_S
                try:
                    tick = time.perf_counter()
                    reaper.reap()
                    reap_ms.append((time.perf_counter() - tick) * 1000)
                except Exception as err:  # Redis is restarting: the next round reaps
                    say(f"reap failed: {err}")
            progress = 1 - remaining / messages
            if plan is not None:
                strike(plan, pool, services, client, progress, slow)
            if now - last_line >= 15:
                last_line = now
                say(
                    f"queue {queued}, processing {processing}, runners live {len(live)}, started "
                    f"{len(pool.runners)}, progress {progress:.0%}"
                )
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        if plan is not None and plan.s3_thread is not None:
            plan.s3_thread.join()
        pool.stop()
        slow += slow_entries(client)
        stats = client.info("commandstats")
        say(f"run ended after {elapsed:.0f} s; checking")
        figures = check_end_state(report, client, services, ids, allow_dead=faults)
        report.check("the run finished within its time limit", elapsed < max_minutes * 60, f"{elapsed:.0f} s")
        if not faults:
            report.check(
                "every message done exactly once",
                figures["done_once"] == messages and not figures["reruns"],
                f"{figures['done_once']} done once, {len(figures['reruns'])} more than once",
            )
        report.check("SLOWLOG: no command over 10 ms", not slow, slow[:5])
        report.check(
            "no KEYS or SCAN was called",
            "cmdstat_keys" not in stats and "cmdstat_scan" not in stats,
            {k: v["calls"] for k, v in stats.items() if k in ("cmdstat_keys", "cmdstat_scan")},
        )
        reap_ms.sort()
        report.figures.update(
            figures,
            elapsed_s=round(elapsed, 1),
            messages=messages,
            runners=runners,
            unrelated_keys=unrelated,
            runners_started=len(pool.runners),
            runner_exit_codes=dict(pool.exit_codes),
            signals=dict(pool.signals),
            outcomes=dict(pool.outcomes()),
            slowlog_over_10ms=slow,
            script_us_per_call=stats.get("cmdstat_evalsha", {}).get("usec_per_call"),
            reaps=len(reap_ms),
            reap_max_ms=round(reap_ms[-1], 3) if reap_ms else None,
            reap_median_ms=round(statistics.median(reap_ms), 3) if reap_ms else None,
            faults=plan.log if plan else [],
        )
        if plan is not None:
            struck = sum(pool.signals.values())
            share = struck / len(pool.runners)
            report.check(
                "at least 10% of the runners were SIGKILLed or SIGTERMed",
                share >= 0.10,
                f"{dict(pool.signals)} of {len(pool.runners)} started ({share:.0%})",
            )
            report.check("Redis restarted once and S3 was away for 10 s", plan.redis_done and plan.s3_done, plan.log)
        print(json.dumps({k: v for k, v in report.figures.items() if k not in ("slowlog_over_10ms",)}, default=str))
        report.write(workdir)
        return 0 if report.ok else 1
    finally:
        if pool is not None:
            pool.stop()
        services.stop()


def strike(
    plan: Faults, pool: RunnerPool, services: LocalServices, client: redis.Redis, progress: float, slow: list[dict]
) -> None:
    while plan.strikes and progress >= plan.strikes[0][0]:
        _, signum = plan.strikes.pop(0)
        live = pool.live()
        if live:
            victim = random.choice(live)
            pool.signal(victim, signum)
            plan.log.append(f"{signum.name} {victim.name} at {progress:.0%}")
            say(plan.log[-1])
    if not plan.redis_done and progress >= plan.redis_at:
        plan.redis_done = True
        slow += slow_entries(client)  # the restart empties SLOWLOG and forgets its settings
        assert services.redis is not None
        services.redis.stop()
        services.redis.start()
        prioritise(services.redis.process)
        watch_slowlog(client)
        plan.log.append(f"Redis restarted (append-only file) at {progress:.0%}")
        say(plan.log[-1])
    if not plan.s3_done and progress >= plan.s3_at:
        plan.s3_done = True

        def outage() -> None:
            assert services.s3 is not None
            services.s3.stop()
            time.sleep(10)
            services.s3.start()

        plan.s3_thread = threading.Thread(target=outage)
        plan.s3_thread.start()
        plan.log.append(f"S3 stopped for 10 s at {progress:.0%}")
        say(plan.log[-1])
