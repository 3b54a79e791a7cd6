"""The one timestamp format the worker writes (status hashes, dead letters, metrics)."""

from __future__ import annotations

import time


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds, e.g. `2026-11-30T07:33:54.123Z`."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
