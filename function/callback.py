"""The webhook: POST a JSON body to the job's callback URL. Guarded, signed, bounded; it never raises into the job.

- Guarded: the URL must be http(s) and its host must resolve to addresses `function.netguard` accepts
  (CALLBACK_PRIVATE, CALLBACK_ALLOW_HOSTS); the request goes to the address that was checked. An unusable URL
  is skipped with a reason, it does not fail the job.
- Signed: with WEBHOOK_SECRET, Standard Webhooks headers (`function.signing`); `webhook-id` is the job's
  CloudEvent id, the same on every attempt.
- Bounded by the wall clock, whatever the receiver does (trickles its answer a byte at a time, stalls after the
  headers, is slow to finish TLS): at most CALLBACK_ATTEMPTS attempts; each attempt ends CALLBACK_TIMEOUT_S after
  it starts (or when CALLBACK_TOTAL_S runs out, if sooner); the DNS look-up, every attempt and every back-off fit
  in CALLBACK_TOTAL_S from the start of the delivery. An attempt runs on a thread of its own; at its deadline the
  job stops waiting for it and its socket is shut down. Only the status line and headers are read: the answer's
  body never is. 5xx, 429 and connection errors are retried after an exponential, jittered back-off (a 429/503
  Retry-After is honoured up to RETRY_AFTER_MAX_S). A redirect is never followed; only a 2xx answer counts as
  delivered.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from function import netguard, signing
from function.config import Settings
from function.deadline import DeadlineExceeded, run_within
from function.messages import Callback
from function.tracing import trace_headers

log = logging.getLogger("stemworker")

BACKOFF_BASE_S = 0.5  # the first retry waits 0.25-0.5 s, then 0.5-1 s, 1-2 s, ...
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 20.0  # a receiver's Retry-After is honoured up to this long
USER_AGENT = "stemworker-webhook/1"


@dataclass(frozen=True)
class CallbackOutcome:
    """What happened to one callback: delivered or not, and why (`reason` is logged; it holds no secret)."""

    delivered: bool
    attempts: int
    status: int | None
    reason: str


def backoff_s(retry: int, rng: random.Random | None = None) -> float:
    """The wait before retry number `retry` (1-based): half to all of BACKOFF_BASE_S * 2**(retry-1), capped."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (retry - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def retry_after_s(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def post_within(
    session: requests.Session, adapter: netguard.PinnedAdapter, budget_s: float, url: str, **kwargs: Any
) -> requests.Response:
    """`session.post(url, stream=True, ...)` that returns or raises within `budget_s` seconds of wall clock.

    A socket timeout bounds one read, not a request, so the request runs on a daemon thread and this one waits for
    it; past the budget the adapter's sockets are shut down (the thread fails at once) and requests.Timeout is
    raised here. The answer's body is never read (stream=True): a receiver cannot hold the job with it."""
    try:
        return run_within(
            lambda: session.post(url, stream=True, timeout=budget_s, **kwargs), budget_s, "callback-attempt"
        )
    except DeadlineExceeded:
        adapter.cut()
        raise requests.Timeout(f"no complete answer within {budget_s:.1f} s") from None


def encode_body(body: Any) -> bytes:
    """The exact bytes sent and signed: compact JSON, ASCII only."""
    return json.dumps(body, separators=(",", ":"), default=str).encode("ascii")


def deliver(
    callback: Callback,
    body: Any,
    event_id: str,
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    resolver: netguard.Resolver = netguard.resolve,
) -> CallbackOutcome:
    """POST `body` as JSON to `callback.url`; only a 2xx answer counts as delivered. Never raises."""
    try:
        return _deliver(callback, body, event_id, settings, sleep, resolver)
    except Exception as err:  # a notification never fails a job
        log.exception("callback failed unexpectedly")
        return CallbackOutcome(False, 0, None, f"failed: internal error {type(err).__name__}")


def _deliver(
    callback: Callback,
    body: Any,
    event_id: str,
    settings: Settings,
    sleep: Callable[[float], None],
    resolver: netguard.Resolver,
) -> CallbackOutcome:
    deadline = time.monotonic() + settings.callback_total_s
    try:
        target = netguard.vet_url(
            callback.url,
            private_allowed=settings.callback_private == "allow",
            allow_hosts=settings.callback_allow_hosts,
            resolve_timeout_s=min(settings.callback_timeout_s, settings.callback_total_s),
            resolver=resolver,
        )
    except netguard.Refused as err:
        return CallbackOutcome(False, 0, None, f"skipped: {err}")
    payload = encode_body(body)
    msg_id = signing.webhook_id(event_id)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
    attempts, status, last = 0, None, "no attempt made"
    with netguard.pinned_session(target) as session:
        adapter = session.get_adapter(target.url)
        assert isinstance(adapter, netguard.PinnedAdapter)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return CallbackOutcome(False, attempts, status, f"failed: {last}; CALLBACK_TOTAL_S spent")
            attempts += 1
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **trace_headers(),  # the receiver can continue the job's trace (W3C trace context)
                **signing.signature_headers(secret, msg_id, payload),
            }
            wait: float | None = None
            try:
                response = post_within(
                    session,
                    adapter,
                    min(settings.callback_timeout_s, remaining),
                    target.url,
                    data=payload,
                    headers=headers,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError:
                return CallbackOutcome(False, attempts, None, "failed: TLS handshake or certificate check failed")
            except (requests.ConnectionError, requests.Timeout) as err:
                status, last = None, f"{type(err).__name__} on attempt {attempts}"
            except requests.RequestException as err:
                return CallbackOutcome(False, attempts, None, f"failed: {type(err).__name__}")
            else:
                status = response.status_code
                response.close()
                if 200 <= status < 300:
                    return CallbackOutcome(True, attempts, status, "delivered")
                if 300 <= status < 400:
                    return CallbackOutcome(False, attempts, status, f"failed: HTTP {status}, redirect not followed")
                if status != 429 and status < 500:
                    return CallbackOutcome(False, attempts, status, f"failed: HTTP {status}")
                last = f"HTTP {status}"
                asked = retry_after_s(response.headers.get("Retry-After"))
                if asked is not None:
                    wait = min(asked, RETRY_AFTER_MAX_S)
            if attempts >= settings.callback_attempts:
                return CallbackOutcome(False, attempts, status, f"failed: {last}; gave up after {attempts} attempts")
            wait = backoff_s(attempts) if wait is None else wait
            if time.monotonic() + wait >= deadline:
                return CallbackOutcome(
                    False, attempts, status, f"failed: {last}; a retry in {wait:.1f} s would pass CALLBACK_TOTAL_S"
                )
            log.info("callback %s: retrying in %.2f s", last, wait)
            sleep(wait)
