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

# Result cache (function/cache.py): how long an entry is kept after its last use (30 days), and how many are kept.
RESULT_CACHE_TTL_S = 30 * 24 * 3600
RESULT_CACHE_MAX_ENTRIES = 100_000
# Prefix of every result cache key; the cache key itself is a sha256 hex digest.
RESULT_CACHE_PREFIX = "result-cache"


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


def dataset_key(queue_key: str) -> str:
    """String: a random marker the first claim writes (SET NX) and every later claim reads. A runner holding a claim
    that finds it gone or changed knows Redis lost its data (a restart without persistence, a flush, a failover to
    an empty replica), and with it the queued messages."""
    return f"{queue_key}:dataset"


def status_key(template: str, job_id: str) -> str:
    """The status hash of one job; `job_id` must already be validated."""
    return template.format(id=job_id)


# Operator records (function/metrics.py writes them at each job; stemops reads them). All bounded in size.
def metrics_key(queue_key: str, name: str) -> str:
    """Hash of one metric group (`counters`, `durations`, `rtf`): fixed fields incremented with HINCRBY."""
    return f"{queue_key}:metrics:{name}"


def recent_jobs_key(queue_key: str) -> str:
    """Sorted set: job id -> Unix time of its latest start or end; trimmed by count and age."""
    return f"{queue_key}:recent"


def seen_key(queue_key: str) -> str:
    """Sorted set: message digest -> Unix time an observer first saw it waiting in the queue (stemops)."""
    return f"{queue_key}:seen"


def cache_index_key() -> str:
    """Sorted set: cache key -> Redis time (µs) of its last record or hit; the oldest are trimmed first."""
    return f"{RESULT_CACHE_PREFIX}:index"


def cache_entry_prefix() -> str:
    """What `cache_entry_key` puts before the cache key (the trim script builds entry keys from index members)."""
    return f"{RESULT_CACHE_PREFIX}:entry:"


def cache_entry_key(cache_key: str) -> str:
    """String with a TTL: the JSON entry of one cached result (the source job and its recorded stem objects)."""
    return f"{cache_entry_prefix()}{cache_key}"


def cache_lock_key(cache_key: str) -> str:
    """Single-flight lock of one cache key: `<token> <job id>` of the job separating it, with a TTL it renews."""
    return f"{RESULT_CACHE_PREFIX}:lock:{cache_key}"


# Who runs what (function/claims.py), beside the lease bookkeeping of function/queue.py.
def holders_key(queue_key: str) -> str:
    """Hash: lease token -> JSON {pod, job_id, claimed_at} of the runner holding that claim; entries whose lease is
    gone are dropped by readers."""
    return f"{queue_key}:holders"
