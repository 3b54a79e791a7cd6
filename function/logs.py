"""stderr logging for every entry point, set from LOG_LEVEL and LOG_FORMAT.

`text` is one human line per record. `json` is one JSON object per line (time, level, logger, message, and
the job id and stage when the record carries them), for log aggregators. The Redis `logging` list is
written by `status.EventLog` and keeps its own format whatever this says.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from function.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# EventLog lines about a job start with "job <id>:"; the id is lifted into its own JSON field.
JOB_PREFIX = re.compile(r"^job (?P<job_id>[A-Za-z0-9_-]{1,128})\b")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is None and (match := JOB_PREFIX.match(message)):
            job_id = match["job_id"]
        if job_id is not None:
            entry["job_id"] = job_id
        stage = getattr(record, "stage", None)
        if stage is not None:
            entry["stage"] = stage
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Route every logger to stderr at LOG_LEVEL in LOG_FORMAT (replaces any earlier configuration)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
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
    """Named points in the life of one process (epoch seconds), from its start; the job runner logs them at DEBUG as
    one `timeline {json}` line, which bench/cold_start.py reads for the cold-start breakdown."""

    def __init__(self) -> None:
        self.started = process_started_epoch()
        self.marks: list[tuple[str, float]] = []
        self.jobs: list[dict[str, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.time()))

    def line(self) -> str:
        return "timeline " + json.dumps({"process_start": self.started, "marks": self.marks, "jobs": self.jobs})
