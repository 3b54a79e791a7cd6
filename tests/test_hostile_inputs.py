"""Hostile and malformed inputs, table-driven: every bad message and every odd upload meets an exact outcome.

Rejected messages and inputs: the error class, a stated phrase of its message, a `failed` status record with
that reason when the id is valid (no record at all when it is not), nothing in the output bucket, and a
dead-letter entry when the same message goes through the job runner. Odd but real audio (mono, 8 kHz,
96 kHz, very short, silent, WAV or FLAC uploaded as `.mp3`) is separated into four decodable stems.
Everything runs against the real Redis, the real S3 and the tiny generated model.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile

from function.core import Worker
from function.errors import InvalidJob, StemworkerError, UnprocessableInput
from function.keys import dead_key
from function.messages import event_from_message
from function.runner import Outcome, Runner
from workbench import sample_song


@dataclass(frozen=True)
class Rejected:
    """A message the worker must refuse before any I/O."""

    name: str
    message: str | bytes
    phrase: str
    status_id: str | None = None  # the id a failed status record is written under; None: no record at all
    error: type[StemworkerError] = InvalidJob


def _id(value: object, **extra: object) -> str:
    return json.dumps({"id": value, **extra})


REJECTED_MESSAGES = [
    # Path traversal and other id tricks: never a key, never a status record.
    Rejected("dotdot-json", _id("../../etc/passwd"), "job id must be a string of 1-128 characters"),
    Rejected("dotdot-bare", "../secret", "message is not valid JSON"),
    Rejected("absolute-path", _id("/etc/passwd"), "job id must be"),
    Rejected("url-encoded-dotdot", _id("%2e%2e%2fsecret"), "job id must be"),
    Rejected("nul-byte", '{"id": "abc\\u0000def"}', "job id must be"),
    Rejected("cyrillic-a", _id("\u0430bc123"), "job id must be"),
    Rejected("fullwidth-dots", _id("\uff0e\uff0e\uff0fx"), "job id must be"),
    Rejected("division-slash", _id("a\u2215b"), "job id must be"),
    Rejected("slash-in-songhash", json.dumps({"songhash": "a/b"}), "job id must be"),
    Rejected("backslash", _id("..\\..\\boot.ini"), "job id must be"),
    Rejected("over-long-id", _id("a" * 129), "got '" + "a" * 80 + "'..."),  # shown cut to 80 characters
    Rejected("empty-id", _id(""), "job id must be"),
    Rejected("bare-digits", "12345", "job must be a track id string or a JSON object, got int"),
    # Wrong JSON types.
    Rejected("id-number", _id(123), "job id must be a string of 1-128 characters [A-Za-z0-9_-], got 123"),
    Rejected("id-list", _id(["a"]), "got ['a']"),
    Rejected("id-null", '{"id": null}', "got None"),
    Rejected("top-level-list", '["abc"]', "got list"),
    Rejected("top-level-float", "3.14", "got float"),
    Rejected("id-bool", '{"id": true}', "got True"),
    Rejected("quoted-dotdot", '"../x"', "job id must be"),
    Rejected("no-id-field", '{"name": "song"}', "job object has no id"),
    Rejected("not-json", "{id: abc}", "message is not valid JSON"),
    Rejected("not-utf8", b"\xff\xfe\x00abc", "message is not UTF-8 text"),
    # Poison messages that once escaped the parser and crashed every runner (issue: robust by default).
    Rejected("deep-list", "[" * 1000 + "]" * 1000, "nested deeper than 64 levels"),
    Rejected("deep-unclosed", "[" * 2000, "nested deeper than 64 levels"),
    Rejected(
        "deep-in-callback",
        '{"id": "d1", "callback": {"url": "http://x/", "data": ' + "[" * 900 + "]" * 900 + "}}",
        "nested deeper than 64 levels",
    ),
    Rejected("huge-number", "7" * 5000, "JSON number of 5000 characters"),
    Rejected("huge-number-id", '{"id": ' + "7" * 5000 + "}", "JSON number of 5000 characters"),
    Rejected("huge-float", "1." + "5" * 5000, "JSON number of 5002 characters"),
    # JSON literals are not ids, bare or quoted-less: rejected before any I/O, with no status record.
    Rejected("bare-null", "null", "got NoneType"),
    Rejected("bare-true", "true", "got bool"),
    Rejected("bare-false", "false", "got bool"),
    Rejected("bare-minus-one", "-1", "got int"),
    Rejected("bare-inf-float", "1e309", "JSON number 1e309 is out of range"),
    Rejected("bare-nan", "NaN", "NaN is not a JSON value"),
    Rejected("bare-infinity", "-Infinity", "-Infinity is not a JSON value"),
    Rejected("id-nan", '{"id": NaN}', "NaN is not a JSON value"),
    Rejected("lone-surrogate", r'{"id": "\ud800"}', "job id must be"),
    Rejected("empty", "   ", "message is empty"),
    Rejected("huge", json.dumps({"id": "big1", "pad": "x" * 70_000}), "over MAX_MESSAGE_BYTES=65536"),
    Rejected(
        "bad-cloudevent-version",
        json.dumps({"specversion": "0.3", "id": "e", "source": "s", "type": "t", "data": "okid"}),
        "unsupported CloudEvent specversion",
    ),
    Rejected(
        "cloudevent-id-newline",
        json.dumps(
            {"specversion": "1.0", "id": "e1\nfake.worker.info:done", "source": "s", "type": "t", "data": "okid"}
        ),
        "CloudEvent attribute 'id' must be 1-256 printable ASCII characters",
    ),
    # Models, stems and formats: the id is valid, so the failure is recorded under it.
    Rejected("unknown-model", _id("m1", model="htdemucs_ft"), "model 'htdemucs_ft' is not allowed", "m1"),
    Rejected("model-path", _id("m2", model="../tiny"), "model '../tiny' is not allowed", "m2"),
    Rejected("model-list", _id("m3", model=["tiny"]), "model must be a string, got list", "m3"),
    # Stem names: any name is checked against the loaded model's stems (tests/test_models.py); only the form here.
    Rejected("stem-path", _id("s1", stems=["../vocals"]), "stem names must be 1-64 characters", "s1"),
    Rejected("stems-string", _id("s2", stems="vocals"), "stems must be a non-empty list", "s2"),
    Rejected("stems-empty", _id("s3", stems=[]), "stems must be a non-empty list", "s3"),
    Rejected(
        "stems-and-two-stems",
        _id("s4", stems=["bass"], two_stems="vocals"),
        "stems and two_stems cannot be used together",
        "s4",
    ),
    Rejected("two-stems-template", _id("s5", two_stems="{stem}"), "two_stems must be one stem name", "s5"),
    Rejected("format-exe", _id("f1", format="exe"), "format must be one of ['mp3', 'wav', 'flac']", "f1"),
    # Template injection: ids and models can never reach str.format as anything but a checked value.
    Rejected("template-id", _id("{id}"), "job id must be"),
    Rejected("template-attr-id", _id("{settings.minio_secret_key}"), "job id must be"),
    Rejected("template-model", _id("t1", model="{0.__class__.__mro__}"), "is not allowed", "t1"),
    Rejected("jndi-id", _id("${jndi:ldap://x/a}"), "job id must be"),
    # Callback of the wrong type.
    Rejected("callback-number", _id("c1", callback=42), "callback must be a URL string or an object", "c1"),
    Rejected("callback-list", _id("c2", callback=["http://x"]), "got list", "c2"),
    # An object without a usable url is "no callback" (tests/test_rest_tiers.py), never a rejection.
]


def _status(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(f"status:{job_id}").items()}


def _output_is_empty(s3, bucket: str) -> bool:
    return not s3.bucket_exists(bucket) or not list(s3.list_objects(bucket, recursive=True))


def _dead_letter(settings, redis_client, worker: Worker, message: str | bytes) -> dict:
    """Send the same message through the job runner and return its dead-letter entry."""
    redis_client.rpush(settings.queue_key, message)
    result = Runner(settings, worker).run_once(wait_s=0)
    assert result.outcome is Outcome.DEAD
    assert redis_client.llen(settings.queue_key) == 0
    (entry,) = [json.loads(raw) for raw in redis_client.lrange(dead_key(settings.queue_key), 0, -1)]
    return entry


@pytest.mark.parametrize("case", REJECTED_MESSAGES, ids=lambda c: c.name)
def test_rejected_message(case: Rejected, settings, worker, redis_client, s3) -> None:
    with pytest.raises(case.error) as caught:
        worker.handle(event_from_message(case.message, settings.max_message_bytes))
    assert case.phrase in str(caught.value)
    if case.status_id is None:
        assert redis_client.keys("status:*") == []
    else:
        record = _status(redis_client, case.status_id)
        assert record["state"] == "failed" and case.phrase in record["error"]
        assert redis_client.keys("status:*") == [f"status:{case.status_id}".encode()]
    assert _output_is_empty(s3, settings.output_bucket)

    entry = _dead_letter(settings, redis_client, worker, case.message)
    assert entry["error_type"] == case.error.__name__ and entry["permanent"] is True
    assert case.phrase in entry["error"]
    assert entry["job_id"] == case.status_id
    assert entry["attempts"] == 1
    body = case.message.encode() if isinstance(case.message, str) else case.message
    assert entry["message"] == body[:4096].decode("utf-8", "replace")  # bounded: a few KB, plus size and digest
    assert entry["message_bytes"] == len(body) and entry["truncated"] is (len(body) > 4096)
    assert entry["message_sha256"] == hashlib.sha256(body).hexdigest()
    assert _output_is_empty(s3, settings.output_bucket)


def _song(seconds: float = 1.5) -> np.ndarray:
    return sample_song.generate(seconds)


def _wav_with(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(sample_song.wav_bytes(_song()))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@dataclass(frozen=True)
class BadAudio:
    """An upload the worker must refuse (UnprocessableInput), with the settings that make it bad."""

    name: str
    data: Callable[[], bytes]
    phrase: str
    settings: dict[str, object] = field(default_factory=dict)


REJECTED_AUDIO = [
    BadAudio("non-audio-bytes", lambda: b"this is not audio" * 100, "input is not decodable audio"),
    BadAudio("html-page", lambda: b"<!doctype html><html><body>404</body></html>", "input is not decodable audio"),
    BadAudio("truncated-inside-header", lambda: sample_song.song_mp3(2.0)[:200], "input is not decodable audio"),
    BadAudio("id3-tag-only", lambda: b"ID3\x04\x00\x00\x00\x00\x00\x00", "input is not decodable audio"),
    BadAudio("zero-length", lambda: b"", "is empty (0 bytes)"),
    BadAudio("wav-zero-channels", lambda: _wav_with(22, "<H", 0), "input is not decodable audio"),
    BadAudio("wav-zero-frames", lambda: sample_song.wav_bytes(_song()[:, :0]), "input audio has no samples"),
    BadAudio("wav-nan-samples", lambda: _nan_wav(), "input audio contains NaN or infinite samples"),
    BadAudio("wav-lying-rate", lambda: _wav_with(24, "<I", 1), "over MAX_DURATION_S=3600"),
    BadAudio("oversize", lambda: sample_song.song_mp3(2.0), "over MAX_INPUT_BYTES=1000", {"max_input_bytes": 1000}),
    BadAudio("too-long", lambda: sample_song.song_mp3(2.0), "long, over MAX_DURATION_S=1", {"max_duration_s": 1}),
]


def _nan_wav() -> bytes:
    wav = _song().copy()
    wav[0, 100] = np.nan
    return sample_song.wav_bytes(wav, subtype="FLOAT")


@pytest.mark.parametrize("case", REJECTED_AUDIO, ids=lambda c: c.name)
def test_rejected_audio(case: BadAudio, make_settings, redis_client, upload, s3) -> None:
    settings = make_settings(**case.settings)
    worker = Worker(settings)
    upload("bad1", case.data())
    with pytest.raises(UnprocessableInput) as caught:
        worker.handle(event_from_message("bad1", settings.max_message_bytes))
    assert case.phrase in str(caught.value)
    assert "/tmp" not in str(caught.value)  # no server path in what the REST tier shows
    record = _status(redis_client, "bad1")
    assert record["state"] == "failed" and case.phrase in record["error"] and record["retryable"] == "0"
    assert _output_is_empty(s3, settings.output_bucket)

    entry = _dead_letter(settings, redis_client, worker, "bad1")
    assert entry["error_type"] == "UnprocessableInput" and entry["permanent"] is True
    assert case.phrase in entry["error"] and entry["job_id"] == "bad1"
    assert _output_is_empty(s3, settings.output_bucket)


@dataclass(frozen=True)
class OddAudio:
    """Real audio in an unusual shape, uploaded under `{id}.mp3`; it must separate."""

    name: str
    data: Callable[[], bytes]
    seconds: float  # how much audio the input holds


ACCEPTED_AUDIO = [
    OddAudio("mono-mp3", lambda: sample_song.mp3_bytes(_song()[:1]), 1.5),
    OddAudio("8khz-wav", lambda: sample_song.wav_bytes(_song()[:, ::5][:, :12_000], 8000), 1.5),
    OddAudio("96khz-flac", lambda: sample_song.wav_bytes(np.repeat(_song(), 2, axis=1), 96_000, "FLAC"), 1.378),
    OddAudio("very-short-mp3", lambda: sample_song.mp3_bytes(_song()[:, :8_820]), 0.2),
    OddAudio("ten-samples-wav", lambda: sample_song.wav_bytes(_song()[:, :10]), 10 / 44100),
    OddAudio("silent-mp3", lambda: sample_song.mp3_bytes(np.zeros((2, 44_100), np.float32)), 1.0),
    OddAudio("wav-named-mp3", lambda: sample_song.wav_bytes(_song()), 1.5),
    OddAudio("flac-named-mp3", lambda: sample_song.wav_bytes(_song(), fmt="FLAC"), 1.5),
    OddAudio("six-channel-wav", lambda: sample_song.wav_bytes(np.concatenate([_song()] * 3)), 1.5),
    OddAudio("truncated-mp3", lambda: sample_song.song_mp3(2.0)[: len(sample_song.song_mp3(2.0)) // 2], 1.0),
    OddAudio("wav-unknown-length", lambda: _wav_with(40, "<I", 0xFFFFFFF0), 1.5),
]


@pytest.mark.parametrize("case", ACCEPTED_AUDIO, ids=lambda c: c.name)
def test_accepted_audio(case: OddAudio, worker, redis_client, upload, s3) -> None:
    upload("odd1", case.data())
    result = worker.handle(event_from_message("odd1", worker.settings.max_message_bytes))
    assert result["state"] == "done" and _status(redis_client, "odd1")["state"] == "done"
    assert result["audio_seconds"] == pytest.approx(case.seconds, abs=0.1)
    assert set(result["stems"]) == {"bass", "drums", "vocals", "other"}
    for where in result["stems"].values():
        decoded, rate = soundfile.read(io.BytesIO(s3.get_object(where["bucket"], where["key"]).read()))
        assert rate == 44100 and decoded.ndim == 2 and decoded.shape[1] == 2
        assert decoded.shape[0] > 0 and np.isfinite(decoded).all()
