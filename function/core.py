"""`handle(event)`: one whole separation per CloudEvent.

The one path: parse, fetch, separate, store, record, notify. Each call is independent; the loaded
model (and the clients) are the only things kept between calls in one process.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from cloudevents.http import CloudEvent

from function import audio, separation
from function.buckets import render_bucket
from function.cache import ResultCache
from function.callback import deliver
from function.claims import pod_name
from function.clients import redis_client, s3_client
from function.clock import now_iso
from function.config import Settings, get_settings
from function.errors import InvalidJob, StemworkerError, Transient, UnprocessableInput
from function.keys import status_key
from function.logs import job_context
from function.messages import Job, event_id_or_none, job_from_event, job_id_or_none, save_event
from function.metrics import Recorder
from function.outputs import publish, published_names
from function.status import EventLog, State, StatusRecord
from function.storage import CONTENT_TYPES, ObjectStore, input_key, output_key
from function.tracing import job_span, span

if TYPE_CHECKING:
    from function.fencing import Fence

ATTEMPT_ATTRIBUTE = "attempt"
# When the job runner claimed the message (UTC ISO 8601); absent for an event that came over HTTP.
CLAIMED_AT_ATTRIBUTE = "claimedat"


def attempt_of(event: CloudEvent) -> int:
    """The delivery attempt the job runner stamped on the event (1 when absent)."""
    raw = event.get(ATTEMPT_ATTRIBUTE)
    try:
        return max(1, int(str(raw))) if raw is not None else 1
    except ValueError:
        return 1


def pick_stems(stems: dict[str, torch.Tensor], job: Job) -> dict[str, torch.Tensor]:
    """The stems the job asked for; `two_stems: X` gives X and `no_X` (the sum of the others)."""
    if job.two_stems is not None:
        others = [wav for name, wav in stems.items() if name != job.two_stems]
        rest = torch.stack(others).sum(0) if others else torch.zeros_like(stems[job.two_stems])
        return {job.two_stems: stems[job.two_stems], f"no_{job.two_stems}": rest}
    if job.stems is not None:
        return {name: stems[name] for name in job.stems}
    return stems


@dataclass(frozen=True)
class Stems:
    """The job's stems in place, however they were produced: separated here, or copied from the identical job
    `cached_from` by the result cache. `device` is where they were separated."""

    outputs: dict[str, Any]  # stem -> {bucket, key} (plus `keys` when STEM_ALIASES gives it several names)
    audio_seconds: float
    device: str
    precision: str
    cached_from: str | None = None
    cache_key: str | None = None


def claimed_at_ns(event: CloudEvent) -> int | None:
    """When the job runner claimed the event's message, in Unix nanoseconds (None over HTTP)."""
    stamp = event.get(CLAIMED_AT_ATTRIBUTE)
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp() * 1e9) if stamp else None
    except ValueError:
        return None


class Worker:
    """Holds the clients for one configuration; `handle` runs one job."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.store = ObjectStore(s3_client(settings))
        self.events = EventLog(self.redis, settings.log_key)
        self.metrics = Recorder(self.redis, settings)
        self.cache = ResultCache(self.redis, self.store, self.events, settings)
        # The model load and the stems' encode+upload run here. LAME releases the GIL, so each stem encodes on a
        # core of its own: a thread per stem (4) at least, the host's cores where it has more (a stem's LAME stream
        # is sequential, so one job keeps at most one thread per stem busy).
        self._pool = ThreadPoolExecutor(max_workers=max(4, separation.cpu_threads()), thread_name_prefix="stemworker")
        # Set by the job runner while it holds a claim: status writes then need the claim's lease (fencing.py).
        self.fence: Fence | None = None

    def preload(self) -> None:
        """Start loading the default model on the pool now (the job runner calls this before it claims), so the
        load overlaps the claim and the download; a job finds it loaded, or waits for the load in progress. A failed
        load is not reported here: the job's own load raises it again."""
        self._pool.submit(separation.get_separator, self.settings.demucs_model, self.settings)

    def _submit(self, fn: Any, *args: Any) -> Any:
        """Run `fn` on the pool in a copy of this context, so its log lines carry the job's fields."""
        return self._pool.submit(contextvars.copy_context().run, fn, *args)

    def status_for(self, job_id: str) -> StatusRecord:
        s = self.settings
        key = status_key(s.status_key, job_id)
        keep_expiry = not s.status_ttl_explicit
        if self.fence is not None:
            return self.fence.status_record(
                self.redis, key, s.status_ttl_s, s.state_fields, keep_expiry=keep_expiry, state_map=s.state_map
            )
        return StatusRecord(
            self.redis, key, s.status_ttl_s, s.state_fields, keep_expiry=keep_expiry, state_map=s.state_map
        )

    def handle(self, event: CloudEvent) -> dict[str, Any]:
        """Separate the song the event names; raises a StemworkerError subclass on failure. Every log line of the
        call carries the job's id, attempt and event id (function/logs.py)."""
        job_id, attempt, event_id = job_id_or_none(event), attempt_of(event), event_id_or_none(event)
        attributes = {"stemworker.job_id": job_id, "stemworker.attempt": attempt, "cloudevents.event_id": event_id}
        with (
            job_context(job_id=job_id, attempt=attempt, event_id=event_id),
            job_span(event.get_attributes(), claimed_at_ns(event), **attributes),
        ):
            return self._handle(event)

    def _handle(self, event: CloudEvent) -> dict[str, Any]:
        started = time.monotonic()
        attempt = attempt_of(event)
        self.events.info(
            f"received event {event_id_or_none(event) or '(invalid id)'} (attempt {attempt})", stage="received"
        )
        if self.settings.save_events_dir is not None:
            try:
                save_event(event, self.settings.save_events_dir)
            except Exception as err:  # a debugging copy never fails the job
                self.events.error(f"could not save event {event_id_or_none(event)}: {type(err).__name__}: {err}")
        try:
            job = job_from_event(event, self.settings)
        except InvalidJob as err:
            self._reject(event, err, attempt)
            raise
        for note in job.notes:
            self.events.info(f"job {job.id}: {note}")
        status = self.status_for(job.id)
        published = self._published_before(status, job)
        status.start(
            model=job.model,
            model_requested=job.model_requested or job.model,
            format=job.format,
            attempts=attempt,
            event_id=job.event_id,
            published=json.dumps(published) if published else None,
            pod=pod_name(self.settings),
            claimed_at=event.get(CLAIMED_AT_ATTRIBUTE) or now_iso(),
        )
        self.metrics.job_started(job.id)
        timings: dict[str, float] = {}
        try:
            stems = self._produce(job, status, timings, published)
        except StemworkerError as err:
            self._finish(job, status, attempt, started, timings, err)
            raise
        except Exception as err:  # a bug must not lose the job: it becomes retryable, then dead-letters
            wrapped = Transient(f"internal error: {type(err).__name__}: {err}")
            self._finish(job, status, attempt, started, timings, wrapped)
            raise wrapped from err
        return self._finish(job, status, attempt, started, timings, stems)

    @staticmethod
    def _published_before(status: StatusRecord, job: Job) -> dict[str, Any]:
        """The stems an earlier attempt of this same submission (same event id) published before it died: they are
        still in the output bucket, so the status keeps listing them (`published`) until this attempt ends."""
        try:
            record = status.read()
            if record.get("event_id") != job.event_id or not record.get("published"):
                return {}
            earlier = json.loads(record["published"])
        except (Transient, ValueError):
            return {}
        return earlier if isinstance(earlier, dict) else {}

    def _reject(self, event: CloudEvent, err: InvalidJob, attempt: int) -> None:
        job_id = job_id_or_none(event)
        self.events.error(
            f"job {job_id or '(invalid id)'} rejected: {err}", stage="failed", error_type=type(err).__name__
        )
        if job_id is not None:
            self.metrics.job_failed(job_id, None, err)
            self.status_for(job_id).start(
                state=State.FAILED,
                error=str(err),
                attempts=attempt,
                event_id=event_id_or_none(event),
                failed_at=now_iso(),
            )

    def _finish(
        self,
        job: Job,
        status: StatusRecord,
        attempt: int,
        started: float,
        timings: dict[str, float],
        ending: Stems | StemworkerError,
    ) -> dict[str, Any]:
        """The one way a parsed job ends, whatever produced its stems (a separation, the result cache) or stopped
        it: one status write, one log line, one metrics record, one callback body. Returns the result (for a
        failure, the body a plain-URL callback gets)."""
        timings["total"] = time.monotonic() - started
        if isinstance(ending, StemworkerError):
            self.events.error(
                f"job {job.id}: failed after {timings['total']:.2f} s: {ending}",
                stage="failed",
                duration_s=timings["total"],
                error_type=type(ending).__name__,
            )
            self.metrics.job_failed(job.id, job.model, ending)
            try:
                status.update(State.FAILED, error=str(ending), retryable=int(not ending.permanent))
            except Transient as status_err:
                self.events.error(f"job {job.id}: could not record the failure: {status_err}")
            failure: dict[str, Any] = {"id": job.id, "state": State.FAILED.value, "error": str(ending)}
            if ending.permanent and job.callback is not None and not job.callback.has_data:
                failure["callback"] = self._notify(job, failure)
            return failure
        source = ending.cached_from
        status.update(
            State.DONE,
            progress=100,
            outputs=json.dumps(ending.outputs),
            seconds=f"{timings['total']:.3f}",
            audio_seconds=f"{ending.audio_seconds:.3f}",
            device=ending.device,
            precision=ending.precision,
            cached=1 if source is not None else None,
            cached_from=source,
            published=json.dumps(ending.outputs),
        )
        origin = (
            ""
            if source is None
            else (
                f" from the result cache (same input and settings as job {source}, key {(ending.cache_key or '')[:12]})"
            )
        )
        self.events.info(
            f"job {job.id}: done in {timings['total']:.2f} s{origin}", stage="done", duration_s=timings["total"]
        )
        self.metrics.job_done(job.id, job.model, timings, ending.audio_seconds, cached=source is not None)
        result = {
            "id": job.id,
            "state": State.DONE.value,
            "model": job.model,
            "model_requested": job.model_requested or job.model,
            "format": job.format,
            "device": ending.device,
            "precision": ending.precision,
            "attempt": attempt,
            "audio_seconds": round(ending.audio_seconds, 3),
            "stems": ending.outputs,
            "cached": source is not None,
            "cached_from": source,
            "seconds": {name: round(value, 3) for name, value in timings.items()},
        }
        if job.callback is not None:
            result["callback"] = self._notify(job, job.callback.data if job.callback.has_data else result)
        return result

    def _notify(self, job: Job, body: Any) -> dict[str, Any]:
        assert job.callback is not None
        with span("callback") as current:
            outcome = deliver(job.callback, body, job.event_id, self.settings)
            current.set_attribute("http.response.status_code", outcome.status or 0)
        line = f"job {job.id}: callback {outcome.reason} (attempts {outcome.attempts}, status {outcome.status})"
        (self.events.info if outcome.delivered else self.events.error)(line, stage="callback")
        self.metrics.callback(outcome.delivered, outcome.reason)
        return {"delivered": outcome.delivered, "status": outcome.status, "reason": outcome.reason}

    def _produce(self, job: Job, status: StatusRecord, timings: dict[str, float], published: dict[str, Any]) -> Stems:
        """The job's stems, uploaded to its keys: copied from the result cache, or separated, encoded and uploaded
        (then recorded in the cache). Adds each stage's seconds to `timings`; `published` is what earlier attempts
        of this submission left in the output bucket."""
        s = self.settings
        model_loading = self._submit(separation.get_separator, job.model, s)
        # Templated buckets (`{id}`) are rendered once, before any I/O: a job whose id gives no valid name is refused.
        source_bucket = job.input_bucket or render_bucket("INPUT_BUCKET", s.input_bucket, id=job.id)
        output_bucket = render_bucket("OUTPUT_BUCKET", s.output_bucket, id=job.id, model=job.model, ext=job.format)
        source_key = job.input_key or input_key(s.input_key, job.id)
        with tempfile.TemporaryDirectory(prefix=f"stemworker-{job.id}-") as tmp, contextlib.ExitStack() as cleanup:
            status.update(State.DOWNLOADING)
            tick = time.monotonic()
            sha256 = hashlib.sha256()  # fed as the input streams in: the cache key and the seed cost no extra read
            with span("download", **{"s3.bucket": source_bucket, "s3.key": source_key}):
                size = self.store.download(source_bucket, source_key, Path(tmp) / "input", s.max_input_bytes, sha256)
            timings["download"] = time.monotonic() - tick
            self.events.info(
                f"job {job.id}: downloaded {source_bucket}/{source_key} ({size} bytes)",
                stage="downloading",
                duration_s=timings["download"],
            )
            device = separation.resolve_device(s.demucs_device)
            precision = separation.job_precision(s, device)
            tick = time.monotonic()
            flight = cleanup.enter_context(self.cache.begin(job, sha256.hexdigest(), device, precision, status))
            timings["cache"] = time.monotonic() - tick
            if flight.hit is not None:
                # the key holds the precision, so the copied stems were made with this one
                entry = flight.hit.entry
                return Stems(
                    flight.hit.outputs,
                    entry.audio_seconds,
                    entry.device,
                    precision,
                    cached_from=entry.job_id,
                    cache_key=flight.hit.key,
                )
            tick = time.monotonic()
            separator = model_loading.result()
            timings["model_wait"] = time.monotonic() - tick
            wanted = job.stems or ((job.two_stems,) if job.two_stems else ())
            missing = [name for name in wanted if name not in separator.model.sources]
            if missing:
                raise UnprocessableInput(
                    f"model {job.model} has no stems {missing}; its stems are {list(separator.model.sources)}"
                )
            tick = time.monotonic()
            # Decoded chunk by chunk to a raw file in the work dir, read back a chunk at a time by the separation:
            # memory does not grow with the song (issue 23); disk use is in docs/performance.md.
            with span("decode"):
                wav = audio.decode_to_file(
                    Path(tmp) / "input",
                    Path(tmp) / "mix.f32",
                    separator.samplerate,
                    separator.audio_channels,
                    s.max_duration_s,
                )
            (Path(tmp) / "input").unlink()
            timings["decode"] = time.monotonic() - tick
            audio_seconds = wav.frames / separator.samplerate
            status.update(
                State.SEPARATING, progress=0, device=device, precision=precision, audio_seconds=f"{audio_seconds:.3f}"
            )
            self.events.info(
                f"job {job.id}: separating {audio_seconds:.1f} s of audio with {job.model} on {device}",
                stage="separating",
            )
            tick = time.monotonic()
            # Stems go to raw files in the temp dir as they are separated: memory stays bounded by the song's
            # input, not 4 stems at full length (issue 7).
            try:
                with span(
                    "separate",
                    **{
                        "stemworker.model": job.model,
                        "stemworker.device": device,
                        "stemworker.audio_seconds": round(audio_seconds, 3),
                    },
                ):
                    stems = separation.separate_to_files(
                        separator,
                        wav,
                        s.demucs_shifts,
                        lambda p: status.update(progress=p),
                        Path(tmp),
                        pick=lambda separated: pick_stems(separated, job),
                        precision=precision,
                        seed=separation.seed_of(sha256.hexdigest()),
                    )
            except OSError as err:
                raise Transient(f"cannot write separated stems to the temp dir: {err}") from None
            wav.unlink()
            timings["separate"] = time.monotonic() - tick
            status.update(State.UPLOADING, progress=100)
            tick = time.monotonic()
            outputs = self._store_stems(job, stems, Path(tmp), separator.samplerate, output_bucket, status, published)
            timings["encode_upload"] = time.monotonic() - tick
            flight.record(outputs, audio_seconds, device)  # before the lock is released: waiters find it
        return Stems(outputs, audio_seconds, device, precision)

    def _store_stems(
        self,
        job: Job,
        stems: dict[str, audio.StemFile],
        tmp: Path,
        samplerate: int,
        bucket: str,
        status: StatusRecord,
        published: dict[str, Any],
    ) -> dict[str, Any]:
        """Encode (chunk by chunk, from each stem's raw file) and upload every stem concurrently to `bucket`; returns
        stem -> {bucket, key} (plus `keys` when STEM_ALIASES gives it several names). Each stem is added to the
        status's `published` as soon as it is in the bucket, so a job that dies or fails half-way through its
        uploads says which of its outputs exist."""
        s = self.settings
        self.store.ensure_bucket(bucket)
        published = dict(published)
        lock = threading.Lock()

        def record(stem: str, entry: dict[str, Any]) -> None:
            with lock:
                published[stem] = entry
                status.update(published=json.dumps(published))

        def encode_and_upload(stem: str, raw: audio.StemFile) -> tuple[str, dict[str, Any]]:
            path = tmp / f"{stem}.{job.format}"
            try:
                with span("encode", **{"stemworker.stem": stem, "stemworker.format": job.format}):
                    audio.encode_file(raw, path, samplerate, s.mp3_bitrate, s.mp3_preset)
            except OSError as err:
                raise Transient(f"cannot write stem {stem} to the temp dir: {err}") from None
            finally:
                raw.unlink()
            keys = [
                output_key(s.output_key, job.id, name, job.format, job.model)
                for name in published_names(s.stem_aliases, stem)
            ]
            with span("upload", **{"stemworker.stem": stem, "s3.bucket": bucket}):
                entry = publish(self.store, bucket, keys, path, CONTENT_TYPES[job.format])
            path.unlink()
            record(stem, entry)
            self.events.info(f"job {job.id}: uploaded {stem} to {bucket}/{', '.join(keys)}", stage="uploading")
            return stem, entry

        futures = [self._submit(encode_and_upload, stem, raw) for stem, raw in stems.items()]
        return dict(future.result() for future in futures)


_default_worker: Worker | None = None


def default_worker() -> Worker:
    """The process-wide worker built from the environment (settings read once)."""
    global _default_worker
    if _default_worker is None:
        _default_worker = Worker(get_settings())
    return _default_worker


def handle(event: CloudEvent) -> dict[str, Any]:
    """Separate the song named by `event` end to end and return where each stem went."""
    return default_worker().handle(event)
