"""Chaos: the ScaledJob emulator runs 20 real jobs through `python -m function.runner` pods against the real
Redis and S3 and the tiny model, while this test SIGKILLs pods mid-job, SIGTERMs others, and kills the pod
of one poison message every time it runs. In the end every message is done or dead-lettered with a reason,
nothing is lost or left in the processing list, and every done job's stems are all there and decodable.

How the test finds its targets: each pod has `POD_NAME` in its environment and logs `claimed job <id>
(attempt k/n)` to `<workdir>/pods/<POD_NAME>/log`; it strikes once that job's status hash shows the same
attempt in `downloading` or `separating`.
"""

from __future__ import annotations

import io
import json
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import soundfile

from function.clients import s3_client
from function.keys import dead_key, processing_key
from function.storage import ObjectStore
from workbench import sample_song

ROOT = Path(__file__).resolve().parent.parent
JOBS = 20
MAX_ATTEMPTS = 3
KILLS = 4  # normal jobs SIGKILLed once each, mid-job
TERMS = 3  # normal jobs SIGTERMed once each, mid-job
POISON = "poison"
CLAIMED = re.compile(r"claimed job (\S+) \(attempt (\d+)/")
DEADLINE_S = 360

pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEADLINE_S + 120)]


@dataclass
class Chaos:
    """What the test did to which pod."""

    rng: random.Random
    seen_jobs: set[str] = field(default_factory=set)
    hit_jobs: set[str] = field(default_factory=set)
    hit_pods: set[str] = field(default_factory=set)
    poison_kills: int = 0
    kills: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)

    def choose(self, job_id: str) -> signal.Signals | None:
        """The signal a normal job's pod gets, or None: a coin toss, each job struck at most once, forced
        when the jobs not yet seen are only just enough to fill the quota."""
        if job_id in self.hit_jobs:
            return None
        unseen = JOBS - len(self.seen_jobs)
        self.seen_jobs.add(job_id)
        quota = KILLS + TERMS - len(self.kills) - len(self.terms)
        if quota <= 0 or (self.rng.random() < 0.5 and quota < unseen):
            return None
        return signal.SIGKILL if len(self.kills) < KILLS else signal.SIGTERM


def live_pods(scaler: psutil.Process, workdir: Path) -> list[tuple[psutil.Process, str, Path]]:
    """(process, pod name, log) of every pod the emulator runs now (reaper runs have no POD_NAME)."""
    pods = []
    for child in scaler.children():
        try:
            name = child.environ().get("POD_NAME")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if name:
            pods.append((child, name, workdir / "pods" / name / "log"))
    return pods


def claimed(log: Path) -> tuple[str, int] | None:
    try:
        found = CLAIMED.search(log.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    return (found.group(1), int(found.group(2))) if found else None


def mid_job(redis_client, job_id: str, attempt: int) -> bool:
    record = {k.decode(): v.decode() for k, v in redis_client.hgetall(f"status:{job_id}").items()}
    return record.get("attempts") == str(attempt) and record.get("state") in ("downloading", "separating")


def strike(redis_client, scaler: psutil.Process, workdir: Path, chaos: Chaos) -> None:
    for process, name, log in live_pods(scaler, workdir):
        job = claimed(log)
        if name in chaos.hit_pods or job is None or not mid_job(redis_client, *job):
            continue
        job_id, _ = job
        signum = signal.SIGKILL if job_id == POISON else chaos.choose(job_id)
        chaos.hit_pods.add(name)
        if signum is None:
            continue
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            continue
        if job_id == POISON:
            chaos.poison_kills += 1
        else:
            chaos.hit_jobs.add(job_id)
            (chaos.kills if signum == signal.SIGKILL else chaos.terms).append(job_id)


def test_jobs_survive_killed_and_stopped_pods(settings, redis_client, model_repo, services, tmp_path):
    client = s3_client(settings)
    store = ObjectStore(client)
    store.ensure_bucket(settings.input_bucket)
    store.put_bytes(settings.input_bucket, "song.mp3", sample_song.song_mp3(seconds=2.0), "audio/mpeg")
    ids = [f"chaos{i:02d}" for i in range(JOBS)]
    for job_id in ids:
        store.copy(settings.input_bucket, "song.mp3", f"{job_id}.mp3")
    # The poison song is longer, so its pod is reliably caught mid-separation.
    store.put_bytes(settings.input_bucket, f"{POISON}.mp3", sample_song.song_mp3(seconds=20.0), "audio/mpeg")
    messages = [json.dumps({"id": job_id}) for job_id in ids]
    messages.insert(JOBS // 2, json.dumps({"id": POISON}))
    redis_client.rpush("toWorker", *messages)

    env = {
        **services.env(),
        "INPUT_BUCKET": settings.input_bucket,
        "OUTPUT_BUCKET": settings.output_bucket,
        "DEMUCS_MODEL": "tiny",
        "DEMUCS_REPO": str(model_repo),
        "DEMUCS_DEVICE": "cpu",
        "DEMUCS_THREADS": "1",
        "DEMUCS_SHIFTS": "0",
        "MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "LEASE_S": "4",
        "ORPHAN_GRACE_S": "1",
        "CLAIM_WAIT_S": "1",
        # Every job must really separate, so pods are struck mid-job: the result cache would serve the copies.
        "RESULT_CACHE": "off",
    }
    workdir = tmp_path / "scaler"
    summary_path = tmp_path / "summary.json"
    command = [
        sys.executable,
        "-m",
        "workbench.emulator",
        "--workdir",
        str(workdir),
        "--summary-json",
        str(summary_path),
        "--polling-interval",
        "0.5",
        "--max-replicas",
        "3",
        "--reap-interval",
        "3",
        "--max-seconds",
        str(DEADLINE_S - 30),
        *(f"--env={k}={v}" for k, v in env.items()),
    ]
    output = tmp_path / "scaler.out"
    chaos = Chaos(rng=random.Random(7))
    with output.open("wb") as out:
        runner = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            scaler = psutil.Process(runner.pid)
            deadline = time.monotonic() + DEADLINE_S
            while runner.poll() is None and time.monotonic() < deadline:
                strike(redis_client, scaler, workdir, chaos)
                time.sleep(0.05)
        finally:
            if runner.poll() is None:
                runner.send_signal(signal.SIGTERM)
            code = runner.wait(timeout=90)
    text = output.read_text()
    print(text[-3000:])
    summary = json.loads(summary_path.read_text())
    print(
        f"chaos: {len(chaos.kills)} SIGKILLed {chaos.kills}, {len(chaos.terms)} SIGTERMed {chaos.terms}, "
        f"poison pod killed {chaos.poison_kills} times"
    )

    assert code == 0 and summary["drained"], text[-3000:]
    # Nothing lost: the queue and the processing list are empty ...
    assert redis_client.llen("toWorker") == 0 and redis_client.llen(processing_key("toWorker")) == 0
    # ... and every message is accounted for: the poison one dead-lettered with its reason, the rest done.
    dead = [json.loads(entry) for entry in redis_client.lrange(dead_key("toWorker"), 0, -1)]
    assert [entry["job_id"] for entry in dead] == [POISON], dead
    assert dead[0]["attempts"] == MAX_ATTEMPTS and "crashed the runner 3 times" in dead[0]["error"]
    assert chaos.poison_kills == MAX_ATTEMPTS
    states = {job_id: redis_client.hget(f"status:{job_id}", "state") for job_id in [*ids, POISON]}
    assert states == {**{job_id: b"done" for job_id in ids}, POISON: b"failed"}
    assert redis_client.hget(f"status:{POISON}", "attempts") == str(MAX_ATTEMPTS).encode()  # the runs it had
    # The chaos really happened: pods were killed and stopped mid-job, and their jobs still finished.
    assert len(chaos.kills) == KILLS and len(chaos.terms) == TERMS, chaos
    assert summary["pods_killed"] == KILLS + MAX_ATTEMPTS
    for job_id in ids:
        outputs = json.loads(redis_client.hget(f"status:{job_id}", "outputs"))
        assert set(outputs) == {"bass", "drums", "vocals", "other"}
        for where in outputs.values():
            decoded, rate = soundfile.read(io.BytesIO(client.get_object(where["bucket"], where["key"]).read()))
            assert rate == 44100 and decoded.shape[1] == 2 and decoded.shape[0] > 44100 * 1.5
    print(
        f"counts: {len(ids)} done, {len(dead)} dead-lettered, 0 lost; jobs {summary['jobs']}, "
        f"pods {summary['pods']}, outcomes {summary['outcomes']}"
    )
