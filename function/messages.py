"""The one parser: every wire form of a job -> one CloudEvent -> one validated `Job`; and event files.

Wire forms accepted on the queue (and as CloudEvent `data`):
- a bare track id, with or without JSON quotes: `3f9a...` or `"3f9a..."`;
- a JSON object with the id under `songhash`, `hash` or `id`, plus optional `model`, `callback`, `stems`,
  `two_stems`, `format`, `bucket` and `key` (function/tier.py reads `model`, `bucket` and `key`);
- a structured-mode CloudEvent JSON whose `data` is either of the above (used as it is).

Ids and every other field are validated here, and only here, before any I/O; so is MAX_MESSAGE_BYTES, which
`job_from_event` enforces whatever the entry point (queue, HTTP, replay or a direct `handle(event)` call).
Event files are structured-mode CloudEvent JSON, as `SAVE_EVENTS_DIR` and `python -m function.replay` use them.

Names say which functions raise: `require_*` and `*_from_*` raise InvalidJob; `*_or_none` return None.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudevents.conversion import to_json
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_dict, from_http

from function import json_limits
from function.config import FORMATS, Settings
from function.errors import InvalidJob
from function.ids import ID_FIELDS, ID_PATTERN
from function.tier import input_location, resolve_model

EVENT_REQUESTED = "io.stemworker.separation.requested"
EVENT_COMPLETED = "io.stemworker.separation.completed"
EVENT_FAILED = "io.stemworker.separation.failed"
EVENT_SOURCE = "urn:stemworker:queue"

# A stem name as a job may ask for it; which stems exist is the loaded model's business (core checks it).
STEM_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
# A CloudEvent id is logged and sent as the `webhook-id` header: printable ASCII, no spaces or line breaks.
EVENT_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,256}", re.ASCII)


@dataclass(frozen=True)
class Callback:
    """Where to POST when the job is done. `data` is posted as given; `None` with a plain URL
    means the job's result is posted instead."""

    url: str
    data: Any = None
    has_data: bool = False


@dataclass(frozen=True)
class Job:
    """One validated separation request."""

    id: str
    model: str
    format: str = "mp3"
    stems: tuple[str, ...] | None = None
    two_stems: str | None = None
    callback: Callback | None = None
    event_id: str = ""
    model_requested: str = ""  # the model name the message asked for ("" when built in code)
    input_bucket: str | None = None  # from the message; None: INPUT_BUCKET
    input_key: str | None = None  # from the message; None: INPUT_KEY
    notes: tuple[str, ...] = ()  # what the parser read leniently, for the job's info log lines


def new_event(data: Any, event_id: str | None = None) -> CloudEvent:
    """A `separation.requested` CloudEvent carrying `data`."""
    attributes = {
        "type": EVENT_REQUESTED,
        "source": EVENT_SOURCE,
        "id": event_id or str(uuid.uuid4()),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


def require_size(size: int, max_message_bytes: int, what: str = "message") -> None:
    """The one MAX_MESSAGE_BYTES check, with the one permanent error every entry point gives."""
    if size > max_message_bytes:
        raise InvalidJob(f"{what} is {size} bytes, over MAX_MESSAGE_BYTES={max_message_bytes}")


def event_from_message(raw: bytes | str, max_message_bytes: int, first_seen: str | None = None) -> CloudEvent:
    """Turn one queue message into the CloudEvent `handle` takes; any message that cannot become one raises
    InvalidJob, whatever its bytes (the runner dead-letters it), never another exception.

    `first_seen` (the time the queue first claimed this message, kept across its requeues) goes into the event
    id, so every retry of one submission carries the same id and a second submission of the same bytes another.
    """
    try:
        return _event_from_message(raw, max_message_bytes, first_seen)
    except InvalidJob:
        raise
    except Exception as err:  # a message that trips anything unforeseen is still only a bad message
        raise InvalidJob(f"message could not be read: {type(err).__name__}: {str(err)[:200]}") from None


def _event_from_message(raw: bytes | str, max_message_bytes: int, first_seen: str | None) -> CloudEvent:
    body = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    require_size(len(body), max_message_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidJob(f"message is not UTF-8 text: {err}") from None
    # The id is the `webhook-id` receivers de-duplicate on: stable across retries, distinct across submissions.
    seed = "stemworker:" + hashlib.sha256(body).hexdigest() + (f"@{first_seen}" if first_seen else "")
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, seed))
    payload = decode_payload(text, "message")
    if isinstance(payload, dict) and "specversion" in payload:
        return event_from_dict(payload)
    return new_event(payload, event_id)


def decode_payload(text: str, what: str) -> Any:
    """A message's text as a value: a bare id (no JSON quotes) as that string, anything else as bounded JSON
    (function/json_limits.py). A JSON scalar that is not a string (`null`, `true`, `-1`, `1e309`, `NaN`) is
    never read as a bare id. Raises InvalidJob for empty text, text that is not JSON, and JSON over the limits."""
    stripped = text.strip().lstrip("\ufeff").strip()  # a byte-order mark some writers put first is not content
    if not stripped:
        raise InvalidJob(f"{what} is empty")
    if ID_PATTERN.fullmatch(stripped) and json_limits.SCALAR.fullmatch(stripped) is None:
        return stripped
    try:
        return json_limits.loads(stripped)
    except json_limits.JSONLimitError as err:
        raise InvalidJob(f"{what} is refused: {err}") from None
    except json.JSONDecodeError as err:
        raise InvalidJob(f"{what} is not valid JSON: {err.msg} at position {err.pos}") from None


def require_attributes(attributes: Mapping[str, Any]) -> None:
    """The required CloudEvent attributes are non-empty strings, and the id is safe to log and send as a header."""
    for name in ("id", "source", "type"):
        value = attributes.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidJob(f"CloudEvent attribute {name!r} must be a non-empty string")
    if EVENT_ID_PATTERN.fullmatch(attributes["id"]) is None:
        raise InvalidJob("CloudEvent attribute 'id' must be 1-256 printable ASCII characters without spaces")


def event_from_dict(payload: dict[str, Any]) -> CloudEvent:
    """A structured-mode CloudEvent given as a dict (`data` or `data_base64`); a malformed one raises InvalidJob."""
    if payload.get("specversion") != "1.0":
        raise InvalidJob(f"unsupported CloudEvent specversion {payload.get('specversion')!r}; expected '1.0'")
    require_attributes(payload)
    if "data_base64" in payload:
        payload = dict(payload)
        try:
            payload["data"] = base64.b64decode(payload.pop("data_base64"), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidJob("CloudEvent data_base64 is not valid base64") from None
    try:
        return from_dict(payload)
    except (GenericException, ValueError, TypeError) as err:
        raise InvalidJob(f"malformed CloudEvent: {err}") from None


def event_from_request(headers: Mapping[str, str], body: bytes, max_message_bytes: int) -> CloudEvent:
    """The CloudEvent of an HTTP request in binary or structured mode; anything else raises InvalidJob."""
    require_size(len(body), max_message_bytes, "request body")
    try:
        json_limits.nesting_depth(body.decode("utf-8", "replace"))
        event = from_http(dict(headers.items()), body)
    except json_limits.JSONLimitError as err:
        raise InvalidJob(f"request body is refused: {err}") from None
    except Exception as err:  # the SDK's errors, and anything a hostile body trips inside it
        shown = err if isinstance(err, GenericException | ValueError | TypeError) else type(err).__name__
        raise InvalidJob(f"not a CloudEvent (binary ce-* headers or application/cloudevents+json): {shown}") from None
    require_attributes(event.get_attributes())
    return event


def require_job_id(raw: Any) -> str:
    """A job id: a string of 1..128 characters from [A-Za-z0-9_-]."""
    if not isinstance(raw, str) or ID_PATTERN.fullmatch(raw) is None:
        shown = repr(raw) if not isinstance(raw, str) else repr(raw[:80]) + ("..." if len(raw) > 80 else "")
        raise InvalidJob(f"job id must be a string of 1-128 characters [A-Za-z0-9_-], got {shown}")
    return raw


def data_size(data: Any) -> int:
    """Bytes of an event's data as it travels: raw bytes as they are, text as UTF-8, anything else as JSON."""
    if isinstance(data, bytes | bytearray):
        return len(data)
    if isinstance(data, str):
        return len(data.encode("utf-8", "surrogatepass"))
    return len(json.dumps(data, default=str).encode("utf-8"))


def _decode_data(data: Any) -> Any:
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidJob("event data is not UTF-8 text") from None
        return decode_payload(text, "event data")
    return data


def _callback(raw: Any) -> tuple[Callback | None, str | None]:
    """The callback, or None with a note when the message carries none that can be used: tiers send `{}`, `[]`,
    `null`, `""` or an object without a `url` to mean "no callback", and that never invalidates a job."""
    if raw is None:
        return None, None
    if isinstance(raw, list) and not raw:  # PHP's json_encode writes an empty array for an empty map
        return None, "callback [] is empty: no callback"
    if isinstance(raw, str):
        return (Callback(url=raw.strip()), None) if raw.strip() else (None, "empty callback: no callback")
    if isinstance(raw, dict):
        url = raw.get("url")
        if not isinstance(url, str) or not url.strip():
            shown = "{}" if not raw else f"an object whose url is {url!r}"[:120]
            return None, f"callback {shown} has no usable url: no callback"
        return Callback(url=url.strip(), data=raw.get("data"), has_data="data" in raw), None
    raise InvalidJob(f"callback must be a URL string or an object with 'url', got {type(raw).__name__}")


def _stems(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise InvalidJob(f"stems must be a non-empty list of stem names, got {raw!r}"[:200])
    bad = [s for s in raw if STEM_PATTERN.fullmatch(s) is None]
    if bad:
        raise InvalidJob(f"stem names must be 1-64 characters [A-Za-z0-9_-], got {bad!r}"[:200])
    return tuple(dict.fromkeys(raw))


def _two_stems(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or STEM_PATTERN.fullmatch(raw) is None:
        raise InvalidJob(f"two_stems must be one stem name (1-64 characters [A-Za-z0-9_-]), got {raw!r}"[:200])
    return raw


def event_id_or_none(event: CloudEvent) -> str | None:
    """The event's id when it is safe to log and send as a header, else None."""
    event_id = event.get("id")
    return event_id if isinstance(event_id, str) and EVENT_ID_PATTERN.fullmatch(event_id) else None


def job_id_or_none(event: CloudEvent) -> str | None:
    """The event's job id when it is a valid id, else None (an invalid id never names a key)."""
    try:
        data = _decode_data(event.data)
    except Exception:  # whatever the data, an unreadable one names no job
        return None
    if isinstance(data, dict):
        data = next((data[name] for name in ID_FIELDS if name in data), None)
    return data if isinstance(data, str) and ID_PATTERN.fullmatch(data) else None


def job_from_event(event: CloudEvent, settings: Settings) -> Job:
    """Validate the event's data into a `Job`; raises InvalidJob naming the bad field, and InvalidJob for data
    that trips anything unforeseen (an event built in code can hold any Python value)."""
    try:
        return _job_from_event(event, settings)
    except InvalidJob:
        raise
    except Exception as err:
        raise InvalidJob(f"event data could not be read: {type(err).__name__}: {str(err)[:200]}") from None


def _job_from_event(event: CloudEvent, settings: Settings) -> Job:
    event_id = event_id_or_none(event)
    if event_id is None:
        raise InvalidJob("CloudEvent attribute 'id' must be 1-256 printable ASCII characters without spaces")
    require_size(data_size(event.data), settings.max_message_bytes, "event data")
    data = _decode_data(event.data)
    if isinstance(data, str):
        return Job(
            id=require_job_id(data),
            model=settings.demucs_model,
            event_id=event_id,
            model_requested=settings.demucs_model,
        )
    if not isinstance(data, dict):
        raise InvalidJob(f"job must be a track id string or a JSON object, got {type(data).__name__}")
    present = [name for name in ID_FIELDS if name in data]
    if not present:
        raise InvalidJob(f"job object has no id: expected one of {list(ID_FIELDS)}")
    job_id = require_job_id(data[present[0]])
    choice = resolve_model(data.get("model"), settings)
    bucket, key = input_location(data, settings)
    callback, callback_note = _callback(data.get("callback"))
    fmt = data.get("format") or "mp3"
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise InvalidJob(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    stems, two_stems = _stems(data.get("stems")), _two_stems(data.get("two_stems"))
    if stems is not None and two_stems is not None:
        raise InvalidJob("stems and two_stems cannot be used together")
    return Job(
        id=job_id,
        model=choice.model,
        format=fmt.lower(),
        stems=stems,
        two_stems=two_stems,
        callback=callback,
        event_id=event_id,
        model_requested=choice.requested,
        input_bucket=bucket,
        input_key=key,
        notes=tuple(note for note in (choice.note, callback_note) if note),
    )


def event_json(event: CloudEvent) -> str:
    """The event as structured-mode JSON (bytes data goes to `data_base64`)."""
    return to_json(event).decode("utf-8")


def event_file_name(event_id: str) -> str:
    """`<id>.json` for a safe id; any other id (it comes from the sender) is hashed, never used as a path."""
    safe = event_id if ID_PATTERN.fullmatch(event_id) else hashlib.sha256(event_id.encode()).hexdigest()[:32]
    return f"{safe}.json"


def save_event(event: CloudEvent, directory: Path) -> Path:
    """Write `event` to `directory/<event id>.json` (atomically) and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / event_file_name(str(event["id"]))
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8") as out:
        out.write(event_json(event) + "\n")
    Path(out.name).replace(path)
    return path


def read_event_file(path: Path) -> CloudEvent:
    """The CloudEvent saved in `path`; an unreadable or malformed file raises InvalidJob."""
    try:
        payload = json_limits.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InvalidJob(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise InvalidJob(f"{path} is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise InvalidJob(f"{path} holds a JSON {type(payload).__name__}, not a CloudEvent object")
    return event_from_dict(payload)
