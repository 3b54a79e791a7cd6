"""Soak: 50 tiny-model jobs through 2 concurrent job runners while random faults hit them.

Faults: runners killed with SIGKILL (as an OOM kill) or stopped with SIGTERM (as an eviction), and the S3
server restarted once. A supervisor keeps two runners alive, as KEDA would. At the end every job must be done
or dead-lettered, none lost, none left in the processing list; duplicates (a job finished twice because its
runner died between finishing and acknowledging) are counted and printed.
"""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from minio.commonconfig import CopySource
from support import REPO_ROOT, runner_env

from function.clients import s3_client
from function.config import load_settings
from workbench import sample_song
from workbench.local_services import LocalServices

JOBS = 50
DEADLINE_S = 420


@pytest.fixture(scope="module")
def soak_services() -> Iterator[LocalServices]:
    with LocalServices() as running:
        yield running


@pytest.mark.slow
@pytest.mark.heavy
def test_soak_50_jobs_two_runners_random_faults(soak_services, model_repo):
    settings = load_settings(
        **{k.lower(): v for k, v in soak_services.env().items()},
        demucs_model="tiny",
        demucs_repo=str(model_repo),
        demucs_device="cpu",
        demucs_shifts=0,
        demucs_threads=1,
        redis_timeout_s=2,
        s3_timeout_s=3,
        lease_s=2,
        orphan_grace_s=0.5,
        claim_wait_s=1,
        max_attempts=6,
    )
    client = redis.Redis.from_url(settings.redis_connection_url)
    s3 = s3_client(settings)
    s3.make_bucket(settings.input_bucket)
    song = sample_song.song_mp3(seconds=1.5)
    s3.put_object(settings.input_bucket, "seed.mp3", io.BytesIO(song), len(song))
    ids = [f"soak{n:02d}" for n in range(JOBS)]
    for job_id in ids:
        s3.copy_object(settings.input_bucket, f"{job_id}.mp3", CopySource(settings.input_bucket, "seed.mp3"))
    client.rpush("toWorker", *ids)

    # The copies are one song: with the result cache on, 49 of the 50 jobs would be hits, not separations.
    env = runner_env(settings, MAX_MESSAGES="1000", LOG_LEVEL="WARNING", RESULT_CACHE="off")
    rng = random.Random(1234)
    runners: list[subprocess.Popen] = []
    faults: Counter[str] = Counter()
    s3_restarted = False

    def terminal() -> tuple[set[str], set[str]]:
        done = {
            i
            for i in ids
            if client.hget(f"status:{i}", "state") == b"done"
            and client.lpos("toWorker", i) is None
            and client.lpos("toWorker:processing", i) is None
        }
        dead = {json.loads(e)["job_id"] for e in client.lrange("toWorker:dead", 0, -1)}
        return done, dead

    deadline = time.monotonic() + DEADLINE_S
    next_fault = time.monotonic() + 4
    try:
        while time.monotonic() < deadline:
            runners = [r for r in runners if r.poll() is None]
            while len(runners) < 2:
                runners.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "function.runner"],
                        env=env,
                        cwd=REPO_ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            done, dead = terminal()
            if len(done | dead) == JOBS and client.llen("toWorker:processing") == 0:
                break
            if time.monotonic() >= next_fault and len(done) < JOBS - 5:
                action = rng.choice(["kill", "kill", "term", "s3"] if not s3_restarted else ["kill", "term"])
                if action == "s3":
                    soak_services.s3.stop()
                    time.sleep(1)
                    soak_services.s3.start()
                    s3_restarted = True
                else:
                    victim = rng.choice(runners)
                    victim.send_signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
                faults[action] += 1
                next_fault = time.monotonic() + rng.uniform(2, 5)
            time.sleep(0.2)
    finally:
        for runner in runners:
            runner.kill()
            runner.wait(timeout=10)

    done, dead = terminal()
    lost = set(ids) - done - dead
    finished = Counter(
        line.decode().split("job ", 1)[1].split(":", 1)[0]
        for line in client.lrange("logging", 0, -1)
        if b": done in " in line
    )
    duplicates = sum(count - 1 for count in finished.values() if count > 1)
    print(
        f"\nsoak: jobs={JOBS} done={len(done)} dead={len(dead)} lost={len(lost)} duplicates={duplicates} "
        f"faults={dict(faults)}"
    )
    assert not lost, f"lost jobs: {sorted(lost)}"
    assert client.llen("toWorker:processing") == 0 and client.llen("toWorker") == 0
    assert sum(faults.values()) >= 3
    for job_id in done:
        names = {o.object_name for o in s3.list_objects(settings.output_bucket, prefix=f"{job_id}-")}
        assert names == {f"{job_id}-{stem}.mp3" for stem in ("bass", "drums", "other", "vocals")}
    for entry in client.lrange("toWorker:dead", 0, -1):
        assert json.loads(entry)["error"]
