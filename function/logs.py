"""stderr logging for every entry point, set from LOG_LEVEL and LOG_FORMAT.

`text` is one human line per record. `json` is one JSON object per line (time, level, logger, message, and
the job id and stage when the record carries them), for log aggregators. The Redis `logging` list is
written by `status.EventLog` and keeps its own format whatever this says.
"""

from __future__ import annotations

import json
import logging
import re

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
