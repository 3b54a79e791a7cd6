"""stderr logging for every entry point, set from LOG_LEVEL and LOG_FORMAT.

Both formats stamp each record with its UTC time in ISO 8601 (`2026-01-02T03:04:05.678Z`), whatever the
process' TZ. `text` is one human line per record; inside a job it ends with `[job_id=... attempt=N]`. `json`
(python-json-logger) is one JSON object per line: `time`, `level`, `logger`, `message`, then the job's fields.

A job's fields come from a context variable that the job runner and `Worker.handle` set for the duration of one
job (`job_context`, `bind_job`): `job_id`, `attempt` and `event_id` are on every line logged while the job runs,
from any logger, including the threads the worker hands work to (they run in a copy of the job's context). A
record's own `extra` adds `stage`, `duration_s` and `error_type` where the worker knows them. The Redis `logging`
list is written by `status.EventLog` and keeps its own format whatever this says.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from function.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# EventLog lines about a job start with "job <id>:"; outside a job's context the id is lifted into its own field.
JOB_PREFIX = re.compile(r"^job (?P<job_id>[A-Za-z0-9_-]{1,128})\b")
# The fields a job's context carries, in the order lines show them.
JOB_FIELDS = ("job_id", "attempt", "event_id")

_NO_JOB: Mapping[str, Any] = MappingProxyType({})
_job: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("stemworker_job", default=_NO_JOB)


def current_job() -> Mapping[str, Any]:
    """The job fields of the running context (empty outside a job)."""
    return _job.get()


def bind_job(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add job fields (None values are left out) to this context until `unbind_job(token)`."""
    added = {name: value for name, value in fields.items() if value is not None}
    return _job.set(MappingProxyType({**_job.get(), **added}))


def unbind_job(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _job.reset(token)


@contextlib.contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Job fields on every log line of this block."""
    token = bind_job(**fields)
    try:
        yield
    finally:
        unbind_job(token)


def utc_iso(epoch_s: float) -> str:
    """`epoch_s` as UTC ISO 8601 with milliseconds and a `Z`."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(LibraryJsonFormatter):
    """One JSON object per record: time (UTC), level, logger, message, the job's context fields and the record's
    extras (`stage`, `duration_s`, `error_type`, ...); `exception` when the record has one."""

    def __init__(self) -> None:
        super().__init__("%(message)s", rename_fields={"exc_info": "exception"}, json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = utc_iso(record.created)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)
        for name, value in current_job().items():
            log_data.setdefault(name, value)
        if "job_id" not in log_data and (match := JOB_PREFIX.match(str(log_data.get("message", "")))):
            log_data["job_id"] = match["job_id"]


class TextFormatter(logging.Formatter):
    """`<UTC time> LEVEL logger: message`, and `[job_id=... attempt=N]` inside a job."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_iso(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job = current_job()
        if not job:
            return line
        return line + " [" + " ".join(f"{name}={job[name]}" for name in JOB_FIELDS if name in job) + "]"


def configure_logging(settings: Settings) -> None:
    """Route every logger to stderr at LOG_LEVEL in LOG_FORMAT (replaces any earlier configuration)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)


def process_started_epoch() -> float | None:
    """When this process started, in epoch seconds (10 ms resolution: the kernel counts clock ticks); None where
    /proc cannot tell."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        started_after_boot_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, `starttime`
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime_s - started_after_boot_s)


class Timeline:
    """Named points in the life of one process (epoch seconds), from its start; the job runner logs them at INFO as
    one `timeline {json}` line as it exits (where a pod's start-up time went), which bench.run and bench.cold_start
    read for the cold-start breakdown."""

    def __init__(self) -> None:
        self.started = process_started_epoch()
        self.marks: list[tuple[str, float]] = []
        self.jobs: list[dict[str, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.time()))

    def line(self) -> str:
        return "timeline " + json.dumps({"process_start": self.started, "marks": self.marks, "jobs": self.jobs})
