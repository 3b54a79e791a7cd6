"""The functions-framework adapter, through functions-framework's own app and test client, and once as the real
`functions-framework` server process: both CloudEvent HTTP modes, every error class, busy refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import functions_framework
import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from support import settings_env

from function import core, replay
from function.config import get_settings
from function.messages import EVENT_COMPLETED, EVENT_FAILED, EVENT_REQUESTED
from workbench.local_services import free_port

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "function" / "main.py"


def request_event(data: object, **attributes: str) -> CloudEvent:
    base = {"type": EVENT_REQUESTED, "source": "urn:test", "id": str(uuid.uuid4())}
    return CloudEvent({**base, **attributes}, data)


def worker_env(services, model_repo: Path, settings) -> dict[str, str]:
    """The environment that gives the adapter the same settings as the test's `settings`."""
    return {**settings_env(settings), "CALLBACK_TIMEOUT_S": "30"}


@pytest.fixture
def make_app(services, model_repo, settings, monkeypatch):
    """Build the adapter's app the way `functions-framework --target handle --source function/main.py` does,
    from environment variables (plus `overrides`); process-wide caches are reset before and after."""
    saved_path = list(sys.path)

    def reset() -> None:
        get_settings.cache_clear()
        core._default_worker = None

    def build(**overrides: str):
        env = {**worker_env(services, model_repo, settings), **overrides}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # create_app writes these two; monkeypatch restores them afterwards.
        monkeypatch.setenv("FUNCTION_TARGET", "handle")
        monkeypatch.setenv("FUNCTION_SIGNATURE_TYPE", "http")
        reset()
        return functions_framework.create_app(target="handle", source=str(MAIN))

    yield build
    reset()
    sys.path[:] = saved_path
    sys.modules.pop("main", None)


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def post_binary(client, event: CloudEvent):
    headers, body = to_binary(event)
    return client.post("/", headers=headers, data=body)


def post_structured(client, event: CloudEvent):
    headers, body = to_structured(event)
    return client.post("/", headers=headers, data=body)


def assert_reply(response, event_type: str, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    for name in ("ce-id", "ce-source", "ce-specversion"):
        assert response.headers.get(name), f"reply lacks {name}"
    assert response.headers["ce-type"] == event_type
    assert response.headers["content-type"].startswith("application/json")
    return json.loads(response.get_data())


def test_binary_mode_bare_id_separates_and_replies_with_a_completed_event(client, upload, song, s3, redis_client):
    upload("ffbin1", song)
    event = request_event(b"ffbin1", datacontenttype="text/plain")
    response = post_binary(client, event)
    body = assert_reply(response, EVENT_COMPLETED, 200)
    assert body["state"] == "done" and body["id"] == "ffbin1"
    assert response.headers["ce-subject"] == "ffbin1"
    assert response.headers["ce-causationid"] == event["id"]
    assert set(body["stems"]) == {"bass", "drums", "vocals", "other"}
    for where in body["stems"].values():
        assert s3.stat_object(where["bucket"], where["key"]).size > 0
    assert redis_client.hget("status:ffbin1", "state") == b"done"


def test_structured_mode_with_job_object(client, upload, song, s3):
    upload("ffstruct", song)
    event = request_event({"hash": "ffstruct", "stems": ["vocals"], "format": "wav"})
    body = assert_reply(post_structured(client, event), EVENT_COMPLETED, 200)
    assert list(body["stems"]) == ["vocals"]
    key = body["stems"]["vocals"]["key"]
    assert key == "ffstruct-vocals.wav"
    assert s3.get_object(body["stems"]["vocals"]["bucket"], key).read(4) == b"RIFF"


@pytest.mark.parametrize(
    ("headers", "body", "named"),
    [
        ({"content-type": "application/json"}, b'{"songhash": "abc"}', "specversion"),
        ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "id": "1", "type": "t"', "json"),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "1", "type": "t", "data": "abc"}',
            "source",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "", "content-type": "text/plain"},
            b"abc",
            "type",
        ),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "a\\nb", "source": "s", "type": "t", "data": "abc"}',
            "'id'",
        ),
    ],
    ids=["plain-json", "broken-structured", "no-source", "empty-type", "newline-id"],
)
def test_malformed_cloudevent_is_400_naming_the_problem(client, redis_client, headers, body, named):
    response = client.post("/", headers=headers, data=body)
    reply = assert_reply(response, EVENT_FAILED, 400)
    assert reply["type"] == "InvalidJob" and reply["status"] == 400 and reply["permanent"] is True
    assert named in reply["error"]
    assert redis_client.keys("status:*") == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"id": "../../etc/passwd"}, "job id"),
        ({"message": "Hello World"}, "no id"),
        ({"songhash": "ok1", "model": "htdemucs_ft"}, "not allowed"),
        ({"songhash": "ok1", "format": "ogg"}, "format"),
    ],
    ids=["bad-id", "no-id", "model", "format"],
)
def test_invalid_job_data_is_400(client, data, named):
    event = request_event(data)
    reply = assert_reply(post_binary(client, event), EVENT_FAILED, 400)
    assert named in reply["error"] and reply["event_id"] == event["id"]


def test_oversize_request_is_400(client):
    event = request_event({"songhash": "big", "padding": "x" * 70_000})
    reply = assert_reply(post_structured(client, event), EVENT_FAILED, 400)
    assert "MAX_MESSAGE_BYTES=65536" in reply["error"]


def test_missing_input_is_422_and_recorded(client, redis_client):
    reply = assert_reply(post_binary(client, request_event("nosong")), EVENT_FAILED, 422)
    assert reply["type"] == "UnprocessableInput" and "not found" in reply["error"]
    assert reply["id"] == "nosong" and reply["retryable"] is False
    assert redis_client.hget("status:nosong", "state") == b"failed"


def test_undecodable_input_is_422(client, upload):
    upload("junkin", b"not audio at all" * 64)
    reply = assert_reply(post_binary(client, request_event({"songhash": "junkin"})), EVENT_FAILED, 422)
    assert "not decodable audio" in reply["error"]


def test_unreachable_object_store_is_503(make_app, redis_client):
    client = make_app(MINIO_ENDPOINT=f"127.0.0.1:{free_port()}", S3_TIMEOUT_S="2").test_client()
    reply = assert_reply(post_binary(client, request_event("s3down")), EVENT_FAILED, 503)
    assert reply["type"] == "Transient" and reply["retryable"] is True
    assert "object store unavailable" in reply["error"]


def test_unreachable_redis_is_503(make_app):
    client = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_TIMEOUT_S="1").test_client()
    reply = assert_reply(post_binary(client, request_event("redisdown")), EVENT_FAILED, 503)
    assert reply["type"] == "Transient" and "status" in reply["error"]


def test_health_and_method(client):
    for path in ("/health/liveness", "/health/readiness", "/"):
        response = client.get(path)
        assert response.status_code == 200 and response.get_json()["status"] == "ok"
    assert client.put("/", data=b"x").status_code == 405


class HeldCallback:
    """A callback receiver that holds each request open until released, so a job stays in progress."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                held.arrived.set()
                held.release.wait(120)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_callback() -> Iterator[HeldCallback]:
    held = HeldCallback()
    yield held
    held.close()


def test_second_request_while_separating_is_refused_with_503_retry_after(make_app, upload, song, held_callback):
    app = make_app(CALLBACK_ALLOW_HOSTS="127.0.0.1")
    upload("busy1", song)
    upload("busy2", song)
    first: dict = {}

    def run_first() -> None:
        event = request_event({"id": "busy1", "callback": held_callback.url})
        first["response"] = post_binary(app.test_client(), event)

    thread = threading.Thread(target=run_first)
    thread.start()
    # The callback is sent at the end of the job, while it still holds the process's one separation slot.
    deadline = time.monotonic() + 240
    while not held_callback.arrived.wait(0.2):
        assert thread.is_alive(), f"the first job ended without calling back: {first}"
        assert time.monotonic() < deadline, "the first job never reached its callback"
    second = post_binary(app.test_client(), request_event("busy2"))
    reply = assert_reply(second, EVENT_FAILED, 503)
    assert second.headers["Retry-After"].isdigit()
    assert reply["type"] == "Busy" and reply["retryable"] is True and reply["id"] == "busy2"
    assert app.test_client().get("/health/readiness").get_json()["busy"] is True
    held_callback.release.set()
    thread.join(240)
    assert_reply(first["response"], EVENT_COMPLETED, 200)
    # Once the slot is free the refused request goes through.
    assert_reply(post_binary(app.test_client(), request_event("busy2")), EVENT_COMPLETED, 200)


@pytest.mark.slow
def test_real_functions_framework_server(services, model_repo, settings, upload, song, s3, tmp_path, capsys):
    port = free_port()
    env = {**os.environ, **worker_env(services, model_repo, settings), "SAVE_EVENTS_DIR": str(tmp_path / "events")}
    command = [
        str(Path(sys.executable).parent / "functions-framework"),
        "--target",
        "handle",
        "--source",
        "function/main.py",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if requests.get(url + "health/readiness", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "server did not answer its readiness probe"
            time.sleep(0.2)
        upload("realff", song)
        event = request_event({"songhash": "realff"})
        headers, body = to_binary(event)
        response = requests.post(url, headers=headers, data=body, timeout=300)
        assert response.status_code == 200, response.text
        assert response.headers["ce-type"] == EVENT_COMPLETED and response.headers["ce-specversion"] == "1.0"
        result = response.json()
        assert result["state"] == "done" and len(result["stems"]) == 4
        for where in result["stems"].values():
            assert s3.stat_object(where["bucket"], where["key"]).size > 0
        saved_path = tmp_path / "events" / f"{event['id']}.json"
        saved = json.loads(saved_path.read_text())
        assert saved["id"] == event["id"] and saved["data"] == {"songhash": "realff"}
        # The saved event, replayed to the server in structured mode, runs again.
        capsys.readouterr()
        assert replay.main([str(saved_path), "--url", url, "--mode", "structured"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"HTTP 200 {EVENT_COMPLETED}") and '"state": "done"' in out
        bad = requests.post(url, headers={"content-type": "application/json"}, data=b"{}", timeout=30)
        assert bad.status_code == 400 and bad.headers["ce-type"] == EVENT_FAILED
    finally:
        server.terminate()
        server.wait(30)
        log.close()
