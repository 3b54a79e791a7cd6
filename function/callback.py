"""The webhook: POST a JSON body to the job's callback URL. It never raises into the job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from function.config import Settings
from function.messages import Callback


@dataclass(frozen=True)
class CallbackOutcome:
    """What happened to one callback: delivered or not, and why."""

    delivered: bool
    attempts: int
    status: int | None
    reason: str


def deliver(callback: Callback, body: Any, event_id: str, settings: Settings) -> CallbackOutcome:
    """POST `body` as JSON to `callback.url`; only a 2xx answer counts as delivered."""
    scheme = urlsplit(callback.url).scheme.lower()
    if scheme not in ("http", "https"):
        return CallbackOutcome(False, 0, None, f"skipped: scheme {scheme!r} is not http or https")
    try:
        response = requests.post(
            callback.url,
            json=body,
            timeout=settings.callback_timeout_s,
            allow_redirects=False,
            headers={"webhook-id": event_id},
        )
    except requests.RequestException as err:
        return CallbackOutcome(False, 1, None, f"failed: {type(err).__name__}")
    if 200 <= response.status_code < 300:
        return CallbackOutcome(True, 1, response.status_code, "delivered")
    return CallbackOutcome(False, 1, response.status_code, f"failed: HTTP {response.status_code}")
