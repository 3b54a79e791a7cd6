"""`python -m workbench.stack`: Redis and S3 on loopback until Ctrl-C or SIGTERM, with the export lines the docs
use; the servers answer at the printed addresses and are gone after the stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis
from minio import Minio
from support import REPO_ROOT


def exports(lines: list[str]) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))
    return {name: value.strip("'") for name, value in pairs}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_stack_serves_until_it_is_stopped(tmp_path, signum):
    env_file = tmp_path / "stack.env"
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench.stack", "--env-file", str(env_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=tmp_path,
    )
    try:
        lines = [process.stdout.readline().strip() for _ in range(4)]
        env = exports(lines)
        assert set(env) == {"REDIS_URL", "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}, lines
        assert exports(env_file.read_text().splitlines()) == env
        assert env["REDIS_URL"].startswith("redis://127.0.0.1:") and env["MINIO_ENDPOINT"].startswith("127.0.0.1:")
        client = redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5)
        assert client.ping()
        s3 = Minio(
            env["MINIO_ENDPOINT"], access_key=env["MINIO_ACCESS_KEY"], secret_key=env["MINIO_SECRET_KEY"], secure=False
        )
        s3.make_bucket("stack-check")
        assert "stack-check" in {bucket.name for bucket in s3.list_buckets()}
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0
        assert "stopped Redis and S3" in process.stderr.read()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(env["REDIS_URL"], socket_timeout=2).ping()
        assert not env_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
