"""Shared fixtures: a real redis-server and a real SeaweedFS S3 on loopback, a tiny generated model repo,
settings pointing at them, and a local HTTP receiver for callbacks.

A test that needs a service and finds none fails loudly (ServiceUnavailable); nothing is skipped.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from support import settings_env

from function.clients import s3_client
from function.config import Settings, load_settings
from function.core import Worker
from workbench import sample_song
from workbench.local_services import LocalServices
from workbench.model_repo import PRETRAINED_NAMES, TINY_KWARGS, write_model, write_standin


@pytest.fixture(scope="session", autouse=True)
def child_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every child process (job runners, emulated pods) keeps its temp files under pytest's own temp root, so a
    runner a test SIGKILLs mid-job (its per-job temp dir never removed, as in a real pod whose emptyDir goes
    with it) leaves nothing in the system temp dir; pytest rotates its root."""
    path = tmp_path_factory.mktemp("child-tmp")
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous


CPU_KINDS = {"native-bf16": "yes", "no-bf16": "no"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `both_cpus` runs twice: as on a CPU with native bf16 and as on one without
    (CPU_NATIVE_BF16=yes|no), whatever this machine's CPU is, since `DEMUCS_PRECISION=auto` differs between them."""
    if metafunc.definition.get_closest_marker("both_cpus") is not None:
        metafunc.fixturenames.append("cpu_kind")
        metafunc.parametrize("cpu_kind", list(CPU_KINDS), ids=list(CPU_KINDS))


@pytest.fixture(autouse=True)
def as_cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sets CPU_NATIVE_BF16 for a `both_cpus` test before any of its settings are read (autouse runs first)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "cpu_kind" in callspec.params:
        monkeypatch.setenv("CPU_NATIVE_BF16", CPU_KINDS[callspec.params["cpu_kind"]])


@pytest.fixture(scope="session")
def services() -> Iterator[LocalServices]:
    with LocalServices() as running:
        yield running


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("demucs-repo")
    write_model(repo, "tiny")
    write_model(repo, "tiny2", seed=1, signature="7e57a12d", kwargs=TINY_KWARGS)
    write_model(repo, "micro")  # tiny without attention: for tests about faults, not about separation
    return repo


@pytest.fixture(scope="session")
def standin_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stand-in under every pretrained name the demucs CLI accepts (workbench.model_repo.write_standin)."""
    repo = tmp_path_factory.mktemp("pretrained-standins")
    for name in PRETRAINED_NAMES:
        write_standin(repo, name)
    return repo


@pytest.fixture
def redis_client(services: LocalServices) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.env()["REDIS_URL"])
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def make_settings(services: LocalServices, model_repo: Path, tmp_path: Path):
    """Settings for the local services; each test gets its own buckets so tests never see each other's objects."""
    suffix = uuid.uuid4().hex[:8]

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "redis_url": services.env()["REDIS_URL"],
            "minio_endpoint": services.env()["MINIO_ENDPOINT"],
            "minio_access_key": services.env()["MINIO_ACCESS_KEY"],
            "minio_secret_key": services.env()["MINIO_SECRET_KEY"],
            "input_bucket": f"in-{suffix}",
            "output_bucket": f"out-{suffix}",
            "demucs_model": "tiny",
            "demucs_repo": str(model_repo),
            "demucs_device": "cpu",
            "demucs_threads": 2,
            "demucs_shifts": 0,
            "redis_timeout_s": 3,
            "s3_timeout_s": 5,
            "callback_timeout_s": 3,
        }
        values.update(overrides)
        return load_settings(**values)

    yield build
    client = s3_client(build())
    for bucket in (f"in-{suffix}", f"out-{suffix}"):
        if client.bucket_exists(bucket):  # frees the bucket's SeaweedFS volumes for later tests
            client.remove_bucket(bucket)


@pytest.fixture
def settings(make_settings, redis_client) -> Settings:
    return make_settings()


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test's settings as environment variables, which is where the CLIs and the HTTP adapter read them."""
    values = {**settings_env(settings), "CALLBACK_TIMEOUT_S": "30"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def worker(settings: Settings) -> Worker:
    return Worker(settings)


@pytest.fixture(scope="session")
def song() -> bytes:
    """A 3 s generated stereo MP3."""
    return sample_song.song_mp3(seconds=3.0)


@pytest.fixture
def upload(settings: Settings):
    """Put bytes into the input bucket under the key the worker reads for `job_id`."""
    client = s3_client(settings)
    if not client.bucket_exists(settings.input_bucket):
        client.make_bucket(settings.input_bucket)

    def put(job_id: str, data: bytes, key: str | None = None) -> str:
        name = key or settings.input_key.format(id=job_id)
        client.put_object(settings.input_bucket, name, io.BytesIO(data), len(data))
        return name

    return put


@pytest.fixture
def s3(settings: Settings):
    return s3_client(settings)


@pytest.fixture
def tier_bucket(s3) -> Iterator[str]:
    """A bucket of a REST tier's own (named in its messages, not INPUT_BUCKET), emptied and removed afterwards."""
    name = f"tier-{uuid.uuid4().hex[:8]}"
    yield name
    if s3.bucket_exists(name):
        for item in s3.list_objects(name, recursive=True):
            s3.remove_object(name, item.object_name)
        s3.remove_bucket(name)


@dataclass
class Receiver:
    """A local HTTP server recording every request. It answers with `script` in order (the last answer
    repeats); setting `status` makes every answer that status."""

    url: str = ""
    port: int = 0
    requests: list[dict] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(200, {})])

    @property
    def status(self) -> int:
        return self.script[0][0]

    @status.setter
    def status(self, value: int) -> None:
        self.script = [(value, {})]


def start_receiver(state: Receiver) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            status, headers = state.script[min(len(state.requests), len(state.script) - 1)]
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body, "json": parsed})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    state.url = f"http://127.0.0.1:{state.port}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def make_receiver() -> Iterator[Callable[[], Receiver]]:
    """Start as many local receivers as a test needs; all are stopped after it."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start() -> Receiver:
        state = Receiver()
        servers.append(start_receiver(state))
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(make_receiver) -> Receiver:
    return make_receiver()
