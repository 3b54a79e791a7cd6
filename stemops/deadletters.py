"""Dead-letter operations on `<queue>:dead`: list, show, requeue, purge.

Entries are the JSON objects function/runner.py appends (message, event, job_id, error, error_type, permanent,
attempts, first_seen_at, failed_at); N is an entry's index in the list, 0 the oldest, as `dead list` shows it.
Requeue and purge are optimistic transactions (WATCH the list): a runner dead-lettering at the same moment
makes them retry, never act on a shifted index.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from function import keys
from function.config import Settings
from function.queue import digest
from function.status import EventLog
from stemops.recent import parse_iso

DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[smhdw]?)")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class NoSuchEntry(LookupError):
    """The index names no dead letter."""


class CutMessage(NoSuchEntry):
    """The entry keeps only the first few KB of its message (`truncated`): it cannot be requeued from it."""


def parse_duration_s(text: str) -> float:
    """Seconds of `90`, `90s`, `30m`, `12h`, `7d` or `2w`; anything else raises ValueError naming it."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration like 90s, 30m, 12h or 7d, got {text!r}")
    return float(match["number"]) * UNIT_S[match["unit"]]


@dataclass(frozen=True)
class DeadLetter:
    index: int
    entry: dict[str, Any]

    @property
    def message(self) -> bytes:
        return str(self.entry.get("message", "")).encode("utf-8")

    @property
    def failed_at(self) -> float | None:
        return parse_iso(self.entry.get("failed_at"))


def _parse(index: int, raw: bytes) -> DeadLetter:
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):  # not written by the runner; shown as it is, never lost
        entry = {"message": raw.decode("utf-8", "replace"), "error": "unreadable dead-letter entry"}
    return DeadLetter(index, entry)


def list_dead(client: redis.Redis, settings: Settings, limit: int | None = None) -> tuple[int, list[DeadLetter]]:
    """(total, the newest `limit` entries oldest first, with their indexes); every entry when limit is None."""
    key = keys.dead_key(settings.queue_key)
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(key)
        pipe.lrange(key, -limit if limit else 0, -1)
        total, raws = pipe.execute()
    first = total - len(raws)
    return int(total), [_parse(first + offset, raw) for offset, raw in enumerate(raws)]


def show_dead(client: redis.Redis, settings: Settings, index: int) -> DeadLetter:
    raw = client.lindex(keys.dead_key(settings.queue_key), index) if index >= 0 else None
    if raw is None:
        raise NoSuchEntry(f"no dead letter #{index} in {keys.dead_key(settings.queue_key)}")
    return _parse(index, cast(bytes, raw))  # the client does not decode replies


def reset_attempts(pipe: Any, queue_key: str, message: bytes) -> None:
    """Forget how often `message` was claimed, so a requeued dead letter gets MAX_ATTEMPTS fresh attempts.

    function/queue.py has no public call for this (its `complete` and `dead_letter` drop the count as part of
    finishing a claim), so it is done here, on the same fields: `<queue>:attempts` holds `<digest>` and
    `<digest>:first_seen` for each message. Switch to a WorkQueue method if queue.py grows one."""
    key_digest = digest(message)
    pipe.hdel(keys.attempts_key(queue_key), key_digest, f"{key_digest}:first_seen")


def _head_push(pipe: Any, settings: Settings, message: bytes) -> None:
    """Where the next claim takes from (WorkQueue._head_push's rule): a requeued letter is run next."""
    (pipe.lpush if settings.queue_pop == "left" else pipe.rpush)(settings.queue_key, message)


def _event_log(client: redis.Redis, settings: Settings) -> EventLog:
    return EventLog(client, settings.log_key, host=socket.gethostname())


def requeue(client: redis.Redis, settings: Settings, index: int | None) -> list[DeadLetter]:
    """Move dead letter `index` (every one when None) back to the head of the queue with its attempts reset;
    returns what moved. Each move is written to the `logging` list."""
    key = keys.dead_key(settings.queue_key)
    moved: list[DeadLetter] = []

    def move(pipe: Any) -> None:
        moved.clear()
        raws = pipe.lrange(key, 0, -1)
        if index is not None and not 0 <= index < len(raws):
            raise NoSuchEntry(f"no dead letter #{index} in {key} (it holds {len(raws)})")
        chosen = [index] if index is not None else list(range(len(raws)))
        if index is not None and _parse(index, raws[index]).entry.get("truncated"):
            raise CutMessage(
                f"dead letter #{index} keeps only the first part of its message "
                f"({_parse(index, raws[index]).entry.get('message_bytes')} bytes): resubmit it from "
                "its source"
            )
        chosen = [position for position in chosen if not _parse(position, raws[position]).entry.get("truncated")]
        pipe.multi()
        # Oldest first, each pushed to the head: with --all the newest letter is claimed first.
        for position in chosen:
            letter = _parse(position, raws[position])
            pipe.lrem(key, 1, raws[position])
            reset_attempts(pipe, settings.queue_key, letter.message)
            _head_push(pipe, settings, letter.message)
            moved.append(letter)

    client.transaction(move, key)
    log = _event_log(client, settings)
    for letter in moved:
        log.info(
            f"stemworker dead requeue: job {letter.entry.get('job_id') or '(no id)'} put back at the head of "
            f"{settings.queue_key} with its attempts reset (it had failed after "
            f"{letter.entry.get('attempts', '?')} attempt(s): {letter.entry.get('error', '')})",
            stage="requeued",
            job_id=letter.entry.get("job_id"),
        )
    return moved


def purge(client: redis.Redis, settings: Settings, older_than_s: float | None = None) -> int:
    """Delete dead letters that failed more than `older_than_s` ago (all of them when None); returns how many.
    An entry whose failure time cannot be read is kept when a minimum age is asked for."""
    key = keys.dead_key(settings.queue_key)
    removed = 0

    def drop(pipe: Any) -> None:
        nonlocal removed
        raws = pipe.lrange(key, 0, -1)
        if older_than_s is None:
            doomed = raws
        else:
            cutoff = time.time() - older_than_s
            doomed = [raw for i, raw in enumerate(raws) if (at := _parse(i, raw).failed_at) is not None and at < cutoff]
        pipe.multi()
        for raw in doomed:
            pipe.lrem(key, 1, raw)
        removed = len(doomed)

    client.transaction(drop, key)
    if removed:
        age = "" if older_than_s is None else f" older than {older_than_s:.0f} s"
        _event_log(client, settings).info(f"stemworker dead purge: removed {removed} dead letter(s){age} from {key}")
    return removed
