"""`python -m function.reaper` (the reaper CronJob's command): requeues a dead runner's message against the real
Redis, exits 1 when Redis is unreachable, and never imports torch or demucs (it must start in well under a
second from the worker's multi-GB image)."""

from __future__ import annotations

import subprocess
import sys

from support import REPO_ROOT, runner_env

from function import keys
from function.queue import WorkQueue


def run_reaper(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "function.reaper"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_reaper_imports_neither_torch_nor_demucs():
    code = (
        "import sys, runpy; sys.argv = ['reaper', '--help'];"
        "import function.reaper;"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'demucs', 'torchaudio', 'numpy'});"
        "print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_reaper_requeues_a_dead_runners_message(settings, redis_client):
    queue = WorkQueue(redis_client, settings.queue_key, lease_s=60)
    redis_client.rpush(settings.queue_key, "orphan")
    claim = queue.claim(0)
    assert claim is not None
    redis_client.zadd(keys.leases_key(settings.queue_key), {claim.token: 1})  # its runner died long ago
    done = run_reaper(runner_env(settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "requeued 1\n"
    assert redis_client.lrange(settings.queue_key, 0, -1) == [b"orphan"]
    assert redis_client.llen(keys.processing_key(settings.queue_key)) == 0
    assert any(b"reaper: requeued 1 message(s)" in line for line in redis_client.lrange(settings.log_key, 0, -1))
    assert run_reaper(runner_env(settings)).stdout == "requeued 0\n"


def test_the_reaper_exits_1_when_redis_is_unreachable(settings):
    done = run_reaper(runner_env(settings, REDIS_URL="redis://127.0.0.1:9/0", REDIS_TIMEOUT_S="0.5"))
    assert done.returncode == 1 and "Redis unavailable" in done.stderr


def test_the_reaper_takes_no_arguments(settings):
    done = subprocess.run(
        [sys.executable, "-m", "function.reaper", "--reap"],
        cwd=REPO_ROOT,
        env=runner_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "usage" in done.stderr
