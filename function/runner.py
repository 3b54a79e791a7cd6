"""The one-shot job runner a KEDA ScaledJob pod runs: claim one message, run it through `handle`, exit.

    python -m function.runner [--max-messages N] [--reap] [--check]

Outcomes: done -> the message leaves the processing list; permanent error (bad input) -> dead-letter list
`<queue>:dead`; transient error (Redis/S3 down, crash) -> back to the head of the queue until MAX_ATTEMPTS,
then dead-letter; SIGTERM -> back to the head of the queue, exit 0. A pod that dies (OOM, eviction) stops
renewing its lease and a reaper (every runner before it claims, and `--reap` from a CronJob) requeues it;
a message that keeps killing pods is dead-lettered once its attempts pass MAX_ATTEMPTS. A runner whose lease was
reaped while it was cut off or paused is fenced: its acks and status writes are refused (LeaseLost), it lets the
message go to the runner that has it now and moves on (outcome `lease-lost`).

Exit codes: 0 when the message was handled (done or dead-lettered), requeued on SIGTERM, left to another runner
after its lease was lost, or the queue was empty; 1 when infrastructure failed (a transient error requeued the
message, or Redis failed and the message is safe in the queue or the processing list); 2 for a configuration error.

In-process API: `Runner(settings).run_once(wait_s)` processes at most one message and returns an `Outcome`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cloudevents.conversion import to_dict

from function import allocator
from function.buckets import placeholders
from function.claims import forget_claim, record_claim
from function.clients import s3_credentials
from function.clock import now_iso
from function.config import Settings, get_settings, load_settings
from function.core import ATTEMPT_ATTRIBUTE, CLAIMED_AT_ATTRIBUTE, Worker
from function.errors import (
    ConfigError,
    Interrupted,
    InvalidJob,
    LeaseLost,
    RedisUnavailable,
    StemworkerError,
    Transient,
)
from function.fencing import Fence
from function.logs import Timeline, bind_job, configure_logging, unbind_job
from function.messages import event_from_message, job_id_or_none
from function.queue import Claim, WorkQueue, dead_letter_fields
from function.renewal import Renewal
from function.status import State, StatusRecord
from function.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger("stemworker.job")


class Outcome(StrEnum):
    EMPTY = "empty"
    DONE = "done"
    DEAD = "dead-lettered"
    REQUEUED = "requeued"
    INTERRUPTED = "interrupted"
    LOST = "lease-lost"


@dataclass
class Result:
    outcome: Outcome
    job_id: str | None = None
    attempts: int = 0
    error: str | None = None
    seconds: dict[str, float] | None = None  # the job's phases, as `handle` reports them


class Heartbeat(Renewal):
    """Renews a claim's lease every third of its TTL until stopped; a failed renewal is logged and retried, a
    lease found reaped ends the renewals (the job's next status write or ack then fails with LeaseLost)."""

    def __init__(self, queue: WorkQueue, claim: Claim) -> None:
        super().__init__("lease-heartbeat", queue.lease_s, self._renew_once, min_interval_s=0.5)
        self._queue = queue
        self._claim = claim

    def _renew_once(self) -> bool:
        try:
            self._queue.renew(self._claim)
        except LeaseLost as err:
            log.error("%s", err)
            return False
        except Transient as err:
            log.warning("lease renewal failed, will retry: %s", err)
        return True


class Runner:
    """Claims messages and runs them through a Worker; owns the retry and dead-letter decisions."""

    def __init__(self, settings: Settings, worker: Worker | None = None) -> None:
        self.settings = settings
        self.worker = worker or Worker(settings)
        self.queue = WorkQueue(
            self.worker.redis,
            settings.queue_key,
            settings.queue_pop,
            settings.lease_s,
            settings.orphan_grace_s,
            settings.max_attempts,
        )
        self.events = self.worker.events
        self.stopping = False
        self._busy = False

    # SIGTERM: between jobs just stop; during a job interrupt it so the message goes back to the queue.
    def install_signal_handlers(self) -> None:
        def on_term(signum: int, frame: Any) -> None:
            self.stopping = True
            if self._busy:
                self._busy = False
                raise Interrupted(f"received signal {signum}")

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def reap(self) -> int:
        moved = self.queue.reap()
        if moved:
            self.events.info(f"reaper: requeued {moved} message(s) whose worker died")
        return moved

    def run_once(self, wait_s: float | None = None, preload: bool = False) -> Result:
        """Reap, then claim and process at most one message. With `preload`, once the reap has reached Redis, the
        default model starts loading on a worker thread, so the load overlaps the claim and the download."""
        self.reap()
        if preload:
            self.worker.preload()
        wait = self.settings.claim_wait_s if wait_s is None else wait_s
        self._busy = True
        try:
            claim = self.queue.claim(wait)
        except Interrupted:
            return Result(Outcome.INTERRUPTED)
        except LeaseLost as err:
            self.events.error(f"claim lost: {err}")
            return Result(Outcome.LOST, error=str(err))
        finally:
            self._busy = False
        if claim is None:
            return Result(Outcome.EMPTY)
        if claim.exhausted:
            return self._exhausted(claim)
        self.worker.fence = Fence(self.queue, claim)
        job_fields = bind_job(attempt=claim.attempts)  # every line of this claim carries them (function/logs.py)
        try:
            return self._process(claim)
        except LeaseLost as err:
            return self._lost(claim, err)
        finally:
            self.worker.fence = None
            unbind_job(job_fields)
            forget_claim(self.worker.redis, self.settings.queue_key, claim.token)

    def _job_id_of(self, claim: Claim) -> str | None:
        """The claim's job id, when its message has a valid one (parsing never raises past InvalidJob)."""
        try:
            return job_id_or_none(event_from_message(claim.message, self.settings.max_message_bytes))
        except InvalidJob:
            return None

    def _lost(self, claim: Claim, err: LeaseLost) -> Result:
        """The claim's lease is gone. Either the runner was cut off or paused for longer than LEASE_S and a reaper
        handed the message to another runner (nothing is acknowledged and no status is written; the runner moves
        on), or Redis lost its data (restarted without persistence, flushed, failed over to an empty replica): then
        the message and any queued ones may be gone, and that is said and counted."""
        job_id = self._job_id_of(claim)
        if self._data_lost(claim, job_id):
            return Result(Outcome.LOST, job_id, claim.attempts, f"Redis lost its data: {err}")
        self.events.error(
            f"job {job_id or '(invalid id)'}: lease lost, leaving the message to the runner that has it now: {err}"
        )
        return Result(Outcome.LOST, job_id, claim.attempts, str(err))

    def _data_lost(self, claim: Claim, job_id: str | None) -> bool:
        """Whether Redis lost its data since the claim; when it did, log it at error level and count it."""
        try:
            lost = self.queue.lost_data_since(claim)
        except Transient:
            return False
        if lost:
            self.worker.metrics.redis_data_lost()
            self.events.error(
                f"Redis lost its data since job {job_id or '(invalid id)'} was claimed (the dataset marker "
                f"{self.queue.dataset_key} is gone or new: a restart without persistence, a flush or a failover). "
                "This job's message and any queued messages may be lost: resubmit them from the REST tier. "
                "Turn on Redis persistence (appendonly yes) for the queue.",
                stage="data-lost",
                job_id=job_id,
            )
        return lost

    def _exhausted(self, claim: Claim) -> Result:
        """The claim script dead-lettered a message whose attempts were used up by runners that died with it
        (crashed, OOM-killed, evicted); now, with the message safely out of the queue, record it."""
        job_id = self._job_id_of(claim)
        reason = (
            f"crashed the runner {claim.attempts} times: every runner that claimed this message died or was "
            f"killed before it could finish or give it back (MAX_ATTEMPTS={self.settings.max_attempts})"
        )
        if job_id is not None:
            with contextlib.suppress(Transient):  # the entry is complete without it; the id only helps readers
                self.queue.name_dead_letter(claim, job_id)
            # Not fenced: the claim holds no lease, and no other runner can hold this message any more.
            self._mark_failed(self.worker.status_for(job_id), job_id, reason, claim.attempts)
        self.worker.metrics.message_outcome("dead", None)
        self.events.error(
            f"job {job_id or '(invalid id)'}: dead-lettered after {claim.attempts} attempt(s): {reason}",
            stage="dead",
            job_id=job_id,
        )
        return Result(Outcome.DEAD, job_id, claim.attempts, reason)

    def _mark_failed(self, status: StatusRecord, job_id: str, reason: str, attempts: int) -> None:
        try:
            status.update(State.FAILED, error=reason, retryable=0, attempts=attempts, failed_at=now_iso())
        except LeaseLost:
            raise
        except Transient as status_err:
            log.warning("could not mark job %s failed: %s", job_id, status_err)

    def _process(self, claim: Claim) -> Result:
        started = time.monotonic()
        try:
            event = event_from_message(claim.message, self.settings.max_message_bytes, claim.first_seen_at)
        except InvalidJob as err:
            self.events.error(f"malformed message dead-lettered: {err}", stage="dead", error_type=type(err).__name__)
            return self._dead_letter(claim, None, err, started)
        event[ATTEMPT_ATTRIBUTE] = str(claim.attempts)
        event[CLAIMED_AT_ATTRIBUTE] = now_iso()
        job_id = job_id_or_none(event)
        bind_job(job_id=job_id, event_id=event.get("id"))  # undone by run_once with the attempt's binding
        record_claim(
            self.worker.redis, self.settings, claim.token, claim.message, claim.attempts, job_id, self.worker.metrics
        )  # who runs it, and how long it waited (function/claims.py)
        self.events.info(
            f"claimed job {job_id or '(invalid id)'} (attempt {claim.attempts}/{self.settings.max_attempts})",
            stage="claimed",
            job_id=job_id,
        )
        heartbeat = Heartbeat(self.queue, claim)
        heartbeat.start()
        try:
            self._busy = True
            if self.stopping:
                raise Interrupted("stopping before the job started")
            handled = self.worker.handle(event)
            self._busy = False
        except LeaseLost:
            self._busy = False
            heartbeat.stop()
            raise
        except Interrupted as err:
            self._busy = False
            heartbeat.stop()
            self.queue.requeue(claim, count_attempt=False)
            self.worker.metrics.message_outcome("interrupted", event)
            self.events.info(
                f"job {job_id}: interrupted ({err}); message requeued after {time.monotonic() - started:.2f} s",
                stage="interrupted",
                duration_s=time.monotonic() - started,
                error_type=type(err).__name__,
            )
            return Result(Outcome.INTERRUPTED, job_id, claim.attempts, str(err))
        except Exception as caught:
            self._busy = False
            heartbeat.stop()
            # A bug must not kill the runner: it is retried like a dependency failure, then dead-lettered.
            failure = (
                caught
                if isinstance(caught, StemworkerError)
                else Transient(f"internal error: {type(caught).__name__}: {str(caught)[:300]}")
            )
            if failure.permanent or claim.attempts >= self.settings.max_attempts:
                return self._dead_letter(claim, event, failure, started, job_id, mark_status=not failure.permanent)
            self.queue.requeue(claim)
            self.worker.metrics.message_outcome("requeued", event)
            self.events.info(
                f"job {job_id}: requeued after a transient error, attempt {claim.attempts}/"
                f"{self.settings.max_attempts} ({time.monotonic() - started:.2f} s): {failure}",
                stage="requeued",
                duration_s=time.monotonic() - started,
                error_type=type(failure).__name__,
            )
            return Result(Outcome.REQUEUED, job_id, claim.attempts, str(failure))
        heartbeat.stop()
        self.queue.complete(claim)
        return Result(Outcome.DONE, job_id, claim.attempts, seconds=handled.get("seconds"))

    def _dead_letter(
        self,
        claim: Claim,
        event: Any,
        err: StemworkerError,
        started: float,
        job_id: str | None = None,
        mark_status: bool = False,
    ) -> Result:
        """Dead-letter the claim with a bounded entry: the message's first few KB, its size and digest (the event
        only when the message was kept whole)."""
        fields = dead_letter_fields(claim.message)
        entry: dict[str, Any] = {
            **fields,
            "event": _event_dict(event) if event is not None and not fields["truncated"] else None,
            "job_id": job_id,
            "error": str(err)[:2000],
            "error_type": type(err).__name__,
            "permanent": err.permanent,
            "attempts": claim.attempts,
            "first_seen_at": claim.first_seen_at,
            "failed_at": now_iso(),
        }
        if mark_status and job_id is not None:
            self._mark_failed(self.worker.status_for(job_id), job_id, str(err), claim.attempts)
        self.queue.dead_letter(claim, entry)
        self.worker.metrics.message_outcome("dead", event)
        self.events.error(
            f"job {job_id or '(invalid id)'}: dead-lettered after {claim.attempts} attempt(s) "
            f"({time.monotonic() - started:.2f} s): {err}",
            stage="dead",
            duration_s=time.monotonic() - started,
            error_type=type(err).__name__,
        )
        return Result(Outcome.DEAD, job_id, claim.attempts, str(err))


def _event_dict(event: Any) -> dict[str, Any] | None:
    """The event as a JSON-ready dict for a dead-letter entry (bytes data as text), or None when it has none."""
    try:
        entry: dict[str, Any] = to_dict(event)
    except Exception:  # the entry is a record of a failure: it never fails itself
        return None
    if isinstance(entry.get("data"), bytes):
        entry["data"] = entry["data"].decode("utf-8", "replace")
    return entry


def redis_hint(err: Transient, settings: Settings) -> str:
    """A pointer to the settings to check when Redis could not be reached."""
    if not isinstance(err, RedisUnavailable):
        return ""
    where = (
        "REDIS_URL"
        if settings.redis_url is not None
        else f"REDIS_HOST={settings.redis_host} REDIS_PORT={settings.redis_port}"
    )
    return f" Is Redis running where the settings say ({where})? Set REDIS_URL, or REDIS_HOST and REDIS_PORT."


def check(settings: Settings) -> list[str]:
    """Readiness problems (empty when Redis and S3 answer)."""
    problems = []
    worker = Worker(settings)
    try:
        worker.redis.ping()
    except Exception as err:  # any failure is a problem to report, not to raise
        problems.append(f"redis: {type(err).__name__}")
    try:
        if placeholders(settings.output_bucket):  # a bucket per job (`{id}`): there is no one bucket to make
            worker.store.reachable()
        else:
            worker.store.ensure_bucket(settings.output_bucket)
    except Transient as err:
        problems.append(f"s3: {err}")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stemworker-runner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--max-messages",
        type=int,
        default=None,
        help="messages to process before exiting (env MAX_MESSAGES, default 1)",
    )
    parser.add_argument(
        "--reap",
        action="store_true",
        default=None,
        help="only requeue messages whose worker died, then exit (env REAP_ONLY=1)",
    )
    parser.add_argument("--check", action="store_true", help="check Redis and S3, exit 0 when both answer")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, timeline: Timeline | None = None) -> int:
    timeline = timeline or Timeline()
    args = parse_args(argv)
    try:
        settings = get_settings() if argv is None else load_settings()
        s3_credentials(settings)  # no default credentials: a missing Secret stops the pod here, exit 2
    except ConfigError as err:
        print(f"stemworker-runner: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    configure_tracing()  # OTEL_EXPORTER_OTLP_ENDPOINT set: spans over OTLP (function/tracing.py)
    allocator.apply(settings.malloc_reuse)  # before the model and the first chunk allocate (function/allocator.py)
    timeline.mark("settings")
    max_messages = args.max_messages if args.max_messages is not None else settings.max_messages
    reap_only = args.reap or settings.reap_only
    if args.check:
        problems = check(settings)
        print("ok" if not problems else "; ".join(problems))
        return 0 if not problems else 1
    runner = Runner(settings)
    runner.install_signal_handlers()
    timeline.mark("clients")
    try:
        if reap_only:
            print(f"requeued {runner.reap()}")
            return 0
        for index in range(max(1, max_messages)):
            if runner.stopping:
                break
            result = runner.run_once(preload=index == 0)
            timeline.mark("message")
            if result.seconds:
                timeline.jobs.append(result.seconds)
            log.info(
                "outcome %s job=%s attempts=%s",
                result.outcome,
                result.job_id,
                result.attempts,
                extra={"job_id": result.job_id, "attempt": result.attempts, "outcome": str(result.outcome)},
            )
            if result.outcome is Outcome.REQUEUED:
                # A dependency failed; the message is back in the queue for another pod.
                log.error("infrastructure failure, exiting 1 (message requeued): %s", result.error)
                return 1
            if result.outcome in (Outcome.EMPTY, Outcome.INTERRUPTED):
                break
    except Transient as err:
        log.error(
            "infrastructure failure, exiting 1: %s. A claimed message stays in the queue or the processing "
            "list as long as Redis keeps its data; a later runner reports it if Redis lost it.%s",
            err,
            redis_hint(err, settings),
        )
        return 1
    return 0


def cli() -> None:
    """Console entry point: run `main`, then exit at once. Every job's writes are finished and acknowledged by
    then, so skipping the interpreter's teardown (freeing torch and the model, ~0.5 s) loses nothing."""
    timeline = Timeline()
    timeline.mark("imports")
    code = main(timeline=timeline)
    log.info(timeline.line())  # where this pod's start-up went (bench.run and bench.cold_start read it)
    shutdown_tracing()  # os._exit skips atexit: export the buffered spans first
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
