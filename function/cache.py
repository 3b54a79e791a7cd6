"""The result cache's index and single flight: a job whose input and settings were separated before gets that
job's stems, copied server-side to its own keys, instead of a new separation; identical jobs running at once
separate only once.

The key (function/cache_key.py) is the SHA-256 of the input's bytes (computed while they are downloaded) with
everything that changes the output bytes. Names are not in it (STEM_ALIASES, OUTPUT_KEY): a hit copies each stem
to this job's names (function/cache_copy.py). Before a hit is trusted every recorded object is stat'ed: one that
is gone or changed (size or ETag) drops the entry and the job separates.

Redis keys (function/keys.py): `result-cache:entry:<key>` (JSON with a TTL), `result-cache:index` (a sorted set
by last use, trimmed to RESULT_CACHE_MAX_ENTRIES) and `result-cache:lock:<key>` (the single-flight lock: a job
that misses takes it with SET NX PX and renews it while it separates; the others wait for its entry, and take
the lock over when it expires because its owner died). A cache failure never fails a job: the job separates
as if the cache were off. What a hit reveals, and when to turn the cache off: docs/cache.md.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import cast

import redis
import yaml

from function import keys
from function.cache_copy import Entry, StoredStem, copy_entry, stale_reason
from function.cache_key import key_parts
from function.clock import now_iso
from function.config import Settings
from function.errors import Interrupted, Transient
from function.messages import Job
from function.renewal import Renewal
from function.status import EventLog, StatusRecord
from function.storage import ObjectStore

# How often a waiting job looks for the owner's entry or a free lock.
POLL_S = 0.2

RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl * 1000000)
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  for _, key in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('DEL', ARGV[5] .. key)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
else
  extra = 0
end
redis.call('EXPIRE', KEYS[2], ttl)
return extra
"""

TOUCH = """
if redis.call('EXPIRE', KEYS[1], ARGV[1]) == 1 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return false
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Hit:
    """A usable entry whose stems are already copied to the job's own keys."""

    entry: Entry
    outputs: dict[str, dict[str, str]]  # stem -> {bucket, key}, as a separated job reports them
    key: str


class LockRenewal(Renewal):
    """Renews the single-flight lock every third of its TTL while the owner separates; stops when the lock is
    lost (another job took it over after a stall longer than the TTL)."""

    def __init__(self, cache: ResultCache, key: str, token: str, job_id: str) -> None:
        super().__init__("result-cache-lock", cache.settings.result_cache_lock_s, self._renew_once)
        self._cache, self._key, self._token, self._job_id = cache, key, token, job_id

    def _renew_once(self) -> bool:
        try:
            if not self._cache.renew_lock(self._key, self._token, self._job_id):
                self._cache.events.error(
                    f"job {self._job_id}: lost the result cache lock of key "
                    f"{self._key[:12]} (another job took it over); separating on"
                )
                return False
        except redis.RedisError as err:
            self._cache.events.error(f"job {self._job_id}: result cache lock renewal failed, will retry: {err}")
        return True


class Flight:
    """One job's pass through the cache. `hit` is set when the job's stems are already in place; otherwise the
    job separates (holding the key's lock when it got it) and calls `record`. Closing it releases the lock."""

    def __init__(
        self,
        cache: ResultCache | None,
        job_id: str,
        key: str | None = None,
        hit: Hit | None = None,
        token: str | None = None,
    ) -> None:
        self._cache = cache
        self.job_id = job_id
        self.key = key
        self.hit = hit
        self._token = token
        self._renewal: LockRenewal | None = None
        if cache is not None and key is not None and token is not None:
            self._renewal = LockRenewal(cache, key, token, job_id)
            self._renewal.start()

    def record(self, outputs: dict[str, dict[str, str]], audio_seconds: float, device: str) -> None:
        """Record the job's uploaded stems (stem -> {bucket, key}) under the key. Never raises: a stem that cannot
        be recorded only means the next identical job separates again."""
        if self._cache is None or self.key is None:
            return
        self._cache.record(self.key, self.job_id, outputs, audio_seconds, device)

    def close(self) -> None:
        if self._renewal is not None:
            self._renewal.stop()
            self._renewal = None
        if self._cache is not None and self.key is not None and self._token is not None:
            self._cache.release_lock(self.key, self._token, self.job_id)
            self._token = None

    def __enter__(self) -> Flight:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResultCache:
    """The result cache of one worker (its Redis, object store, log and settings)."""

    def __init__(self, client: redis.Redis, store: ObjectStore, events: EventLog, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.events = events
        self.settings = settings
        self._record = client.register_script(RECORD)
        self._touch = client.register_script(TOUCH)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._take_over = client.register_script(TAKE_OVER)

    # ----- the single flight
    def begin(self, job: Job, input_sha256: str, device: str, precision: str, status: StatusRecord) -> Flight:
        """Look the job up; on a hit its stems are copied to its keys (`Flight.hit`). On a miss, wait while another
        job holds the key's lock (up to RESULT_CACHE_WAIT_S), taking the lock over when it is released or expires
        without an entry. Returns a Flight to close when the job ends; raises only Interrupted (SIGTERM)."""
        if not self.settings.result_cache:
            return Flight(None, job.id)
        try:
            parts = key_parts(job, self.settings, input_sha256, device, precision)
        except (OSError, yaml.YAMLError, AttributeError, TypeError) as err:  # loading the model will say more
            self.events.error(
                f"job {job.id}: result cache skipped: cannot read model {job.model}'s files: "
                f"{type(err).__name__}: {err}"
            )
            return Flight(None, job.id)
        if parts is None:
            self.events.info(
                f"job {job.id}: result cache skipped: the weights of model {job.model} cannot be "
                "resolved from its files"
            )
            return Flight(None, job.id)
        key = parts.cache_key()
        try:
            return self._single_flight(job, key, status)
        except Interrupted:
            raise
        except (redis.RedisError, Transient) as err:
            self.events.error(
                f"job {job.id}: result cache unavailable, separating without it: {type(err).__name__}: {err}"
            )
            return Flight(None, job.id)

    def _single_flight(self, job: Job, key: str, status: StatusRecord) -> Flight:
        lock = keys.cache_lock_key(key)
        lock_ms = int(self.settings.result_cache_lock_s * 1000)
        started = time.monotonic()
        deadline = started + self.settings.result_cache_wait_s
        waited_for: str | None = None
        while True:
            hit = self._hit(job, key)
            if hit is not None:
                return Flight(self, job.id, key, hit=hit)
            token = uuid.uuid4().hex
            value = f"{token} {job.id}"
            acquired = bool(self.client.set(lock, value, nx=True, px=lock_ms))
            owner_id = None
            if not acquired:
                owner = cast(bytes | None, self.client.get(lock))  # the client does not decode replies
                owner_id = owner.decode().partition(" ")[2] if owner is not None else None
                # A lock held under this job's own id is an earlier attempt's (the queue hands a job out again
                # only once its runner is gone) or a duplicate message's: waiting on it would wait on ourselves.
                if (
                    owner is not None
                    and owner_id == job.id
                    and self._take_over(keys=[lock], args=[owner, value, lock_ms])
                ):
                    acquired = True
                    self.events.info(f"job {job.id}: took over key {key[:12]} from an earlier attempt of this job")
            if acquired:
                hit = self._hit(job, key)  # the owner may have recorded and released since the lookup
                if hit is not None:
                    self.release_lock(key, token, job.id)
                    return Flight(self, job.id, key, hit=hit)
                if waited_for is not None:
                    self.events.info(
                        f"job {job.id}: took over key {key[:12]} after {time.monotonic() - started:.2f} s"
                        f": job {waited_for} released or lost its lock without a result; separating"
                    )
                return Flight(self, job.id, key, token=token)
            if time.monotonic() >= deadline:
                self.events.info(
                    f"job {job.id}: waited {time.monotonic() - started:.2f} s (RESULT_CACHE_WAIT_S="
                    f"{self.settings.result_cache_wait_s:g}) for key {key[:12]}; separating it too"
                )
                return Flight(self, job.id, key)
            if waited_for is None:
                waited_for = owner_id or "(unknown)"
                self.events.info(
                    f"job {job.id}: waiting for job {waited_for}, which is separating the same input "
                    f"with the same settings (key {key[:12]})"
                )
                status.update(waiting_for=waited_for)
            time.sleep(max(0.0, min(POLL_S, deadline - time.monotonic())))

    def renew_lock(self, key: str, token: str, job_id: str) -> bool:
        """Extend the lock's TTL if this job still holds it; False when it does not."""
        return bool(
            self._renew(
                keys=[keys.cache_lock_key(key)],
                args=[f"{token} {job_id}", int(self.settings.result_cache_lock_s * 1000)],
            )
        )

    def release_lock(self, key: str, token: str, job_id: str) -> None:
        """Delete the lock if this job still holds it (a lock another job took over is left alone)."""
        try:
            self._release(keys=[keys.cache_lock_key(key)], args=[f"{token} {job_id}"])
        except redis.RedisError as err:  # the lock then expires by itself
            self.events.error(f"job {job_id}: could not release the result cache lock: {err}")

    # ----- entries
    def lookup(self, key: str) -> Entry | None:
        """The entry recorded under `key`, unchecked; a malformed one is dropped."""
        raw = self.client.get(keys.cache_entry_key(key))
        if raw is None:
            return None
        try:
            return Entry.from_json(raw)
        except ValueError:
            self.drop(key)
            return None

    def drop(self, key: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.cache_entry_key(key))
            pipe.zrem(keys.cache_index_key(), key)
            pipe.execute()

    def _hit(self, job: Job, key: str) -> Hit | None:
        """A checked entry with its stems copied to the job's keys, or None (a stale entry is dropped)."""
        entry = self.lookup(key)
        if entry is None:
            return None
        reason = stale_reason(self.store, entry)
        if reason is None:
            outputs = copy_entry(self.store, self.settings, entry, job)
            if outputs is not None:
                self._touch(
                    keys=[keys.cache_entry_key(key), keys.cache_index_key()],
                    args=[self.settings.result_cache_ttl_s, key],
                )
                return Hit(entry, outputs, key)
            reason = "a recorded stem vanished or changed while it was being copied"
        self.drop(key)
        self.events.info(
            f"job {job.id}: dropped the result cache entry of job {entry.job_id} (key {key[:12]}): {reason}; separating"
        )
        return None

    def record(
        self, key: str, job_id: str, outputs: dict[str, dict[str, str]], audio_seconds: float, device: str
    ) -> Entry | None:
        """Store `outputs` (stem -> {bucket, key}, just uploaded) under `key`, each with its size and ETag, and
        trim the index to RESULT_CACHE_MAX_ENTRIES. Never raises; returns the entry, or None when not recorded."""
        try:
            stems = {}
            for stem, where in outputs.items():
                found = self.store.stat(where["bucket"], where["key"])
                if found is None:
                    raise Transient(f"stem {stem} {where['bucket']}/{where['key']} vanished after its upload")
                stems[stem] = StoredStem(where["bucket"], where["key"], found[0], found[1])
            entry = Entry(
                job_id=job_id, stems=stems, audio_seconds=round(audio_seconds, 3), device=device, recorded_at=now_iso()
            )
            trimmed = self._record(
                keys=[keys.cache_entry_key(key), keys.cache_index_key()],
                args=[
                    entry.to_json(),
                    self.settings.result_cache_ttl_s,
                    key,
                    self.settings.result_cache_max_entries,
                    keys.cache_entry_prefix(),
                ],
            )
        except Interrupted:
            raise
        except (redis.RedisError, Transient) as err:
            self.events.error(f"job {job_id}: could not record its result in the cache: {err}")
            return None
        if trimmed:
            self.events.info(
                f"result cache: trimmed {trimmed} oldest entr{'y' if trimmed == 1 else 'ies'} "
                f"(RESULT_CACHE_MAX_ENTRIES={self.settings.result_cache_max_entries})"
            )
        return entry

    def entries(self) -> int:
        """How many entries the index holds (expired ones until the next record trims them)."""
        return int(self.client.zcard(keys.cache_index_key()))
