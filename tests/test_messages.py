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
    parsed = job(
        json.dumps(
            {
                "songhash": HASH,
                "model": "mdx_extra",
                "format": "FLAC",
                "stems": ["vocals", "bass"],
                "callback": {"url": "http://rest/cb", "data": {"mp3": HASH}},
            }
        )
    )
    assert parsed.model == "mdx_extra" and parsed.format == "flac" and parsed.stems == ("vocals", "bass")
    assert parsed.callback == Callback(url="http://rest/cb", data={"mp3": HASH}, has_data=True)


def test_plain_url_callback_and_two_stems():
    parsed = job(json.dumps({"id": "x1", "callback": "https://example.org/hook", "two_stems": "vocals"}))
    assert parsed.callback == Callback(url="https://example.org/hook") and parsed.two_stems == "vocals"


def test_structured_cloudevent_is_used_as_it_is():
    envelope = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "rest",
        "type": "com.example.song",
        "datacontenttype": "application/json",
        "data": {"hash": "abc", "model": "htdemucs_ft"},
    }
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
        ('{"id": "a", "model": 7}', "model must be a string"),
        ('{"id": "a", "stems": ["vocals", "../x"]}', "stem names must be"),
        ('{"id": "a", "stems": []}', "non-empty list"),
        ('{"id": "a", "stems": ["vocals"], "two_stems": "vocals"}', "cannot be used together"),
        ('{"id": "a", "two_stems": "ka zoo"}', "two_stems must be one stem name"),
        ('{"id": "a", "format": "ogg"}', "format must be one of"),
        ('{"id": "a", "callback": 7}', "callback must be"),
        ('{"id": "a", "bucket": "elsewhere"}', "not an input bucket"),
        ('{"id": "a", "bucket": 3}', "not an input bucket"),
        ('{"id": "a", "key": "../etc/passwd"}', "'..' path segment"),
        ('{"id": "a", "key": "songs/./a.mp3"}', "'.' or '..' path segment"),
        ('{"id": "a", "key": "/abs.mp3"}', "must not start with '/'"),
        ('{"id": "a", "key": "a\\nb.mp3"}', "control characters"),
        ('{"id": "a", "key": "a\\u0085b.mp3"}', "control characters"),
        ('{"id": "a", "key": "' + "k" * 1025 + '"}', "over the 1024"),
        ('{"id": "a", "key": "' + "é" * 513 + '"}', "1026 bytes of UTF-8"),
        ('{"id": "a", "key": 5}', "key must be a non-empty string"),
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


@pytest.mark.parametrize(
    "callback", [{}, None, "", "  ", [], {"url": ""}, {"url": None}, {"data": {"x": 1}}, {"url": 5}]
)
def test_an_empty_or_unusable_callback_is_no_callback(callback):
    parsed = job(json.dumps({"hash": "cb0", "callback": callback}))
    assert parsed.callback is None
    assert (parsed.notes == ()) == (callback is None)
    assert all("no callback" in note for note in parsed.notes)


def test_absent_callback_leaves_no_note():
    assert job(json.dumps({"hash": "cb1"})).notes == ()


ALIASED = load_settings(
    demucs_model="htdemucs", demucs_models="htdemucs_ft", model_aliases="default:htdemucs, mdx_extra_q:htdemucs_ft"
)


@pytest.mark.parametrize(
    ("asked", "runs", "noted"),
    [
        (None, "htdemucs", False),
        ("", "htdemucs", False),
        ("htdemucs_ft", "htdemucs_ft", False),
        ("default", "htdemucs", True),
        ("mdx_extra_q", "htdemucs_ft", True),
    ],
)
def test_model_aliases(asked, runs, noted):
    body = {"id": "m1"} if asked is None else {"id": "m1", "model": asked}
    parsed = job_from_event(event_from_message(json.dumps(body), 65536), ALIASED)
    assert parsed.model == runs and parsed.model_requested == (asked or "htdemucs")
    assert bool(parsed.notes) == noted and (not noted or "MODEL_ALIASES" in parsed.notes[0])


def test_unknown_model_reject_names_the_allowed_and_aliased_models():
    with pytest.raises(InvalidJob, match=r"'mdx'.*not allowed.*'default'.*'htdemucs'.*'htdemucs_ft'"):
        job_from_event(event_from_message('{"id": "m2", "model": "mdx"}', 65536), ALIASED)


def test_unknown_model_default_runs_the_default_model_and_says_so():
    settings = load_settings(demucs_model="htdemucs", unknown_model="default")
    parsed = job_from_event(event_from_message('{"id": "m3", "model": "made_up"}', 65536), settings)
    assert (parsed.model, parsed.model_requested) == ("htdemucs", "made_up")
    assert "UNKNOWN_MODEL=default" in parsed.notes[0] and "made_up" in parsed.notes[0]
    with pytest.raises(InvalidJob, match="model must be a string"):  # malformed, not a name: still invalid
        job_from_event(event_from_message('{"id": "m3", "model": ["x"]}', 65536), settings)


def test_input_bucket_and_key_from_the_message():
    settings = load_settings(input_bucket="queue", input_buckets="uploads, archive")
    parse = lambda body: job_from_event(event_from_message(json.dumps(body), 65536), settings)  # noqa: E731
    both = parse({"id": "in1", "bucket": "uploads", "key": "2024/05/in1 (final) ✓.mp3"})
    assert (both.input_bucket, both.input_key) == ("uploads", "2024/05/in1 (final) ✓.mp3")
    assert (parse({"id": "in2", "bucket": "queue"}).input_bucket, parse({"id": "in2"}).input_bucket) == ("queue", None)
    key_only = parse({"id": "in3", "key": "a..b/..c.mp3"})  # '..' inside a segment is an ordinary name
    assert (key_only.input_bucket, key_only.input_key) == (None, "a..b/..c.mp3")
    assert parse({"id": "in4", "bucket": "", "key": ""}).input_key is None
    assert len(parse({"id": "in5", "key": "k" * 1024}).input_key) == 1024
    with pytest.raises(InvalidJob, match=r"'other' is not an input bucket.*\['archive', 'queue', 'uploads'\]"):
        parse({"id": "in6", "bucket": "other", "key": "x.mp3"})


def test_any_stem_name_passes_the_parser_the_model_decides():
    parsed = job(json.dumps({"id": "six", "stems": ["guitar", "piano", "guitar"]}))
    assert parsed.stems == ("guitar", "piano")
    assert job(json.dumps({"id": "six", "two_stems": "guitar"})).two_stems == "guitar"


def test_event_id_is_stable_per_claim_lineage_and_distinct_per_submission():
    message = json.dumps({"songhash": "dup"})
    first = event_from_message(message, 65536, "2026-11-30T07:33:54.123Z")["id"]
    assert event_from_message(message, 65536, "2026-11-30T07:33:54.123Z")["id"] == first  # a retry
    assert event_from_message(message, 65536, "2026-11-30T07:33:54.124Z")["id"] != first  # a resubmission
    assert event_from_message(message, 65536)["id"] not in (first,)
