"""Every wire form a REST tier pushes becomes one CloudEvent, then one validated Job."""

from __future__ import annotations

import json

import pytest

from function.config import load_settings
from function.errors import InvalidJob
from function.messages import EVENT_REQUESTED, Callback, event_from_message, job_from_event

SETTINGS = load_settings(demucs_model="htdemucs", demucs_models="htdemucs_ft,mdx_extra")
HASH = "3f9a0c" * 10 + "abcd"  # 64 hex characters


def job(message: str | bytes):
    return job_from_event(event_from_message(message, 65536), SETTINGS)


@pytest.mark.parametrize("message", [HASH, f'"{HASH}"', f"  {HASH}\n"])
def test_bare_id_with_or_without_json_quotes(message):
    parsed = job(message)
    assert parsed.id == HASH and parsed.model == "htdemucs" and parsed.format == "mp3" and parsed.callback is None


@pytest.mark.parametrize("field", ["songhash", "hash", "id"])
def test_object_with_id_under_any_known_field(field):
    assert job(json.dumps({field: "track_1-A"})).id == "track_1-A"


def test_object_with_every_option():
    parsed = job(json.dumps({"songhash": HASH, "model": "mdx_extra", "format": "FLAC", "stems": ["vocals", "bass"],
                             "callback": {"url": "http://rest/cb", "data": {"mp3": HASH}}}))
    assert parsed.model == "mdx_extra" and parsed.format == "flac" and parsed.stems == ("vocals", "bass")
    assert parsed.callback == Callback(url="http://rest/cb", data={"mp3": HASH}, has_data=True)


def test_plain_url_callback_and_two_stems():
    parsed = job(json.dumps({"id": "x1", "callback": "https://example.org/hook", "two_stems": "vocals"}))
    assert parsed.callback == Callback(url="https://example.org/hook") and parsed.two_stems == "vocals"


def test_structured_cloudevent_is_used_as_it_is():
    envelope = {"specversion": "1.0", "id": "evt-1", "source": "rest", "type": "com.example.song",
                "datacontenttype": "application/json", "data": {"hash": "abc", "model": "htdemucs_ft"}}
    event = event_from_message(json.dumps(envelope), 65536)
    assert event["id"] == "evt-1" and event["type"] == "com.example.song"
    parsed = job_from_event(event, SETTINGS)
    assert parsed.id == "abc" and parsed.model == "htdemucs_ft" and parsed.event_id == "evt-1"


def test_structured_cloudevent_with_bare_id_data_and_base64_data():
    bare = {"specversion": "1.0", "id": "e2", "source": "s", "type": "t", "data": "abc"}
    assert job(json.dumps(bare)).id == "abc"
    b64 = {"specversion": "1.0", "id": "e3", "source": "s", "type": "t", "data_base64": "eyJpZCI6ICJ4eXoifQ=="}
    assert job(json.dumps(b64)).id == "xyz"


def test_wrapped_messages_get_a_stable_event_id():
    first, again = event_from_message("abc", 65536), event_from_message("abc", 65536)
    assert first["type"] == EVENT_REQUESTED and first["id"] == again["id"]
    assert event_from_message("abd", 65536)["id"] != first["id"]


@pytest.mark.parametrize(
    ("message", "phrase"),
    [
        ("12345", "track id string or a JSON object, got int"),
        ('{"id": 42}', "job id must be a string"),
        ('{"id": ""}', "job id must be a string"),
        ('{"id": "a/b"}', "job id must be a string"),
        ('{"id": "' + "a" * 129 + '"}', "job id must be a string"),
        ('{"name": "x"}', "has no id"),
        ("[1, 2]", "track id string or a JSON object"),
        ("{broken", "not valid JSON"),
        ("", "message is empty"),
        ('{"id": "a", "model": "evil"}', "not allowed"),
        ('{"id": "a", "stems": ["vocals", "guitar"]}', "unknown stems"),
        ('{"id": "a", "stems": []}', "non-empty list"),
        ('{"id": "a", "stems": ["vocals"], "two_stems": "vocals"}', "cannot be used together"),
        ('{"id": "a", "two_stems": "kazoo"}', "two_stems must be one of"),
        ('{"id": "a", "format": "ogg"}', "format must be one of"),
        ('{"id": "a", "callback": 7}', "callback must be"),
        ('{"id": "a", "callback": {"data": 1}}', "callback.url"),
        ('{"specversion": "1.0", "id": "e"}', "attribute 'source'"),
        ('{"specversion": "0.3", "id": "e", "source": "s", "type": "t"}', "specversion"),
    ],
)
def test_bad_messages_are_rejected_before_any_io(message, phrase):
    with pytest.raises(InvalidJob, match=phrase):
        job(message)


def test_oversized_message_is_rejected():
    with pytest.raises(InvalidJob, match="MAX_MESSAGE_BYTES"):
        event_from_message(json.dumps({"id": "a", "pad": "x" * 70000}), 65536)
