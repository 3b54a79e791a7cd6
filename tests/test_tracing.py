"""OpenTelemetry traces (function/tracing.py) against an OTLP/HTTP receiver on loopback that decodes the protobuf
requests: a job run by the real job runner continues the CloudEvent's `traceparent` and exports one span per stage;
without an endpoint nothing is set up."""

from __future__ import annotations

import gzip
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from support import REPO_ROOT, tiny_runner_env

from function.tracing import configure_tracing, parent_context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def otlp() -> Iterator[tuple[str, list[dict]]]:
    """An OTLP/HTTP traces receiver: (endpoint, the spans it received as dicts)."""
    spans: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        spans.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "service": service,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "attributes": {a.key: a.value for a in span.attributes},
                            }
                        )
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()
        server.server_close()


def run_runner(settings, endpoint: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "function.runner"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=tiny_runner_env(
            settings,
            CLAIM_WAIT_S="1",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="stemworker-test",
            CALLBACK_ALLOW_HOSTS="127.0.0.1/32",
        ),
    )
    assert done.returncode == 0, done.stderr


def test_a_job_continues_the_events_trace_with_a_span_per_stage(settings, redis_client, upload, song, receiver, otlp):
    endpoint, spans = otlp
    upload("traced", song)
    event = {
        "specversion": "1.0",
        "id": "ev-traced",
        "source": "tier",
        "type": "song",
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "data": {"songhash": "traced", "stems": ["vocals", "drums"], "callback": receiver.url},
    }
    redis_client.rpush(settings.queue_key, json.dumps(event))
    run_runner(settings, endpoint)
    assert redis_client.hget("status:traced", "state") == b"done"
    names = [span["name"] for span in spans]
    assert {"job", "claim", "download", "decode", "separate", "encode", "upload", "status", "callback"} <= set(names)
    assert names.count("encode") == names.count("upload") == 2  # one per stem asked for
    assert {span["trace_id"] for span in spans} == {TRACE_ID}
    assert {span["service"] for span in spans} == {"stemworker-test"}
    (job,) = [span for span in spans if span["name"] == "job"]
    assert job["parent"] == PARENT_ID  # the producer's span
    assert job["attributes"]["stemworker.job_id"].string_value == "traced"
    assert job["attributes"]["cloudevents.event_id"].string_value == "ev-traced"
    ids = {span["id"] for span in spans}
    for span in spans:
        if span["name"] != "job":
            assert span["parent"] in ids, span["name"]  # every other span is inside the job's tree
            assert job["start"] <= span["start"] <= span["end"] <= job["end"], span["name"]
    for name in ("claim", "download", "decode", "separate", "callback"):
        (one,) = [span for span in spans if span["name"] == name]
        assert one["parent"] == job["id"], name
    # The pool threads' spans (encode, upload) join the job's trace too.
    assert all(span["parent"] == job["id"] for span in spans if span["name"] in ("encode", "upload"))
    # The webhook request carries the trace on: its traceparent names the callback span.
    (callback,) = [span for span in spans if span["name"] == "callback"]
    headers = {name.lower(): value for name, value in receiver.requests[-1]["headers"].items()}
    assert headers["traceparent"] == f"00-{TRACE_ID}-{callback['id']}-01"


def test_without_a_traceparent_a_job_starts_its_own_trace(settings, redis_client, otlp):
    endpoint, spans = otlp
    redis_client.rpush(settings.queue_key, "untraced")  # no input: the job fails, and is traced all the same
    run_runner(settings, endpoint)
    (job,) = [span for span in spans if span["name"] == "job"]
    assert job["parent"] == "" and job["trace_id"] != TRACE_ID
    assert {span["trace_id"] for span in spans} == {job["trace_id"]}
    assert "download" in {span["name"] for span in spans}


def test_tracing_is_off_without_an_endpoint_and_a_bad_traceparent_is_ignored():
    assert configure_tracing({}) is False
    assert parent_context({"traceparent": "nonsense"}) is None
    assert parent_context({}) is None
    assert parent_context({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}) is not None
