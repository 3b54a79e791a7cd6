"""What every fleet scenario shares: the services, the tiny model, seeded inputs, a pool of runner processes,
the end-state checks and the PASS/FAIL report."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from minio import Minio
from minio.commonconfig import CopySource

from function.keys import dead_key, leases_key, processing_key
from workbench import sample_song
from workbench.local_services import LocalServices
from workbench.model_repo import write_model

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "toWorker"
INPUT_BUCKET = "fleet-in"
OUTPUT_BUCKET = "fleet-out"
STEMS = ("bass", "drums", "other", "vocals")
DONE_LINE = re.compile(r"job (\S+): done in ")
OUTCOME_LINE = re.compile(r"outcome (\S+) job=(\S+)")


@dataclass
class Report:
    """Named properties, each PASS or FAIL with what was seen, plus measured figures."""

    scenario: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, seen: object) -> None:
        self.checks.append((name, bool(ok), str(seen)))
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {seen}", flush=True)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def write(self, out: Path | None) -> None:
        print(f"{self.scenario}: {'PASS' if self.ok else 'FAIL'}", flush=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{self.scenario}.json"
            path.write_text(
                json.dumps(
                    {
                        "scenario": self.scenario,
                        "ok": self.ok,
                        "figures": self.figures,
                        "checks": [{"name": n, "ok": ok, "seen": s} for n, ok, s in self.checks],
                    },
                    indent=2,
                    default=str,
                )
            )
            print(f"summary written to {path}", flush=True)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def model_repo() -> Path:
    """A repo with `tiny` (the partition's long job) and `micro` (the fleet runs' fast-fake separation)."""
    repo = Path(tempfile.mkdtemp(prefix="fleet-models-"))
    write_model(repo, "tiny")
    write_model(repo, "micro")
    return repo


def prioritise(process: subprocess.Popen | None) -> None:
    """Run a server's main thread in the real-time class (SCHED_FIFO, lowest priority), or at nice -10 where that
    is refused: SLOWLOG times a command by the wall clock, so on a shared 2-core host other processes preempting
    redis-server mid-command would read as slow commands. Redis sleeps in epoll between commands, so this takes
    nothing from the runners but the time its commands need."""
    if process is None:
        return
    try:
        os.sched_setscheduler(process.pid, os.SCHED_FIFO, os.sched_param(1))
        say(f"redis-server pid {process.pid} runs SCHED_FIFO")
        return
    except OSError as err:
        say(f"SCHED_FIFO refused for pid {process.pid} ({err}); trying nice -10")
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, -10)
    except OSError as err:  # not root: measure without it, and say so
        say(f"could not raise the priority of pid {process.pid}: {err}")


def s3_of(services: LocalServices) -> Minio:
    env = services.env()
    return Minio(
        env["MINIO_ENDPOINT"], access_key=env["MINIO_ACCESS_KEY"], secret_key=env["MINIO_SECRET_KEY"], secure=False
    )


def seed_inputs(services: LocalServices, ids: list[str], seconds: float) -> None:
    """One generated song of `seconds`, copied server-side to `<id>.mp3` for every id."""
    s3 = s3_of(services)
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        if not s3.bucket_exists(bucket):
            s3.make_bucket(bucket)
    song = sample_song.song_mp3(seconds=seconds)
    s3.put_object(INPUT_BUCKET, "seed.mp3", io.BytesIO(song), len(song))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.copy_object(INPUT_BUCKET, f"{i}.mp3", CopySource(INPUT_BUCKET, "seed.mp3")), ids))


def runner_env(services: LocalServices, repo: Path, model: str = "micro", **extra: str) -> dict[str, str]:
    """The environment of one `python -m function.runner` against `services` with a generated model."""
    return {
        **os.environ,
        **services.env(),
        "PYTHONPATH": str(ROOT),
        "INPUT_BUCKET": INPUT_BUCKET,
        "OUTPUT_BUCKET": OUTPUT_BUCKET,
        "DEMUCS_MODEL": model,
        "DEMUCS_REPO": str(repo),
        "DEMUCS_DEVICE": "cpu",
        "DEMUCS_THREADS": "1",
        "DEMUCS_SHIFTS": "0",
        "OMP_NUM_THREADS": "1",
        "MP3_PRESET": "7",
        "RESULT_CACHE": "off",
        **extra,
    }


@dataclass
class Runner:
    name: str
    process: subprocess.Popen
    log: Path
    signalled: str | None = None


class RunnerPool:
    """Runner processes with one log file each; keeps count of what was started, signalled and how each ended."""

    def __init__(self, env: dict[str, str], logs: Path, command: list[str] | None = None) -> None:
        self.env = env
        self.logs = logs
        self.command = command or [sys.executable, "-m", "function.runner"]
        logs.mkdir(parents=True, exist_ok=True)
        self.runners: list[Runner] = []
        self.exit_codes: Counter[int] = Counter()
        self.signals: Counter[str] = Counter()

    def start(self, prefix: list[str] | None = None) -> Runner:
        name = f"runner-{len(self.runners):03d}"
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*(prefix or []), *self.command], env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        runner = Runner(name, process, log)
        self.runners.append(runner)
        return runner

    def live(self) -> list[Runner]:
        alive = []
        for runner in self.runners:
            code = runner.process.poll()
            if code is None:
                alive.append(runner)
            elif not hasattr(runner, "_counted"):
                runner._counted = True  # type: ignore[attr-defined]
                self.exit_codes[code] += 1
        return alive

    def signal(self, runner: Runner, signum: signal.Signals) -> None:
        try:
            runner.process.send_signal(signum)
        except ProcessLookupError:
            return
        runner.signalled = signum.name
        self.signals[signum.name] += 1

    def stop(self) -> None:
        for runner in self.live():
            self.signal(runner, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for runner in self.runners:
            try:
                runner.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                runner.process.kill()
                runner.process.wait(timeout=10)
        self.live()

    def outcomes(self) -> Counter[str]:
        """How the messages ended, from every runner's `outcome <what> job=<id>` log lines."""
        counts: Counter[str] = Counter()
        for runner in self.runners:
            counts.update(m.group(1) for m in OUTCOME_LINE.finditer(runner.log.read_text(errors="replace")))
        return counts


def status_states(client: redis.Redis, ids: list[str]) -> dict[str, str | None]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"status:{job_id}", "state")
        values = pipe.execute()
    return {job_id: value.decode() if value else None for job_id, value in zip(ids, values, strict=True)}


def done_counts(client: redis.Redis) -> Counter[str]:
    """How many times each job reached `done` (one `job <id>: done in` line in the `logging` list per time)."""
    counts: Counter[str] = Counter()
    for line in client.lrange("logging", 0, -1):
        found = DONE_LINE.search(line.decode(errors="replace"))
        if found:
            counts[found.group(1)] += 1
    return counts


def output_objects(services: LocalServices) -> list[str]:
    return [o.object_name for o in s3_of(services).list_objects(OUTPUT_BUCKET, recursive=True)]


def check_end_state(
    report: Report, client: redis.Redis, services: LocalServices, ids: list[str], allow_dead: bool
) -> dict[str, Any]:
    """The properties every fleet run must end with: nothing lost, stuck or duplicated, failures explained."""
    queued, processing = client.llen(QUEUE), client.llen(processing_key(QUEUE))
    leases = client.zcard(leases_key(QUEUE))
    dead = [json.loads(entry) for entry in client.lrange(dead_key(QUEUE), 0, -1)]
    dead_ids = {entry.get("job_id") for entry in dead}
    states = status_states(client, ids)
    done = {job_id for job_id, state in states.items() if state == "done"}
    lost = sorted(set(ids) - done - dead_ids)
    objects = output_objects(services)
    expected = {f"{job_id}-{stem}.mp3" for job_id in ids for stem in STEMS}
    per_job = Counter(name.rsplit("-", 1)[0] for name in objects)
    complete = {job_id for job_id in done if per_job[job_id] == len(STEMS)}
    extra = sorted(set(objects) - expected)
    counts = done_counts(client)
    reruns = {job_id: n for job_id, n in counts.items() if n > 1}
    report.check("0 lost (every message done or dead-lettered)", not lost, f"{len(lost)} lost {lost[:5]}")
    report.check(
        "0 stuck (queue, processing list and leases empty)",
        queued == processing == leases == 0,
        f"queue {queued}, processing {processing}, leases {leases}",
    )
    report.check("every done job has its 4 stems", complete == done, f"{len(complete)}/{len(done)}")
    report.check(
        "0 duplicated outputs (no object beyond the 4 stems of each job)",
        not extra,
        f"{len(objects)} objects, {len(extra)} extra {extra[:3]}",
    )
    explained = all(entry.get("error") and entry.get("error_type") for entry in dead)
    report.check(
        "every failure dead-lettered with its reason",
        explained and (allow_dead or not dead),
        f"{len(dead)} dead-lettered: {Counter(entry.get('error_type') for entry in dead)}; "
        f"{[entry.get('error', '')[:90] for entry in dead[:3]]}",
    )
    return {
        "done": len(done),
        "dead": len(dead),
        "lost": len(lost),
        "objects": len(objects),
        "extra_objects": len(extra),
        "reruns": reruns,
        "done_once": sum(1 for n in counts.values() if n == 1),
    }
