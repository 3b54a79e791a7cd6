"""What the outside world can see of a job: its status hash and the `logging` list.

Log lines are `LPUSH logging "<hostname>.worker.<level>:<message>"`, as the course's log listener expects,
and the same message goes to stderr through `logging`. The status hash is one per job id.

The hash may be shared with a REST tier that keeps its own fields there (its API reads them): the worker
writes, clears and expires only what it owns (OWN_FIELDS and the STATE_FIELDS names), and a hash that the
tier created without an expiry keeps none.
"""

from __future__ import annotations

import logging
import socket
from enum import StrEnum
from typing import TypedDict, Unpack

import redis

from function.clock import now_iso
from function.errors import Transient
from function.keys import LOG_MAX_LINES
from function.tracing import span

log = logging.getLogger("stemworker")


class State(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    SEPARATING = "separating"
    UPLOADING = "uploading"
    DONE = "done"
    FAILED = "failed"


# Every field the worker writes in a status hash. A new run clears exactly these (and the STATE_FIELDS names);
# tests/test_rest_tiers.py checks that a job writes nothing else, so a new field must be added here.
OWN_FIELDS = frozenset(
    {
        "state",
        "progress",
        "received_at",
        "model",
        "model_requested",
        "format",
        "attempts",
        "event_id",
        "error",
        "retryable",
        "failed_at",
        "device",
        "precision",
        "audio_seconds",
        "outputs",
        "seconds",
        "cached",
        "cached_from",
        "waiting_for",
        "published",
        "pod",
        "claimed_at",
        *(f"{state}_at" for state in State),
    }
)


# KEYS[1] the hash; ARGV[1] TTL s, ARGV[2] n, ARGV[3..2+n] fields to clear, then field/value pairs to set.
# A hash that existed without an expiry before this write is a tier's own record: it is left without one. A
# negative TTL (STATUS_TTL_S not set explicitly) also leaves the expiry of a hash that exists as it is: a tier's
# hash keeps its own, and the worker's expires that long after the worker created it.
def write_status_lua(skip: int = 0) -> str:
    """Lua that writes the status hash KEYS[1]: HDEL n fields, HSET name/value pairs, and set the TTL on a new hash,
    and on an existing one that has an expiry when the TTL is positive. ARGV after the first `skip`: TTL, n, the n
    names, pairs."""
    ttl, count, first = f"tonumber(ARGV[{skip + 1}])", f"tonumber(ARGV[{skip + 2}])", skip + 3
    return f"""
local existed = redis.call('EXISTS', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
local wanted = {ttl}
local n = {count}
if n > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, {first}, {first - 1} + n)) end
if #ARGV > {first - 1} + n then redis.call('HSET', KEYS[1], unpack(ARGV, {first} + n)) end
if existed == 0 then redis.call('EXPIRE', KEYS[1], math.abs(wanted))
elseif ttl ~= -1 and wanted > 0 then redis.call('EXPIRE', KEYS[1], wanted) end
return 1
"""


WRITE_STATUS = write_status_lua()


class LineFields(TypedDict, total=False):
    """What a log line may carry besides its text: the job's stage, id, the step's seconds and an error's type."""

    stage: str | None
    job_id: str | None
    duration_s: float | None
    error_type: str | None


class EventLog:
    """The shared `logging` list. Best effort: a Redis failure here is reported on stderr, never raised,
    so a log line can not fail a job (the status hash is what must be written)."""

    def __init__(self, client: redis.Redis, key: str, host: str | None = None) -> None:
        self._client = client
        self._key = key
        self._prefix = f"{host or socket.gethostname()}.worker"

    def _push(self, level: str, message: str, fields: LineFields) -> None:
        # The fields go on LOG_FORMAT=json lines (function/logs.py); the list line is unchanged.
        extra: dict[str, object] = {name: value for name, value in fields.items() if value is not None}
        if "duration_s" in extra:
            extra["duration_s"] = rounded(fields["duration_s"])
        (log.error if level == "error" else log.info)(message, extra=extra)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.lpush(self._key, f"{self._prefix}.{level}:{message}")
                pipe.ltrim(self._key, 0, LOG_MAX_LINES - 1)
                pipe.execute()
        except redis.RedisError as err:
            log.warning("could not write to the Redis log list %s: %s", self._key, err)

    def info(self, message: str, **fields: Unpack[LineFields]) -> None:
        self._push("info", message, fields)

    def error(self, message: str, **fields: Unpack[LineFields]) -> None:
        self._push("error", message, fields)


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class StatusRecord:
    """The status hash of one job. Every write is checked: a failure raises Transient.

    The state goes under each name in `state_fields` (STATE_FIELDS; `state` by default); under the names other than
    `state`, `state_map` (STATE_MAP) renames a state, or leaves it out when it maps to "". With `keep_expiry`
    (STATUS_TTL_S not set explicitly) a hash that already exists keeps its expiry; a new one gets `ttl_s`."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        ttl_s: int,
        state_fields: tuple[str, ...] = ("state",),
        *,
        keep_expiry: bool = False,
        state_map: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self.key = key
        self._ttl_s = -ttl_s if keep_expiry else ttl_s  # as write_status_lua takes it
        self._state_fields = state_fields
        self._state_map = state_map or {}

    def _write(self, fields: dict[str, object], fresh: bool = False) -> None:
        with span("status", **{"stemworker.state": None if fields.get("state") is None else str(fields["state"])}):
            self._write_now(fields, fresh)

    def _write_now(self, fields: dict[str, object], fresh: bool) -> None:
        mapping = {name: str(value) for name, value in fields.items() if value is not None and name != "state"}
        if fields.get("state") is not None:
            state = str(fields["state"])
            for name in self._state_fields:
                shown = state if name == "state" else self._state_map.get(state, state)
                if shown:
                    mapping[name] = shown
        cleared = sorted(OWN_FIELDS.union(self._state_fields)) if fresh else []
        pairs = [item for name_value in mapping.items() for item in name_value]
        self._apply(cleared, pairs)

    def _apply(self, cleared: list[str], pairs: list[str]) -> None:
        """HDEL `cleared`, HSET the flat name/value `pairs`, keep or set the TTL: one script, one round trip."""
        try:
            self._client.eval(WRITE_STATUS, 1, self.key, self._ttl_s, len(cleared), *cleared, *pairs)
        except redis.RedisError as err:
            raise Transient(f"cannot write job status {self.key}: {type(err).__name__}: {err}") from None

    def start(self, **fields: object) -> None:
        """Begin a fresh record for a new run of this id: no field this worker wrote in an earlier run survives,
        and fields it does not own (a REST tier's) are left as they are."""
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
