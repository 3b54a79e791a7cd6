"""Failing dependencies: Redis and S3 restarted mid-job, S3 answering 503 or slowly, a full temp disk.

These tests own their servers (a persistent Redis, as in production, and their own S3), so restarting them
does not disturb other tests. Each asserts that nothing is lost: the job ends `done` after the outage, or is
requeued / dead-lettered with the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from support import REPO_ROOT, leases_expired, runner_env, wait_for

from function.clients import s3_client
from function.config import Settings, load_settings
from function.runner import Outcome, Runner
from workbench import sample_song
from workbench.local_services import LocalServices, RedisServer


@pytest.fixture(scope="module")
def own_services() -> Iterator[LocalServices]:
    with LocalServices(persistent_redis=True) as running:
        yield running


@pytest.fixture(scope="module")
def long_song() -> bytes:
    return sample_song.song_mp3(seconds=30.0)


@pytest.fixture
def fault_settings(own_services: LocalServices, model_repo: Path) -> Settings:
    client = redis.Redis.from_url(own_services.env()["REDIS_URL"])
    client.flushdb()
    client.close()
    # `micro`: these tests are about the dependencies, so the separation is the cheapest real one (a 30 s song in a
    # few CPU-seconds) and how long a run takes does not depend on how busy the host is.
    return load_settings(
        **{k.lower(): v for k, v in own_services.env().items()},
        demucs_model="micro",
        demucs_repo=str(model_repo),
        demucs_device="cpu",
        demucs_shifts=0,
        demucs_threads=1,
        redis_timeout_s=1,
        s3_timeout_s=2,
        lease_s=3,
        orphan_grace_s=0,
        claim_wait_s=1,
        max_attempts=3,
    )


def put_song(settings: Settings, job_id: str, data: bytes) -> None:
    client = s3_client(settings)
    if not client.bucket_exists(settings.input_bucket):
        client.make_bucket(settings.input_bucket)
    client.put_object(settings.input_bucket, f"{job_id}.mp3", io.BytesIO(data), len(data))


def state(client: redis.Redis, job_id: str) -> str | None:
    value = client.hget(f"status:{job_id}", "state")
    return value.decode() if value else None


def stems_present(settings: Settings, job_id: str) -> list[str]:
    client = s3_client(settings)
    return sorted(o.object_name for o in client.list_objects(settings.output_bucket, prefix=f"{job_id}-"))


def runner_process(settings: Settings, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "function.runner"],
        env=runner_env(settings, **extra),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def rescue(settings: Settings) -> None:
    """What the reaper CronJob and the next pod do: reap (twice: an expired lease is requeued at once, a message
    that never had one is marked, then requeued), then run the job."""
    runner = Runner(settings)
    runner.reap()
    runner.reap()
    result = runner.run_once(wait_s=1)
    assert result.outcome is Outcome.DONE, result


def test_redis_restart_mid_job_loses_nothing(fault_settings, own_services, long_song):
    client = redis.Redis.from_url(fault_settings.redis_connection_url, socket_timeout=2)
    put_song(fault_settings, "rr1", long_song)
    client.rpush("toWorker", "rr1")
    process = runner_process(fault_settings)
    wait_for(lambda: state(client, "rr1") == "separating", 60, "separation to start")
    own_services.redis.stop()
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 1, output  # infrastructure failed; the message must still be safe
    own_services.redis.start()
    assert client.lrange("toWorker:processing", 0, -1) == [b"rr1"]  # survived the restart (append-only file)
    wait_for(lambda: leases_expired(client), 10, "the lease to expire")
    rescue(fault_settings)
    assert state(client, "rr1") == "done" and client.hget("status:rr1", "attempts") == b"2"
    assert len(stems_present(fault_settings, "rr1")) == 4
    assert client.llen("toWorker") == client.llen("toWorker:processing") == client.llen("toWorker:dead") == 0


def test_redis_without_persistence_loses_the_list_and_fences_the_running_job(
    fault_settings, own_services, long_song, tmp_path
):
    """What Redis promises without an append-only file: a restart loses everything in it, the queue included.
    The runner in the middle of a job finds its lease gone and stops: no status written into the empty Redis."""
    lossy = RedisServer(tmp_path, persistent=False).start()
    try:
        settings = fault_settings.model_copy(update={"redis_url": SecretStr(lossy.url)})
        client = redis.Redis.from_url(lossy.url)
        put_song(settings, "np1", long_song)
        client.rpush("toWorker", "np1", "np2")
        results = []
        thread = threading.Thread(target=lambda: results.append(Runner(settings).run_once(wait_s=1)))
        thread.start()
        wait_for(lambda: state(client, "np1") == "separating", 60, "separation to start")
        lossy.stop()
        lossy.start()
        thread.join(timeout=120)
        assert [result.outcome for result in results] == [Outcome.LOST]
        assert client.llen("toWorker") == 0  # np2 was never run: the list itself is lost
        assert client.llen("toWorker:processing") == 0 and client.zcard("toWorker:leases") == 0
        assert not client.exists("status:np1", "status:np2")
    finally:
        lossy.stop()


def test_s3_restart_mid_job_requeues_then_completes(fault_settings, own_services, long_song):
    client = redis.Redis.from_url(fault_settings.redis_connection_url)
    put_song(fault_settings, "s3r", long_song)
    client.rpush("toWorker", "s3r")
    process = runner_process(fault_settings)
    wait_for(lambda: state(client, "s3r") == "separating", 60, "separation to start")
    own_services.s3.stop()
    output = process.communicate(timeout=120)[0].decode()
    own_services.s3.start()
    assert process.returncode == 1, output
    assert client.lrange("toWorker", 0, -1) == [b"s3r"]  # requeued at the head, not lost
    record = {k.decode(): v.decode() for k, v in client.hgetall("status:s3r").items()}
    assert record["state"] == "failed" and record["retryable"] == "1" and "object store unavailable" in record["error"]
    rescue(fault_settings)
    assert state(client, "s3r") == "done" and client.hget("status:s3r", "attempts") == b"2"
    assert len(stems_present(fault_settings, "s3r")) == 4


def test_job_started_while_s3_is_still_starting_completes(fault_settings, own_services, song):
    """Right after a restart SeaweedFS refuses connections, then answers object reads with 500 ("volume not
    found") for seconds and holds the first writes: the worker's retries ride that out. S3_TIMEOUT_S is the
    default here, since a held write completes once the store is up."""
    client = redis.Redis.from_url(fault_settings.redis_connection_url)
    put_song(fault_settings, "s3boot", song)
    client.rpush("toWorker", "s3boot")
    settings = fault_settings.model_copy(update={"s3_timeout_s": 30.0})
    assert own_services.s3 is not None
    own_services.s3.stop()
    own_services.s3.start(wait=False)  # the job starts while the store is still coming up
    try:
        result = Runner(settings).run_once(wait_s=1)
    finally:
        own_services.s3.wait_ready()
    assert result.outcome is Outcome.DONE, result
    assert state(client, "s3boot") == "done" and len(stems_present(fault_settings, "s3boot")) == 4


def test_s3_down_for_good_ends_dead_lettered_with_the_reason(fault_settings, own_services, song):
    client = redis.Redis.from_url(fault_settings.redis_connection_url)
    put_song(fault_settings, "s3gone", song)
    client.rpush("toWorker", "s3gone")
    own_services.s3.stop()
    try:
        runner = Runner(fault_settings)
        outcomes = [runner.run_once(wait_s=1).outcome for _ in range(3)]
    finally:
        own_services.s3.start()
    assert outcomes == [Outcome.REQUEUED, Outcome.REQUEUED, Outcome.DEAD]
    (entry,) = [json.loads(e) for e in client.lrange("toWorker:dead", 0, -1)]
    assert entry["job_id"] == "s3gone" and entry["attempts"] == 3 and "object store unavailable" in entry["error"]
    assert state(client, "s3gone") == "failed" and client.hget("status:s3gone", "retryable") == b"0"


def file_size_limit(limit_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit then fails with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


# 50 kB: the download of the ~73 kB song fails; 300 kB: the download fits, the ~1 MB decoded mix written to the
# work dir does not (RLIMIT_FSIZE bounds each file, and each raw stem is as large as the mix, so the mix is the
# first file to hit it).
@pytest.mark.parametrize(
    ("limit_bytes", "reason"),
    [(50_000, "cannot write the input to the temp dir"), (300_000, "cannot write the decoded input to the work dir")],
)
def test_full_temp_disk_requeues_with_a_clear_reason(fault_settings, song, limit_bytes, reason):
    client = redis.Redis.from_url(fault_settings.redis_connection_url)
    put_song(fault_settings, "disk", song)
    client.rpush("toWorker", "disk")
    process = subprocess.Popen(
        [sys.executable, "-m", "function.runner"],
        env=runner_env(fault_settings),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=file_size_limit(limit_bytes),
    )
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 1, output
    assert client.lrange("toWorker", 0, -1) == [b"disk"]
    error = client.hget("status:disk", "error").decode()
    assert reason in error and client.hget("status:disk", "retryable") == b"1"
    rescue(fault_settings)
    assert state(client, "disk") == "done"


class FlakyProxy:
    """A TCP proxy in front of S3 that answers the first `failures` connections with 503, or delays each
    connection by `delay_s`, then pipes bytes through unchanged (so S3 signatures stay valid)."""

    def __init__(self, upstream: str, failures: int = 0, delay_s: float = 0.0) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.failures = failures
        self.delay_s = delay_s
        self.refused = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            return
        time.sleep(self.delay_s)
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            conn.close()
            return

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    def close(self) -> None:
        self._stop.set()
        self.server.close()


def test_s3_answering_503_is_retried_and_the_job_completes(fault_settings, song):
    put_song(fault_settings, "flaky", song)
    proxy = FlakyProxy(fault_settings.s3_endpoint, failures=2)
    try:
        settings = fault_settings.model_copy(update={"minio_endpoint": proxy.endpoint})
        client = redis.Redis.from_url(settings.redis_connection_url)
        client.rpush("toWorker", "flaky")
        assert Runner(settings).run_once(wait_s=1).outcome is Outcome.DONE
    finally:
        proxy.close()
    assert proxy.refused == 2
    assert state(client, "flaky") == "done" and len(stems_present(fault_settings, "flaky")) == 4


def test_slow_s3_times_out_and_is_requeued(fault_settings, song):
    put_song(fault_settings, "slow", song)
    proxy = FlakyProxy(fault_settings.s3_endpoint, delay_s=3.0)
    try:
        settings = fault_settings.model_copy(update={"minio_endpoint": proxy.endpoint, "s3_timeout_s": 0.5})
        client = redis.Redis.from_url(settings.redis_connection_url)
        client.rpush("toWorker", "slow")
        started = time.monotonic()
        result = Runner(settings).run_once(wait_s=1)
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert result.outcome is Outcome.REQUEUED and "object store unavailable" in (result.error or "")
    assert elapsed < 60  # bounded: every call has a timeout, nothing hangs
    assert client.lrange("toWorker", 0, -1) == [b"slow"]
