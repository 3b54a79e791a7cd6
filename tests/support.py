"""Helpers shared by the tests that run the job runner as a real process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from function.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

PASSED_THROUGH = (
    "redis_timeout_s",
    "s3_timeout_s",
    "lease_s",
    "orphan_grace_s",
    "claim_wait_s",
    "max_attempts",
    "demucs_model",
    "demucs_device",
    "demucs_shifts",
    "demucs_threads",
    "input_bucket",
    "output_bucket",
    "callback_timeout_s",
)


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the environment variables the worker reads them from."""
    env = {name.upper(): str(getattr(settings, name)) for name in PASSED_THROUGH}
    env.update(
        REDIS_URL=settings.redis_connection_url,
        MINIO_ENDPOINT=settings.s3_endpoint,
        MINIO_ACCESS_KEY=settings.minio_access_key.get_secret_value(),
        MINIO_SECRET_KEY=settings.minio_secret_key.get_secret_value(),
        DEMUCS_REPO=str(settings.demucs_repo),
    )
    return env


def runner_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes `python -m function.runner` (or any child process) use `settings`."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **settings_env(settings), **extra}


# The cheapest real separation for a runner in a child process: the tiny model, no shifts, one thread.
TINY_RUNNER = {"DEMUCS_MODEL": "tiny", "DEMUCS_DEVICE": "cpu", "DEMUCS_SHIFTS": "0", "DEMUCS_THREADS": "1"}


def tiny_runner_env(settings: Settings, **extra: str) -> dict[str, str]:
    """`runner_env` with the tiny model's settings (TINY_RUNNER); `extra` overrides any of them."""
    return runner_env(settings, **{**TINY_RUNNER, **extra})


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll `predicate` until it returns something truthy; a Redis error counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except redis.RedisError:
            value = None  # type: ignore[assignment]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def leases_expired(client: redis.Redis, queue_key: str = "toWorker") -> bool:
    """Whether every lease on `queue_key` is past its deadline (Redis time), so the next reap requeues them."""
    seconds, micros = client.time()
    return not client.zrangebyscore(f"{queue_key}:leases", seconds + micros / 1e6, "+inf")
