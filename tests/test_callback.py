"""The webhook: guard, redirects, retries with back-off, Retry-After, signatures; real HTTP servers on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket

import pytest
from conftest import Receiver
from standardwebhooks import Webhook

from function import callback as callback_module
from function.callback import RETRY_AFTER_MAX_S, backoff_s, deliver, retry_after_s
from function.config import Settings, load_settings
from function.core import Worker
from function.errors import ConfigError
from function.messages import Callback, event_from_message

SECRET_KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()


@pytest.fixture
def hook(make_receiver) -> Receiver:
    return make_receiver()


@pytest.fixture
def other_hook(make_receiver) -> Receiver:
    return make_receiver()


def cb_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"callback_allow_hosts": "127.0.0.1", "callback_timeout_s": 3}
    values.update(overrides)
    return load_settings(**values)


class Sleeps(list):
    """Records the back-off waits instead of sleeping (the waits are the behaviour under test)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_loopback_receiver_gets_nothing_unless_allowed(hook: Receiver) -> None:
    outcome = deliver(Callback(hook.url), {"a": 1}, "evt-1", cb_settings(callback_allow_hosts=""))
    assert outcome == callback_module.CallbackOutcome(False, 0, None, "skipped: address 127.0.0.1 is loopback")
    assert hook.requests == []


def test_a_name_resolving_to_loopback_is_refused(hook: Receiver) -> None:
    outcome = deliver(Callback(f"http://localhost:{hook.port}/hook"), {}, "evt-1", cb_settings())
    assert not outcome.delivered and outcome.attempts == 0
    assert outcome.reason.startswith("skipped: address localhost (") and outcome.reason.endswith("is loopback")
    assert hook.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:6379/_INFO"])
def test_bad_scheme_is_skipped(url: str) -> None:
    outcome = deliver(Callback(url), {}, "evt-1", cb_settings())
    assert not outcome.delivered and outcome.attempts == 0
    assert outcome.reason == f"skipped: scheme {url.split(':')[0]!r} is not http or https"


def test_allowed_receiver_gets_the_exact_json(hook: Receiver) -> None:
    outcome = deliver(Callback(hook.url), {"id": "x", "n": [1, 2]}, "evt-7", cb_settings())
    assert outcome == callback_module.CallbackOutcome(True, 1, 200, "delivered")
    (request,) = hook.requests
    assert json.loads(request["body"]) == {"id": "x", "n": [1, 2]}
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["webhook-id"] == "evt-7"
    assert "webhook-signature" not in request["headers"]


def test_redirect_to_loopback_is_not_followed(hook: Receiver, other_hook: Receiver) -> None:
    hook.script = [(302, {"Location": f"http://localhost:{other_hook.port}/steal"})]
    outcome = deliver(Callback(hook.url), {}, "evt-1", cb_settings())
    assert outcome == callback_module.CallbackOutcome(False, 1, 302, "failed: HTTP 302, redirect not followed")
    assert len(hook.requests) == 1 and other_hook.requests == []


def test_retry_on_503_then_success_keeps_the_id(hook: Receiver) -> None:
    hook.script = [(503, {}), (200, {})]
    outcome = deliver(Callback(hook.url), {"k": 1}, "evt-retry", cb_settings())  # real sleep: 0.25-0.5 s
    assert outcome == callback_module.CallbackOutcome(True, 2, 200, "delivered")
    assert [r["headers"]["webhook-id"] for r in hook.requests] == ["evt-retry", "evt-retry"]
    assert hook.requests[0]["body"] == hook.requests[1]["body"]


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for retry, (low, high) in enumerate([(0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0)], start=1):
        waits = {backoff_s(retry) for _ in range(50)}
        assert all(low <= w <= high for w in waits) and len(waits) > 1
    assert all(4.0 <= backoff_s(30) <= 8.0 for _ in range(20))


def test_every_5xx_attempt_is_bounded(hook: Receiver) -> None:
    hook.script = [(500, {})]
    sleeps = Sleeps()
    outcome = deliver(Callback(hook.url), {}, "evt-1", cb_settings(callback_attempts=4), sleep=sleeps)
    assert outcome == callback_module.CallbackOutcome(False, 4, 500, "failed: HTTP 500; gave up after 4 attempts")
    assert len(hook.requests) == 4
    assert len(sleeps) == 3 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0


def test_429_honours_retry_after(hook: Receiver) -> None:
    hook.script = [(429, {"Retry-After": "2"}), (200, {})]
    sleeps = Sleeps()
    outcome = deliver(Callback(hook.url), {}, "evt-1", cb_settings(), sleep=sleeps)
    assert outcome == callback_module.CallbackOutcome(True, 2, 200, "delivered")
    assert sleeps == [2.0]


def test_retry_after_is_capped(hook: Receiver) -> None:
    hook.script = [(503, {"Retry-After": "3600"}), (204, {})]
    sleeps = Sleeps()
    outcome = deliver(Callback(hook.url), {}, "evt-1", cb_settings(callback_total_s=60), sleep=sleeps)
    assert outcome.delivered and outcome.status == 204
    assert sleeps == [RETRY_AFTER_MAX_S]


def test_a_wait_past_the_total_budget_gives_up(hook: Receiver) -> None:
    hook.script = [(429, {"Retry-After": "15"})]
    sleeps = Sleeps()
    outcome = deliver(Callback(hook.url), {}, "evt-1", cb_settings(callback_total_s=5), sleep=sleeps)
    assert outcome == callback_module.CallbackOutcome(
        False, 1, 429, "failed: HTTP 429; a retry in 15.0 s would pass CALLBACK_TOTAL_S"
    )
    assert sleeps == [] and len(hook.requests) == 1


def test_retry_after_forms() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now
    assert retry_after_s("soon") is None and retry_after_s(None) is None and retry_after_s("-3") is None


@pytest.mark.parametrize("status", [400, 401, 404, 410, 413])
def test_4xx_is_final(hook: Receiver, status: int) -> None:
    hook.script = [(status, {})]
    outcome = deliver(Callback(hook.url), {}, "evt-1", cb_settings(), sleep=Sleeps())
    assert outcome == callback_module.CallbackOutcome(False, 1, status, f"failed: HTTP {status}")


def test_connection_errors_are_retried() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    outcome = deliver(Callback(f"http://127.0.0.1:{port}/"), {}, "evt-1", cb_settings(), sleep=sleeps)
    assert not outcome.delivered and outcome.attempts == 3 and outcome.status is None
    assert outcome.reason == "failed: ConnectionError on attempt 3; gave up after 3 attempts"
    assert len(sleeps) == 2


def independent_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_signed_callback_verifies_independently_on_every_attempt(hook: Receiver) -> None:
    hook.script = [(503, {"Retry-After": "0"}), (200, {})]
    outcome = deliver(
        Callback(hook.url),
        {"id": "s1", "state": "done"},
        "evt-signed",
        cb_settings(webhook_secret=SECRET),
        sleep=Sleeps(),
    )
    assert outcome.delivered and outcome.attempts == 2
    for request in hook.requests:
        headers = request["headers"]
        assert headers["webhook-id"] == "evt-signed"
        assert headers["webhook-signature"] == independent_signature(
            SECRET_KEY, "evt-signed", headers["webhook-timestamp"], request["body"]
        )
        assert Webhook(SECRET).verify(request["body"], headers) == {"id": "s1", "state": "done"}
    tampered = hook.requests[0]["body"].replace(b"done", b"fail")
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(tampered, hook.requests[0]["headers"])


def test_unsafe_event_id_becomes_a_stable_header(hook: Receiver) -> None:
    for _ in range(2):
        assert deliver(Callback(hook.url), {}, "id with spaces\r\nX-Evil: 1", cb_settings()).delivered
    ids = [r["headers"]["webhook-id"] for r in hook.requests]
    assert ids[0] == ids[1] and ids[0].startswith("evt_") and len(ids[0]) == 36
    assert "X-Evil" not in hook.requests[0]["headers"]


@pytest.mark.parametrize(
    ("secret", "phrase"),
    [
        ("whsec_not*base64!", "must be 'whsec_' followed by base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 24 bytes"),
    ],
)
def test_bad_webhook_secret_fails_at_start_without_echoing_it(secret: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET") as caught:
        load_settings(webhook_secret=secret)
    assert phrase in str(caught.value) and secret not in str(caught.value)


def test_credentials_in_a_refused_url_are_not_in_the_reason(hook: Receiver) -> None:
    url = f"http://admin:hunter2@127.0.0.1:{hook.port}/hook"
    outcome = deliver(Callback(url), {}, "evt-1", cb_settings(callback_allow_hosts=""))
    assert outcome.reason == "skipped: address 127.0.0.1 is loopback" and "hunter2" not in outcome.reason


def test_deliver_never_raises() -> None:
    outcome = deliver(Callback(None), {}, "evt-1", cb_settings())  # type: ignore[arg-type]
    assert not outcome.delivered and outcome.reason.startswith("skipped: URL must be a string")
    outcome = deliver(Callback("http://[::1/"), {}, "evt-1", cb_settings())
    assert not outcome.delivered and outcome.reason.startswith("skipped:")


# --- through the worker --------------------------------------------------------------------------------


def log_lines(redis_client) -> list[str]:
    return [line.decode() for line in redis_client.lrange("logging", 0, -1)]


def test_worker_skips_a_loopback_callback_and_still_finishes(make_settings, redis_client, upload, song, hook):
    worker = Worker(make_settings())
    upload("cbskip", song)
    message = json.dumps({"id": "cbskip", "callback": hook.url})
    result = worker.handle(event_from_message(message, 65536))
    assert result["state"] == "done"
    assert result["callback"] == {
        "delivered": False,
        "status": None,
        "reason": "skipped: address 127.0.0.1 is loopback",
    }
    assert hook.requests == []
    wanted = "job cbskip: callback skipped: address 127.0.0.1 is loopback"
    assert any(wanted in line for line in log_lines(redis_client))
    assert redis_client.hget("status:cbskip", "state") == b"done"


def test_worker_sends_a_signed_result(make_settings, redis_client, upload, song, hook):
    worker = Worker(make_settings(callback_allow_hosts="127.0.0.1", webhook_secret=SECRET))
    upload("cbsign", song)
    event = event_from_message(json.dumps({"id": "cbsign", "callback": {"url": hook.url}}), 65536)
    result = worker.handle(event)
    assert result["callback"] == {"delivered": True, "status": 200, "reason": "delivered"}
    (request,) = hook.requests
    body = Webhook(SECRET).verify(request["body"], request["headers"])
    assert request["headers"]["webhook-id"] == event["id"]
    assert (
        body["id"] == "cbsign"
        and body["state"] == "done"
        and set(body["stems"]) == {"bass", "drums", "vocals", "other"}
    )
