"""`stemworker exporter`: a small long-running process serving `/metrics` for Prometheus, read from Redis on
each scrape (as rq-exporter does for rq). The job-runner pods record their counters and histograms in Redis
(function/metrics.py); this adds what only an observer can see: running jobs (live leases), the age of the
oldest waiting message, and the ScaledJob's maxReplicaCount when SCALEDJOB_MAX_REPLICAS is set.

A scrape never outlives its budget (EXPORTER_SCRAPE_BUDGET_S, 5 s by default, well under the ServiceMonitor's 20 s
scrape timeout and the liveness probe's): the exporter reads Redis through its own client, whose every call waits
at most half the budget (connect included) and is never retried, and the collector gives the whole scrape that
budget. A Redis that accepts connections and never answers reads as `stemworker_redis_up 0` within the budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.backoff import NoBackoff
from redis.retry import Retry

from function.config import Settings
from function.metrics import MetricsCollector, registry_with
from stemops.leases import running_jobs
from stemops.waiting import oldest_waiting_age_s

log = logging.getLogger("stemworker.exporter")


class ExporterCollector(MetricsCollector):
    """The worker's metrics (function.metrics.MetricsCollector) plus the observer's gauges."""

    def families(self) -> Iterator[Metric]:
        started = time.monotonic()
        yield from super().families()
        yield GaugeMetricFamily(
            "stemworker_jobs_running",
            "Jobs running now (live leases on claimed messages)",
            value=running_jobs(self.client, self.settings.queue_key),
        )
        age = oldest_waiting_age_s(self.client, self.settings)
        oldest = GaugeMetricFamily(
            "stemworker_queue_oldest_waiting_age_seconds",
            "Seconds since an observer first saw the message at the claim end waiting "
            "(absent when the queue is empty or that message was never seen arriving)",
        )
        if age is not None:
            oldest.add_metric([], age)
        yield oldest
        if self.settings.scaledjob_max_replicas is not None:
            yield GaugeMetricFamily(
                "stemworker_scaledjob_max_replicas",
                "The ScaledJob's maxReplicaCount (SCALEDJOB_MAX_REPLICAS)",
                value=self.settings.scaledjob_max_replicas,
            )
        yield GaugeMetricFamily(
            "stemworker_exporter_scrape_duration_seconds",
            "Seconds the exporter took to read Redis for this scrape",
            value=time.monotonic() - started,
        )


def scrape_call_timeout_s(settings: Settings) -> float:
    """How long one Redis call of a scrape may wait: half the scrape budget, or REDIS_TIMEOUT_S when shorter."""
    return min(settings.redis_timeout_s, settings.exporter_scrape_budget_s / 2)


def scrape_client(settings: Settings) -> redis.Redis:
    """The exporter's own Redis client: every call (and every connect) times out after `scrape_call_timeout_s`
    and none is retried, so a hung Redis costs a scrape one timeout, not the worker client's retries."""
    timeout = scrape_call_timeout_s(settings)
    return redis.Redis.from_url(
        settings.redis_connection_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        health_check_interval=0,
    )


def exporter_registry(client: redis.Redis, settings: Settings) -> CollectorRegistry:
    return registry_with(ExporterCollector(client, settings, budget_s=settings.exporter_scrape_budget_s))


def serve(
    client: redis.Redis, settings: Settings, port: int, address: str = "0.0.0.0", stop: threading.Event | None = None
) -> WSGIServer:
    """Serve `/metrics` on `address:port` in a background thread; blocks until `stop` is set when one is given
    (returns the server at once otherwise)."""
    server, thread = start_http_server(port, addr=address, registry=exporter_registry(client, settings))
    log.debug("serving /metrics on %s:%d for queue %s", address, server.server_port, settings.queue_key)
    if stop is not None:
        stop.wait()
        server.shutdown()
        server.server_close()
        thread.join(5)
    return server
