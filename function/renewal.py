"""One thread that keeps a hold with a TTL alive (a claim's lease, the result cache's single-flight lock) by
renewing it every third of its TTL until it is stopped or the hold is lost."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable


class Renewal(threading.Thread):
    """Calls `renew` every `ttl_s / 3` seconds (at least `min_interval_s`) until `stop`; `renew` returns False
    when the hold is gone, which ends the renewals. `renew` handles (and logs) its own retryable failures."""

    def __init__(self, name: str, ttl_s: float, renew: Callable[[], bool], min_interval_s: float = 0.1) -> None:
        super().__init__(name=name, daemon=True)
        self._interval_s = max(min_interval_s, ttl_s / 3)
        self._renew = renew
        self._stop_event = threading.Event()
        self._context = contextvars.copy_context()  # made where it starts: its log lines carry the job's fields

    def run(self) -> None:
        self._context.run(self._renew_until_stopped)

    def _renew_until_stopped(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            if not self._renew():
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
