"""What the outside world can see of a job: its status hash and the `logging` list.

Log lines are `LPUSH logging "<hostname>.worker.<level>:<message>"`, as the course's log listener expects,
and the same message goes to stderr through `logging`. The status hash is one per job id.
"""

from __future__ import annotations

import logging
import socket
from enum import StrEnum

import redis

from function.clock import now_iso
from function.errors import Transient
from function.keys import LOG_MAX_LINES

log = logging.getLogger("stemworker")


class State(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    SEPARATING = "separating"
    UPLOADING = "uploading"
    DONE = "done"
    FAILED = "failed"


class EventLog:
    """The shared `logging` list. Best effort: a Redis failure here is reported on stderr, never raised,
    so a log line can not fail a job (the status hash is what must be written)."""

    def __init__(self, client: redis.Redis, key: str, host: str | None = None) -> None:
        self._client = client
        self._key = key
        self._prefix = f"{host or socket.gethostname()}.worker"

    def _push(self, level: str, message: str, stage: str | None = None, job_id: str | None = None) -> None:
        # stage and job_id become fields of LOG_FORMAT=json lines (function/logs.py); the list line is unchanged.
        extra = {name: value for name, value in (("stage", stage), ("job_id", job_id)) if value is not None}
        (log.error if level == "error" else log.info)(message, extra=extra)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.lpush(self._key, f"{self._prefix}.{level}:{message}")
                pipe.ltrim(self._key, 0, LOG_MAX_LINES - 1)
                pipe.execute()
        except redis.RedisError as err:
            log.warning("could not write to the Redis log list %s: %s", self._key, err)

    def info(self, message: str, *, stage: str | None = None, job_id: str | None = None) -> None:
        self._push("info", message, stage, job_id)

    def error(self, message: str, *, stage: str | None = None, job_id: str | None = None) -> None:
        self._push("error", message, stage, job_id)


class StatusRecord:
    """The status hash of one job. Every write is checked: a failure raises Transient."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: int) -> None:
        self._client = client
        self.key = key
        self._ttl_s = ttl_s

    def _write(self, fields: dict[str, object], fresh: bool = False) -> None:
        mapping = {name: str(value) for name, value in fields.items() if value is not None}
        try:
            with self._client.pipeline(transaction=True) as pipe:
                if fresh:
                    pipe.delete(self.key)
                pipe.hset(self.key, mapping=mapping)
                pipe.expire(self.key, self._ttl_s)
                pipe.execute()
        except redis.RedisError as err:
            raise Transient(f"cannot write job status {self.key}: {type(err).__name__}: {err}") from None

    def start(self, **fields: object) -> None:
        """Begin a fresh record for a new run of this id: no field of an earlier run survives."""
        self._write({"state": State.QUEUED, "progress": 0, "received_at": now_iso(), **fields}, fresh=True)

    def update(self, state: State | None = None, **fields: object) -> None:
        if state is not None:
            fields = {"state": state, f"{state}_at": now_iso(), **fields}
        self._write(fields)

    def read(self) -> dict[str, str]:
        try:
            raw = self._client.hgetall(self.key)
        except redis.RedisError as err:
            raise Transient(f"cannot read job status {self.key}: {err}") from None
        return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]
