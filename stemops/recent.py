"""Recent jobs, newest first, from the bounded index the worker keeps (function/metrics.py): no keyspace scan."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from function import keys
from function.config import Settings
from function.status import State

FINAL = frozenset({State.DONE.value, State.FAILED.value})
PAGE = 200
# A status hash that expired (STATUS_TTL_S) while its id was still in the index.
GONE = "expired"


def parse_iso(value: str | None) -> float | None:
    """Unix seconds of a `function.clock.now_iso` timestamp (None when absent or unreadable)."""
    if not value:
        return None
    try:
        whole, _, fraction = value.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
    except ValueError:
        return None


def decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def seconds_taken(status: Mapping[str, str], now: float) -> float | None:
    """The job's time so far: its recorded total when done, else from `received_at` to failure or now."""
    if status.get("state") == State.DONE.value and status.get("seconds"):
        return float(status["seconds"])
    started = parse_iso(status.get("received_at"))
    if started is None:
        return None
    ended = parse_iso(status.get("failed_at")) if status.get("state") == State.FAILED.value else None
    return max(0.0, (ended or now) - started)


@dataclass(frozen=True)
class JobRow:
    """One job as `stemworker jobs` shows it."""

    id: str
    state: str
    progress: int | None
    model: str | None
    audio_seconds: float | None
    seconds: float | None
    attempts: int | None
    error: str | None
    updated_at: float

    @classmethod
    def of(cls, job_id: str, updated_at: float, status: Mapping[str, str], now: float) -> JobRow:
        def number(name: str, kind: type) -> Any:
            try:
                return kind(float(status[name])) if kind is int else kind(status[name])
            except (KeyError, ValueError):
                return None

        return cls(
            id=job_id,
            state=status.get("state", GONE),
            progress=number("progress", int),
            model=status.get("model"),
            audio_seconds=number("audio_seconds", float),
            seconds=seconds_taken(status, now),
            attempts=number("attempts", int),
            error=status.get("error"),
            updated_at=updated_at,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status_of(client: redis.Redis, settings: Settings, job_id: str) -> dict[str, str]:
    return decode(cast(dict[bytes, bytes], client.hgetall(keys.status_key(settings.status_key, job_id))))


def outputs_of(status: Mapping[str, str]) -> dict[str, Any]:
    """Where the stems of a done job went: stem -> {bucket, key}."""
    try:
        outputs = json.loads(status.get("outputs", "{}"))
    except ValueError:
        return {}
    return outputs if isinstance(outputs, dict) else {}


# Status hash fields that hold numbers, and the type each is shown as (everything else stays text).
INT_FIELDS = frozenset({"progress", "attempts", "retryable", "cached"})
FLOAT_FIELDS = frozenset({"audio_seconds", "seconds"})


def typed_status(status: Mapping[str, str]) -> dict[str, Any]:
    """A status hash with its numbers as numbers and `outputs` as the object it encodes (for --json)."""
    typed: dict[str, Any] = {}
    for name, text in status.items():
        try:
            if name in INT_FIELDS:
                typed[name] = int(float(text))
            elif name in FLOAT_FIELDS:
                typed[name] = float(text)
            elif name == "outputs":
                typed[name] = outputs_of(status)
            else:
                typed[name] = text
        except ValueError:
            typed[name] = text
    return typed


def recent_jobs(client: redis.Redis, settings: Settings, state: str | None = None, limit: int = 20) -> list[JobRow]:
    """Up to `limit` jobs, newest first (by their latest start or end), optionally only those in `state`."""
    index = keys.recent_jobs_key(settings.queue_key)
    rows: list[JobRow] = []
    start = 0
    now = time.time()
    while len(rows) < limit:
        page = cast(list[tuple[bytes, float]], client.zrevrange(index, start, start + PAGE - 1, withscores=True))
        if not page:
            break
        with client.pipeline(transaction=False) as pipe:
            for member, _ in page:
                pipe.hgetall(keys.status_key(settings.status_key, member.decode()))
            statuses = pipe.execute()
        for (member, score), raw in zip(page, statuses, strict=True):
            row = JobRow.of(member.decode(), score, decode(raw), now)
            if state is None or row.state == state:
                rows.append(row)
                if len(rows) == limit:
                    break
        start += PAGE
    return rows


def ended_since(client: redis.Redis, settings: Settings, since: float) -> list[dict[str, str]]:
    """The `state`, `seconds` and `cached` of every indexed job whose latest start or end is at or after `since`."""
    index = keys.recent_jobs_key(settings.queue_key)
    ids = [member.decode() for member in cast(list[bytes], client.zrangebyscore(index, since, "+inf"))]
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.status_key(settings.status_key, job_id), "state", "seconds", "cached")
        values = pipe.execute()
    return [
        {"state": (s or b"").decode(), "seconds": (sec or b"").decode(), "cached": (hit or b"").decode()}
        for s, sec, hit in values
    ]
