"""OpenTelemetry traces of a job, off unless an OTLP endpoint is configured.

With OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, the entry points install a tracer
provider that exports spans over OTLP/HTTP (protobuf) in batches; the standard OTEL_* variables (service name,
headers, timeouts, sampler) apply as the OpenTelemetry SDK reads them. Without it every span here is the API's
no-op: nothing is recorded or sent.

One trace per job run: the `job` span continues the W3C trace context the CloudEvent carries (the `traceparent` and
`tracestate` extension attributes of the CloudEvents distributed-tracing extension) when it has one, and holds
`claim` (from the job runner's claim to the start of the job), `download`, `decode`, `separate`, `encode` and
`upload` (one each per stem), `status` (every status write) and `callback`. Spans started on the worker's pool
threads join the job's trace: the pool runs each task in a copy of the job's context.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("stemworker.tracing")

TRACER_NAME = "stemworker"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_provider: Any = None


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def configure_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Install the OTLP exporter when an endpoint is configured; returns whether tracing is on. Idempotent."""
    global _provider
    env = os.environ if environ is None else environ
    if _provider is not None:
        return True
    if not any(env.get(name) for name in ENDPOINT_VARIABLES):
        return False
    # Imported only here: a process without an endpoint never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "stemworker")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing: exporting spans over OTLP/HTTP to %s", next(env[n] for n in ENDPOINT_VARIABLES if env.get(n)))
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and stop (before a process exits without running atexit handlers)."""
    if _provider is not None:
        _provider.shutdown()


def parent_context(carrier: Mapping[str, Any]) -> otel_context.Context | None:
    """The remote parent named by `traceparent` (and `tracestate`) in `carrier`, e.g. a CloudEvent's attributes;
    None when there is none or it is malformed (then the job starts a new trace)."""
    headers = {name: str(carrier[name]) for name in ("traceparent", "tracestate") if carrier.get(name)}
    if "traceparent" not in headers:
        return None
    found = TraceContextTextMapPropagator().extract(headers)
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for an outgoing request; empty outside a trace. With
    tracing off, a job that came with a `traceparent` still passes that one on (the API's non-recording span keeps
    the parent's context)."""
    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers)
    return headers


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A child span of the current one; attributes with None values are left out. An exception is recorded on it
    and propagates."""
    clean = {key: value for key, value in attributes.items() if value is not None}
    with tracer().start_as_current_span(name, attributes=clean) as current:
        yield current


@contextlib.contextmanager
def job_span(carrier: Mapping[str, Any], claimed_at_ns: int | None = None, **attributes: Any) -> Iterator[trace.Span]:
    """The `job` span, continuing the carrier's trace context when it has one; with `claimed_at_ns` it starts then,
    and a `claim` span covers the time from the claim to now (the message parse and the job's start)."""
    clean = {key: value for key, value in attributes.items() if value is not None}
    with tracer().start_as_current_span(
        "job", context=parent_context(carrier), kind=trace.SpanKind.CONSUMER, attributes=clean, start_time=claimed_at_ns
    ) as current:
        if claimed_at_ns is not None:
            claim = tracer().start_span("claim", start_time=claimed_at_ns)
            claim.end()
        yield current
