"""The HTTP <-> CloudEvent codec of the HTTP surface: result or error -> reply CloudEvent + status and headers.

Requests are parsed by `messages.event_from_request`, the one parser.

Every answer to a job request is itself a CloudEvent in binary mode (ce-* headers, JSON body), so a Knative
Broker can route the reply: `io.stemworker.separation.completed` carries the result,
`io.stemworker.separation.failed` carries {"error", "type", "status", "permanent", "retryable", "id",
"event_id"}. The status is the error class's `http_status` (errors.py holds the one table):
InvalidJob 400, UnprocessableInput 422, Transient (and Busy) 503, anything else 500.
"""

from __future__ import annotations

import uuid
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from function.errors import StemworkerError, Transient
from function.messages import EVENT_COMPLETED, EVENT_FAILED

REPLY_SOURCE = "urn:stemworker:worker"
# Extension attribute naming the request event a reply answers.
CAUSATION_ATTRIBUTE = "causationid"
# Seconds a busy server asks the sender to wait before retrying (a hint; separations take longer).
RETRY_AFTER_S = 10


class Busy(Transient):
    """This process is already separating a song; the request was not started and may be sent again."""


def http_status(err: Exception) -> int:
    return err.http_status if isinstance(err, StemworkerError) else 500


def _reply(event_type: str, data: dict[str, Any], request: CloudEvent | None, subject: str | None) -> CloudEvent:
    attributes = {
        "type": event_type,
        "source": REPLY_SOURCE,
        "id": str(uuid.uuid4()),
        "datacontenttype": "application/json",
    }
    if subject:
        attributes["subject"] = subject
    if request is not None:
        attributes[CAUSATION_ATTRIBUTE] = str(request["id"])
    return CloudEvent(attributes, data)


def completed(result: dict[str, Any], request: CloudEvent) -> CloudEvent:
    """The `separation.completed` reply carrying the job's result."""
    return _reply(EVENT_COMPLETED, result, request, str(result.get("id") or "") or None)


def error_body(err: Exception, request: CloudEvent | None, job_id: str | None) -> dict[str, Any]:
    permanent = bool(getattr(err, "permanent", False))
    return {
        "error": str(err),
        "type": type(err).__name__,
        "status": http_status(err),
        "permanent": permanent,
        "retryable": not permanent,
        "id": job_id,
        "event_id": str(request["id"]) if request is not None else None,
    }


def failed(err: Exception, request: CloudEvent | None, job_id: str | None) -> CloudEvent:
    """The `separation.failed` reply describing `err`."""
    return _reply(EVENT_FAILED, error_body(err, request, job_id), request, job_id)


def encode(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers (ce-*, content-type) and JSON body of a reply."""
    headers, body = to_binary(event)
    return dict(headers), body
