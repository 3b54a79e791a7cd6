"""Every Redis key the worker touches and every TTL default, in one place."""

from __future__ import annotations

# Default list the REST tier pushes job messages onto.
DEFAULT_QUEUE_KEY = "toWorker"
# Default list the worker LPUSHes "<host>.worker.<level>:<message>" lines onto.
DEFAULT_LOG_KEY = "logging"
# Default template of the per-job status hash; `{id}` is a validated job id.
DEFAULT_STATUS_KEY = "status:{id}"

# How long a finished job's status hash is kept (7 days).
STATUS_TTL_S = 7 * 24 * 3600
# The `logging` list is trimmed to this many newest lines so it cannot grow without bound.
LOG_MAX_LINES = 100_000


def processing_key(queue_key: str) -> str:
    """List holding messages claimed by a runner and not yet finished."""
    return f"{queue_key}:processing"


def dead_key(queue_key: str) -> str:
    """Dead-letter list: JSON entries of jobs that failed for good."""
    return f"{queue_key}:dead"


def leases_key(queue_key: str) -> str:
    """Sorted set: runner token -> lease deadline (Redis time, unix seconds); renewed by the runner's heartbeat."""
    return f"{queue_key}:leases"


def leased_key(queue_key: str) -> str:
    """Hash: runner token -> the message its claim holds (so a reaper can requeue it when the lease expires)."""
    return f"{queue_key}:leased"


def attempts_key(queue_key: str) -> str:
    """Hash: message digest -> how many times a runner has claimed that message (survives requeues)."""
    return f"{queue_key}:attempts"


def orphans_key(queue_key: str) -> str:
    """Hash: sha1 of a message -> Redis time when a reaper first saw more copies of it in the processing list than
    leases on it (its claim's lease not written yet, or never: the runner died right after BLMOVE)."""
    return f"{queue_key}:orphans"


def status_key(template: str, job_id: str) -> str:
    """The status hash of one job; `job_id` must already be validated."""
    return template.format(id=job_id)
