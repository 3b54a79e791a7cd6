"""Redis without persistence (no append-only file, no snapshots) restarted mid-run: what is lost.

Redis promises nothing here, and the run shows exactly that: the queue, the processing list, the leases, the
attempt counts and every status hash are gone after the restart, so every message not finished before it is
lost. The runners do not make it worse: a runner in the middle of a job finds its lease gone, is fenced (it writes
no status into the empty Redis and acknowledges nothing), and every runner then finds an empty queue and exits 0.
The outputs of jobs finished before the restart stay in S3. docs/reliability.md says why `toWorker` needs
`appendonly yes`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from bench.fleet.common import (
    QUEUE,
    STEMS,
    Report,
    RunnerPool,
    model_repo,
    output_objects,
    runner_env,
    say,
    seed_inputs,
)
from function.keys import metrics_key, processing_key, recent_jobs_key
from workbench.local_services import LocalServices

RESTART_AT = 0.25
METRIC_HASHES = ("counters", "durations", "rtf")  # function/metrics.py


def run(messages: int, runners: int, out: Path | None) -> int:
    report = Report("no-persistence")
    workdir = out or Path(tempfile.mkdtemp(prefix="fleet-lossy-"))
    services = LocalServices(persistent_redis=False).start()
    pool: RunnerPool | None = None
    try:
        client = redis.Redis.from_url(services.env()["REDIS_URL"], socket_timeout=5)
        repo = model_repo()
        ids = [f"lossy{n:04d}" for n in range(messages)]
        seed_inputs(services, ids, 1.0)
        client.rpush(QUEUE, *(json.dumps({"id": job_id}) for job_id in ids))
        env = runner_env(services, repo, MAX_MESSAGES="100000", CLAIM_WAIT_S="3", LEASE_S="20", REDIS_TIMEOUT_S="5")
        pool = RunnerPool(env, workdir / "logs")
        for _ in range(runners):
            pool.start()
        before: dict[str, int] = {}
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            live = pool.live()
            try:
                queued, processing = client.llen(QUEUE), client.llen(processing_key(QUEUE))
            except redis.RedisError:
                time.sleep(0.2)
                continue
            if not before and 1 - (queued + processing) / messages >= RESTART_AT:
                finished = {name.rsplit("-", 1)[0] for name in output_objects(services)}
                before = {"queued": queued, "processing": processing, "jobs_with_outputs": len(finished)}
                say(f"restarting Redis without persistence: {before}")
                assert services.redis is not None
                services.redis.stop()
                services.redis.start()
            if not live:
                break
            time.sleep(0.2)
        pool.stop()
        per_job = Counter(name.rsplit("-", 1)[0] for name in output_objects(services))
        complete = {job_id for job_id, count in per_job.items() if count == len(STEMS)}
        keys_left = sorted(key.decode() for key in client.scan_iter(count=1000))
        outcomes = pool.outcomes()
        lost = messages - len(complete)
        say(
            f"after the restart: keys left {keys_left}; runner outcomes {dict(outcomes)}; "
            f"exit codes {dict(pool.exit_codes)}"
        )
        report.check("Redis was restarted mid-run", bool(before), before)
        report.check(
            "the list itself is lost: queue and processing list are empty after the restart",
            client.llen(QUEUE) == 0 and client.llen(processing_key(QUEUE)) == 0,
            "both empty",
        )
        # At most the jobs already finished plus those in flight at the restart ever finish: nothing that was
        # still waiting in the queue runs after the restart.
        ran_at_most = before.get("jobs_with_outputs", 0) + before.get("processing", 0)
        report.check(
            "every message still queued at the restart is lost",
            bool(before) and len(complete) <= ran_at_most and lost >= before["queued"],
            f"{messages} queued, {len(complete)} finished (outputs in S3, at most {ran_at_most} could), "
            f"{lost} lost ({before.get('queued')} were waiting in the queue)",
        )
        # What a fenced runner still writes is unfenced by design: log lines, metrics counters, the recent-jobs index.
        unfenced = {"logging", recent_jobs_key(QUEUE), *(metrics_key(QUEUE, name) for name in METRIC_HASHES)}
        report.check(
            "no runner wrote a status, lease or attempt count into the empty Redis",
            set(keys_left) <= unfenced,
            keys_left,
        )
        report.check(
            "runners in the middle of a job were fenced, none crashed",
            set(pool.exit_codes) <= {0} and outcomes.get("lease-lost", 0) >= 1,
            f"outcomes {dict(outcomes)}, exit codes {dict(pool.exit_codes)}",
        )
        report.figures.update(
            before=before,
            finished=len(complete),
            lost=lost,
            outcomes=dict(outcomes),
            keys_left=keys_left,
            exit_codes=dict(pool.exit_codes),
        )
        report.write(workdir)
        return 0 if report.ok else 1
    finally:
        if pool is not None:
            pool.stop()
        services.stop()
