"""What the worker records for operators at each job, and the Prometheus collector that reads it back.

Job-runner pods live for one job, so nothing can scrape them. As rq-exporter does, each job adds to counters
and histogram buckets in Redis (HINCRBY on three hashes, in one MULTI/EXEC) and a long-running process serves
`/metrics` from them: `stemworker exporter` (stemops/exporter.py), or `/metrics` of the HTTP adapter
(function/main.py). Every record is bounded in size: fixed bucket bounds, outcomes, stages and callback
results from fixed lists, and models limited to the allowed ones (any other name is recorded as `other`).

Hashes (`keys.metrics_key(queue, name)`):
- `counters`: `jobs|<outcome>|<model>`, `audio_seconds|<model>` (separated, so cache hits add none),
  `cache_hits|<model>` (jobs done from the result cache), `callbacks|<result>`;
- `durations`: `<stage>|<model>|<le>` (observations in that bucket alone, not cumulative), `<stage>|<model>|sum`;
- `rtf`: `<model>|<le>`, `<model>|sum` (real-time factor: separate seconds / audio seconds);
- `queue_wait`: `<le>`, `sum` (seconds a job's message waited before its first claim; function/claims.py).

Outcomes: `done` and `failed` count `Worker.handle` calls (every attempt ends in one of them, except one
interrupted by SIGTERM); `requeued` (after a transient failure), `interrupted` (SIGTERM) and `dead` count
what the job runner did with a message, so one job that failed twice and then succeeded adds failed 2,
requeued 2, done 1.

The recent-jobs index (`keys.recent_jobs_key(queue)`) is a sorted set of job ids scored by the Unix time of
their latest start or end, trimmed to RECENT_JOBS_MAX ids, none older than RECENT_JOBS_MAX_AGE_S; `stemworker
jobs` reads it instead of scanning the keyspace.

Recording is best effort: a Redis failure is logged on stderr and never fails a job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import redis
from cloudevents.http import CloudEvent
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from function import keys
from function.claims import QUEUE_WAIT_BUCKETS_S, queue_wait_key
from function.config import Settings
from function.deadline import DeadlineExceeded, run_within
from function.errors import Interrupted, InvalidJob, StemworkerError
from function.messages import job_from_event, job_id_or_none
from function.queue import WorkQueue

log = logging.getLogger("stemworker.metrics")

OUTCOMES = ("done", "failed", "requeued", "interrupted", "dead")
STAGES = ("download", "decode", "separate", "encode_upload", "total")
CALLBACK_RESULTS = ("delivered", "failed", "skipped")
OTHER_MODEL = "other"
# Upper bounds of the histogram buckets (+Inf is implied). Seconds: a 3 s clip on a tiny model to a 20-minute
# song on a slow CPU. Real-time factor: 0.05 (a GPU) to 10 (a loaded CPU).
DURATION_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
INF = "+Inf"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def bucket_of(value: float, bounds: tuple[float, ...]) -> str:
    """The `le` label of the smallest bucket holding `value`."""
    for bound in bounds:
        if value <= bound:
            return str(floatToGoString(bound))
    return INF


def callback_result(delivered: bool, reason: str) -> str:
    """`delivered`, `skipped` (the URL was refused before any request) or `failed`."""
    if delivered:
        return "delivered"
    return "skipped" if reason.startswith("skipped") else "failed"


class Recorder:
    """Writes one job's counters, histogram buckets and index entry; never raises."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        queue = settings.queue_key
        self._counters = keys.metrics_key(queue, "counters")
        self._durations = keys.metrics_key(queue, "durations")
        self._rtf = keys.metrics_key(queue, "rtf")
        self._recent = keys.recent_jobs_key(queue)

    def model_label(self, model: str | None) -> str:
        return model if model in self._settings.allowed_models else OTHER_MODEL

    def _apply(self, what: str, write: Callable[[Any], None]) -> None:
        try:
            with self._client.pipeline(transaction=True) as pipe:
                write(pipe)
                pipe.execute()
        except redis.RedisError as err:
            log.warning("could not record %s in Redis: %s", what, err)

    def _index(self, pipe: Any, job_id: str, only_existing: bool = False) -> None:
        now = time.time()
        pipe.zadd(self._recent, {job_id: now}, xx=only_existing)
        pipe.zremrangebyscore(self._recent, "-inf", now - self._settings.recent_jobs_max_age_s)
        pipe.zremrangebyrank(self._recent, 0, -self._settings.recent_jobs_max - 1)

    def job_started(self, job_id: str) -> None:
        self._apply(f"the start of job {job_id}", lambda pipe: self._index(pipe, job_id))

    def job_done(
        self, job_id: str, model: str, timings: Mapping[str, float], audio_seconds: float, cached: bool = False
    ) -> None:
        """A job done: separated, or served from the result cache (`cached`, which separated no audio)."""
        label = self.model_label(model)

        def write(pipe: Any) -> None:
            pipe.hincrby(self._counters, f"jobs|done|{label}", 1)
            if cached:
                pipe.hincrby(self._counters, f"cache_hits|{label}", 1)
            else:
                pipe.hincrbyfloat(self._counters, f"audio_seconds|{label}", audio_seconds)
            for stage in STAGES:
                if stage in timings:
                    seconds = timings[stage]
                    pipe.hincrby(self._durations, f"{stage}|{label}|{bucket_of(seconds, DURATION_BUCKETS_S)}", 1)
                    pipe.hincrbyfloat(self._durations, f"{stage}|{label}|sum", seconds)
            if audio_seconds > 0 and "separate" in timings:
                rtf = timings["separate"] / audio_seconds
                pipe.hincrby(self._rtf, f"{label}|{bucket_of(rtf, RTF_BUCKETS)}", 1)
                pipe.hincrbyfloat(self._rtf, f"{label}|sum", rtf)
            self._index(pipe, job_id)

        self._apply(f"job {job_id} done", write)

    def job_failed(self, job_id: str, model: str | None, err: StemworkerError) -> None:
        """An attempt that ended in an error; an interrupted one only moves the job in the index."""

        def write(pipe: Any) -> None:
            if not isinstance(err, Interrupted):
                pipe.hincrby(self._counters, f"jobs|failed|{self.model_label(model)}", 1)
            self._index(pipe, job_id)

        self._apply(f"job {job_id} failed", write)

    def message_outcome(self, outcome: str, event: CloudEvent | None) -> None:
        """What the job runner did with a message (`requeued`, `interrupted`, `dead`); `event` is None for a
        message that is not a CloudEvent at all."""
        job_id = job_id_or_none(event) if event is not None else None
        model = None
        if event is not None:
            with contextlib.suppress(InvalidJob):  # a malformed job has no model: it counts as `other`
                model = job_from_event(event, self._settings).model

        def write(pipe: Any) -> None:
            pipe.hincrby(self._counters, f"jobs|{outcome}|{self.model_label(model)}", 1)
            if job_id is not None:
                self._index(pipe, job_id, only_existing=True)

        self._apply(f"a message {outcome}", write)

    def redis_data_lost(self) -> None:
        """A runner found that Redis lost its data while it held a claim (written into the new, empty dataset)."""
        self._apply("a Redis data loss", lambda pipe: pipe.hincrby(self._counters, "redis_data_loss", 1))

    def queue_wait(self, seconds: float) -> None:
        """How long a job's message waited in the queue before its first claim."""
        key = queue_wait_key(self._settings.queue_key)

        def write(pipe: Any) -> None:
            pipe.hincrby(key, bucket_of(seconds, QUEUE_WAIT_BUCKETS_S), 1)
            pipe.hincrbyfloat(key, "sum", seconds)

        self._apply("a queue wait", write)

    def callback(self, delivered: bool, reason: str) -> None:
        result = callback_result(delivered, reason)
        self._apply("a callback", lambda pipe: pipe.hincrby(self._counters, f"callbacks|{result}", 1))


def _text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _histograms(
    fields: Mapping[str, str], bounds: tuple[float, ...], key_parts: int
) -> dict[tuple[str, ...], tuple[list[tuple[str, float]], float]]:
    """Cumulative buckets and sum per label tuple from `<labels...>|<le>` / `<labels...>|sum` fields."""
    les = [floatToGoString(b) for b in bounds] + [INF]
    counts: dict[tuple[str, ...], dict[str, float]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for field, value in fields.items():
        parts = field.split("|")
        if len(parts) != key_parts + 1:
            continue
        labels, last = tuple(parts[:-1]), parts[-1]
        if last == "sum":
            sums[labels] = float(value)
        elif last in les:
            counts.setdefault(labels, {})[last] = float(value)
    result = {}
    for labels, by_le in counts.items():
        running, buckets = 0.0, []
        for le in les:
            running += by_le.get(le, 0.0)
            buckets.append((le, running))
        result[labels] = (buckets, sums.get(labels, 0.0))
    return result


class ScrapeTimeout(Exception):
    """Redis did not answer a scrape within its budget."""


# Scrapes of one collector waiting on Redis at once; a further one fails at once instead of adding a thread.
MAX_SCRAPES_IN_FLIGHT = 4


class MetricsCollector(Collector):
    """Reads the queue lengths and the recorded hashes from Redis on every scrape and yields them as metric
    families. A failed read yields only `stemworker_redis_up 0` and the scrape-error counter, so a scrape
    never answers 500. With `budget_s`, a scrape whose reads have not finished within that many seconds also
    answers that way, whatever Redis does (the reads go on in a daemon thread until their socket timeouts end
    them). Subclasses add gauges by extending `families`."""

    def __init__(self, client: redis.Redis, settings: Settings, budget_s: float | None = None) -> None:
        self.client = client
        self.settings = settings
        self.queue = WorkQueue(client, settings.queue_key)
        self.budget_s = budget_s
        self.scrape_errors = 0
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES_IN_FLIGHT)

    def _families_within_budget(self) -> list[Metric]:
        if self.budget_s is None:
            return list(self.families())
        if not self._slots.acquire(blocking=False):
            raise ScrapeTimeout(f"{MAX_SCRAPES_IN_FLIGHT} earlier scrapes are still waiting on Redis")

        def read() -> list[Metric]:
            try:
                return list(self.families())
            finally:
                self._slots.release()

        try:
            return run_within(read, self.budget_s, "metrics-scrape")
        except DeadlineExceeded:
            raise ScrapeTimeout(f"Redis did not answer within the scrape budget of {self.budget_s:g} s") from None

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families_within_budget()
            up = 1
        except Exception as err:  # any failure is counted and reported, never a 500 for the scraper
            self.scrape_errors += 1
            log.warning("metrics scrape failed: %s: %s", type(err).__name__, err)
            families, up = [], 0
        yield from families
        yield GaugeMetricFamily("stemworker_redis_up", "1 when the last scrape read Redis, else 0", value=up)
        yield CounterMetricFamily(
            "stemworker_exporter_scrape_errors",
            "Scrapes that could not read Redis (or failed otherwise)",
            value=self.scrape_errors,
        )

    def models(self) -> list[str]:
        return sorted(self.settings.allowed_models)

    def families(self) -> Iterator[Metric]:
        queued, processing, dead = self.queue.lengths()
        with self.client.pipeline(transaction=True) as pipe:
            for name in ("counters", "durations", "rtf", "queue_wait"):
                pipe.hgetall(keys.metrics_key(self.settings.queue_key, name))
            counters, durations, rtf, queue_wait = (_text(raw) for raw in pipe.execute())
        yield GaugeMetricFamily("stemworker_queue_waiting", "Messages waiting in the queue", value=queued)
        yield GaugeMetricFamily(
            "stemworker_queue_processing",
            "Messages claimed by a runner and not finished (the processing list)",
            value=processing,
        )
        yield GaugeMetricFamily("stemworker_queue_dead", "Entries in the dead-letter list", value=dead)
        yield from self._counter_families(counters)
        durations_family = HistogramMetricFamily(
            "stemworker_job_duration_seconds", "Seconds per stage of each job done", labels=["stage", "model"]
        )
        for labels, (buckets, total) in sorted(_histograms(durations, DURATION_BUCKETS_S, 2).items()):
            durations_family.add_metric(list(labels), buckets, total)
        yield durations_family
        rtf_family = HistogramMetricFamily(
            "stemworker_realtime_factor", "Separation seconds per second of audio, per job done", labels=["model"]
        )
        for labels, (buckets, total) in sorted(_histograms(rtf, RTF_BUCKETS, 1).items()):
            rtf_family.add_metric(list(labels), buckets, total)
        yield rtf_family
        wait_family = HistogramMetricFamily(
            "stemworker_queue_wait_seconds",
            "Seconds a job's message waited in the queue before its first claim "
            "(from the CloudEvent time, else when an observer first saw it)",
        )
        # No labels: present from the start, all zero, so that rate() sees the first observation.
        empty = ([(floatToGoString(b), 0.0) for b in QUEUE_WAIT_BUCKETS_S] + [(INF, 0.0)], 0.0)
        buckets, total = _histograms(queue_wait, QUEUE_WAIT_BUCKETS_S, 0).get((), empty)
        wait_family.add_metric([], buckets, total)
        yield wait_family

    def _counter_families(self, counters: Mapping[str, str]) -> Iterable[Metric]:
        # Every outcome x allowed model and every callback result is present from the start at 0, so that
        # rate() sees a job's first increment.
        jobs = {(outcome, model): 0.0 for outcome in OUTCOMES for model in self.models()}
        audio = {model: 0.0 for model in self.models()}
        hits = {model: 0.0 for model in self.models()}
        callbacks = {result: 0.0 for result in CALLBACK_RESULTS}
        data_loss = 0.0
        for field, value in counters.items():
            parts = field.split("|")
            if field == "redis_data_loss":
                data_loss = float(value)
            elif parts[0] == "jobs" and len(parts) == 3:
                jobs[(parts[1], parts[2])] = float(value)
            elif parts[0] == "audio_seconds" and len(parts) == 2:
                audio[parts[1]] = float(value)
            elif parts[0] == "cache_hits" and len(parts) == 2:
                hits[parts[1]] = float(value)
            elif parts[0] == "callbacks" and len(parts) == 2:
                callbacks[parts[1]] = float(value)
        jobs_family = CounterMetricFamily(
            "stemworker_jobs", "Job attempts and messages by outcome and model", labels=["outcome", "model"]
        )
        for (outcome, model), total in sorted(jobs.items()):
            jobs_family.add_metric([outcome, model], total)
        audio_family = CounterMetricFamily(
            "stemworker_audio_seconds", "Seconds of audio separated (jobs done)", labels=["model"]
        )
        for model, total in sorted(audio.items()):
            audio_family.add_metric([model], total)
        hits_family = CounterMetricFamily(
            "stemworker_cache_hits", "Jobs done from the result cache (no separation)", labels=["model"]
        )
        for model, total in sorted(hits.items()):
            hits_family.add_metric([model], total)
        callbacks_family = CounterMetricFamily(
            "stemworker_callbacks", "Webhook deliveries by result", labels=["result"]
        )
        for result, total in sorted(callbacks.items()):
            callbacks_family.add_metric([result], total)
        loss_family = CounterMetricFamily(
            "stemworker_redis_data_loss",
            "Times a runner found that Redis lost its data (queued jobs may be gone)",
            value=data_loss,
        )
        return [jobs_family, audio_family, hits_family, callbacks_family, loss_family]


def registry_with(collector: Collector) -> CollectorRegistry:
    """A registry holding only `collector` (no process metrics: the numbers are the queue's, not a process')."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)
