"""The worker's error hierarchy.

Every failure a job can meet is one of these, so callers decide on the class alone:
`BadJob` is permanent (do not retry; dead-letter), `Transient` may succeed on retry (requeue).
Each class carries the HTTP status the functions-framework adapter answers with.
"""

from __future__ import annotations


class StemworkerError(Exception):
    """Base class of every error the worker raises on purpose."""

    http_status = 500
    permanent = False


class ConfigError(StemworkerError):
    """A setting is missing or invalid; raised once at start-up, never per job."""


class BadJob(StemworkerError):
    """Permanent: retrying the same job can never succeed."""

    http_status = 422
    permanent = True


class InvalidJob(BadJob):
    """The message or its CloudEvent is malformed, or a field is out of bounds (rejected before any I/O)."""

    http_status = 400


class UnprocessableInput(BadJob):
    """The job is well formed but its input cannot be separated: missing, oversize, too long, not audio."""

    http_status = 422


class Transient(StemworkerError):
    """A dependency failed (Redis, S3, disk); the same job may succeed later."""

    http_status = 503


class RedisUnavailable(Transient):
    """Redis did not answer (down, unreachable or timing out); nothing was lost, the call may be retried."""


class Interrupted(Transient):
    """The process was asked to stop (SIGTERM) while a job ran; the job must go back to the queue."""


class LeaseLost(Transient):
    """This runner's lease on its message is gone: it stopped renewing for longer than LEASE_S (a partition,
    a long pause) and a reaper handed the message to another runner. Its acks and status writes are refused, so it
    can neither drop the new owner's copy nor move a status the new owner wrote; it must let the message go."""
