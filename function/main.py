"""functions-framework adapter: the worker's `handle` served as an HTTP function that speaks CloudEvents.

    functions-framework --target handle --source function/main.py --port 8080

POST a CloudEvent, binary mode (ce-* headers) or structured mode (application/cloudevents+json), whose data
is any job form the queue accepts. The answer is a binary-mode CloudEvent (see cloudevent_http.py): 200
`separation.completed`, or `separation.failed` with 400 (malformed event or job), 422 (the input can never be
separated), 503 (a dependency is down, or this process is busy) or 500. GET /metrics answers the Prometheus
metrics recorded in Redis (function/metrics.py); a GET on any other path (Knative probes use /health/liveness
and /health/readiness) answers 200 with {"status": "ok", "busy": ...}.

It is an HTTP function (not `@cloud_event`, which always answers an empty 200) so that it controls the status
and the reply event. One process keeps one Worker and loads each model once. Separations run one at a time:
a request arriving while one runs is refused at once with 503 and Retry-After, rather than parked on a
thread for minutes (see README.md, "Serverless").
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path

# functions-framework imports this file as a top-level module with only function/ on sys.path; the package
# needs the repository root there too (nothing changes when stemworker is installed).
if importlib.util.find_spec("function") is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import flask
import functions_framework
from cloudevents.http import CloudEvent

from function import allocator, cloudevent_http, messages, metrics
from function.config import get_settings
from function.core import default_worker
from function.errors import InvalidJob, StemworkerError
from function.logs import configure_logging
from function.tracing import configure_tracing

log = logging.getLogger("stemworker.http")
# A bad setting fails the server's start here, never a request.
settings = get_settings()
# functions-framework configures no logging; without this only warnings would reach the pod's log.
configure_logging(settings)
configure_tracing()  # OTEL_EXPORTER_OTLP_ENDPOINT set: spans over OTLP, flushed at exit by the SDK
allocator.apply(settings.malloc_reuse)  # freed chunk memory is reused by the next chunk (function/allocator.py)
worker = default_worker()
_slot = threading.Semaphore(1)
_metrics = metrics.registry_with(metrics.MetricsCollector(worker.redis, settings))


def _answer(event: CloudEvent, status: int, extra: dict[str, str] | None = None) -> flask.Response:
    headers, body = cloudevent_http.encode(event)
    return flask.Response(body, status=status, headers={**headers, **(extra or {})})


def _health(path: str) -> flask.Response:
    busy = not _slot.acquire(blocking=False)
    if not busy:
        _slot.release()
    return flask.jsonify({"status": "ok", "path": path, "busy": busy})


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    """Run the job in the request's CloudEvent and answer with a reply CloudEvent."""
    if request.method in ("GET", "HEAD") and request.path == "/metrics":  # before the catch-all health answer
        return flask.Response(metrics.exposition(_metrics), mimetype=metrics.CONTENT_TYPE)
    if request.method in ("GET", "HEAD"):
        return _health(request.path)
    if request.method != "POST":
        return flask.Response(status=405, headers={"Allow": "GET, HEAD, POST"})
    started = time.monotonic()
    try:
        # refused before the body is read
        messages.require_size(request.content_length or 0, settings.max_message_bytes, "request body")
        headers = dict(request.headers.items())
        event = messages.event_from_request(headers, request.get_data(), settings.max_message_bytes)
    except InvalidJob as err:
        log.warning("400 malformed request: %s", err)
        return _answer(cloudevent_http.failed(err, None, None), err.http_status)
    job_id = messages.job_id_or_none(event)
    if not _slot.acquire(blocking=False):
        busy = cloudevent_http.Busy("busy: this process is already separating a song; retry later")
        log.info("503 busy for event %s", event["id"])
        return _answer(
            cloudevent_http.failed(busy, event, job_id),
            busy.http_status,
            {"Retry-After": str(cloudevent_http.RETRY_AFTER_S)},
        )
    try:
        result = worker.handle(event)
    except StemworkerError as err:
        log.info("%d for event %s after %.2f s: %s", err.http_status, event["id"], time.monotonic() - started, err)
        return _answer(cloudevent_http.failed(err, event, job_id), err.http_status)
    finally:
        _slot.release()
    log.info("200 for event %s after %.2f s", event["id"], time.monotonic() - started)
    return _answer(cloudevent_http.completed(result, event), 200)
