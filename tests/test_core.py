"""End-to-end tests of `handle` against real Redis, real S3 and a tiny generated DEMUCS model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile

from function import separation
from function.core import Worker
from function.errors import InvalidJob, UnprocessableInput
from function.messages import event_from_message


def run(worker: Worker, message: str | bytes):
    return worker.handle(event_from_message(message, worker.settings.max_message_bytes))


def status(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(f"status:{job_id}").items()}


def log_lines(redis_client) -> list[str]:
    return [line.decode() for line in reversed(redis_client.lrange("logging", 0, -1))]


def test_bare_id_separates_into_four_stems(worker, upload, song, s3, redis_client):
    upload("abc123", song)
    result = run(worker, "abc123")
    assert result["state"] == "done"
    assert set(result["stems"]) == {"bass", "drums", "vocals", "other"}
    for stem, where in result["stems"].items():
        assert where["key"] == f"abc123-{stem}.mp3"
        data = s3.get_object(where["bucket"], where["key"]).read()
        decoded, rate = soundfile.read(io.BytesIO(data))
        assert rate == 44100 and decoded.shape[1] == 2 and decoded.shape[0] > 44100 * 2.5
    record = status(redis_client, "abc123")
    assert record["state"] == "done" and record["progress"] == "100"
    assert json.loads(record["outputs"])["vocals"]["key"] == "abc123-vocals.mp3"
    lines = log_lines(redis_client)
    assert any(".worker.info:received event" in line for line in lines)
    assert any("downloaded" in line and "bytes" in line for line in lines)
    assert any("separating" in line and "tiny" in line and "cpu" in line for line in lines)
    assert sum("uploaded" in line for line in lines) == 4
    assert any(line.endswith(" s") and "done in" in line for line in lines)


def test_model_is_loaded_once_per_process(worker, upload, song):
    upload("once1", song)
    upload("once2", song)
    run(worker, "once1")
    loads = separation.load_count
    run(worker, '{"songhash": "once2"}')
    assert separation.load_count == loads


def test_missing_input_fails_with_reason(worker, redis_client):
    with pytest.raises(UnprocessableInput, match="not found"):
        run(worker, "nosuchsong")
    record = status(redis_client, "nosuchsong")
    assert record["state"] == "failed" and "not found" in record["error"]
    assert any(".worker.error:job nosuchsong: failed" in line for line in log_lines(redis_client))


def test_invalid_id_gets_no_status_record(worker, redis_client):
    with pytest.raises(InvalidJob, match="job id"):
        run(worker, '{"id": "../../etc/passwd"}')
    assert redis_client.keys("status:*") == []
    assert any("rejected" in line and "job id" in line for line in log_lines(redis_client))


def test_non_audio_input_fails_cleanly(worker, upload, redis_client):
    upload("junk", b"this is not audio" * 100)
    with pytest.raises(UnprocessableInput, match="not decodable audio"):
        run(worker, "junk")
    assert status(redis_client, "junk")["state"] == "failed"


def test_rerun_starts_a_fresh_record(worker, upload, song, redis_client):
    with pytest.raises(UnprocessableInput):
        run(worker, "again")
    assert "error" in status(redis_client, "again")
    upload("again", song)
    run(worker, "again")
    record = status(redis_client, "again")
    assert record["state"] == "done" and "error" not in record


def test_wav_stems_and_two_stems(worker, upload, song, s3):
    upload("two", song)
    result = run(worker, '{"id": "two", "two_stems": "vocals", "format": "wav"}')
    assert set(result["stems"]) == {"vocals", "no_vocals"}
    data = s3.get_object(result["stems"]["no_vocals"]["bucket"], "two-no_vocals.wav").read()
    decoded, rate = soundfile.read(io.BytesIO(data))
    assert rate == 44100 and np.abs(decoded).max() > 0
