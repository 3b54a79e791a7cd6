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
from function.keys import dead_key
from function.messages import event_from_message, new_event
from function.runner import Outcome, Runner


def run(worker: Worker, message: str | bytes):
    return worker.handle(event_from_message(message, worker.settings.max_message_bytes))


def status(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(f"status:{job_id}").items()}


def log_lines(redis_client) -> list[str]:
    return [line.decode() for line in reversed(redis_client.lrange("logging", 0, -1))]


@pytest.mark.both_cpus
def test_bare_id_separates_into_four_stems(cpu_kind, worker, upload, song, s3, redis_client):
    """With the shipped DEMUCS_PRECISION=auto, as on either kind of CPU."""
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
    assert record["precision"] == result["precision"] == {"native-bf16": "bf16", "no-bf16": "fp32"}[cpu_kind]
    assert json.loads(record["outputs"])["vocals"]["key"] == "abc123-vocals.mp3"
    lines = log_lines(redis_client)
    assert any(".worker.info:received event" in line for line in lines)
    assert any("downloaded" in line and "bytes" in line for line in lines)
    assert any("separating" in line and "tiny" in line and "cpu" in line for line in lines)
    assert sum("uploaded" in line for line in lines) == 4
    assert any(line.endswith(" s") and "done in" in line for line in lines)


def test_model_is_loaded_once_per_process(worker, upload, song, monkeypatch):
    upload("once1", song)
    upload("once2", song)
    run(worker, "once1")
    loads: list[str] = []
    real = separation.Separator
    monkeypatch.setattr(separation, "Separator", lambda *a, **k: loads.append(k["model"]) or real(*a, **k))
    run(worker, '{"songhash": "once2"}')
    assert loads == []


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


def test_layout_templates_and_stem_aliases(make_settings, redis_client, upload, song, s3):
    settings = make_settings(
        input_key="songs/{id}.mp3", output_key="{model}/{id}/{stem}.{ext}", stem_aliases="bass:base"
    )
    upload("lay1", song, key="songs/lay1.mp3")
    result = run(Worker(settings), '{"id": "lay1", "stems": ["bass", "vocals"], "format": "flac"}')
    assert result["stems"] == {
        "bass": {"bucket": settings.output_bucket, "key": "tiny/lay1/base.flac"},
        "vocals": {"bucket": settings.output_bucket, "key": "tiny/lay1/vocals.flac"},
    }
    names = sorted(o.object_name for o in s3.list_objects(settings.output_bucket, recursive=True))
    assert names == ["tiny/lay1/base.flac", "tiny/lay1/vocals.flac"]
    decoded, rate = soundfile.read(io.BytesIO(s3.get_object(settings.output_bucket, "tiny/lay1/base.flac").read()))
    assert rate == 44100 and decoded.shape[1] == 2


def test_status_walks_through_every_state_in_order(worker, upload, song, redis_client):
    upload("walk", song)
    run(worker, "walk")
    record = status(redis_client, "walk")
    stamps = [record[f"{state}_at"] for state in ("downloading", "separating", "uploading", "done")]
    assert record["received_at"] <= stamps[0] and stamps == sorted(stamps)
    assert record["model"] == "tiny" and record["attempts"] == "1" and float(record["seconds"]) > 0


def test_only_allowlisted_models_run(make_settings, redis_client, upload, song):
    upload("m2", song)
    with pytest.raises(InvalidJob, match="not allowed"):
        run(Worker(make_settings()), '{"id": "m2", "model": "tiny2"}')
    assert status(redis_client, "m2")["state"] == "failed"
    result = run(Worker(make_settings(demucs_models="tiny2")), '{"id": "m2", "model": "tiny2"}')
    assert result["model"] == "tiny2" and result["stems"]["drums"]["key"] == "m2-drums.mp3"


def test_callback_posts_the_payload_after_success(make_settings, redis_client, upload, song, receiver):
    worker = Worker(make_settings(callback_allow_hosts="127.0.0.1"))
    upload("cb1", song)
    result = run(worker, json.dumps({"id": "cb1", "callback": {"url": receiver.url, "data": {"mp3": "cb1"}}}))
    assert [r["json"] for r in receiver.requests] == [{"mp3": "cb1"}]
    assert result["callback"]["delivered"] is True
    assert status(redis_client, "cb1")["state"] == "done"  # persisted before the notification
    assert any("cb1: callback delivered" in line for line in log_lines(redis_client))


def test_plain_url_callback_gets_the_result(make_settings, redis_client, upload, song, receiver):
    worker = Worker(make_settings(callback_allow_hosts="127.0.0.1"))
    upload("cb2", song)
    run(worker, json.dumps({"id": "cb2", "callback": receiver.url}))
    (request,) = receiver.requests
    assert request["json"]["id"] == "cb2" and request["json"]["state"] == "done"
    assert request["json"]["stems"]["vocals"]["key"] == "cb2-vocals.mp3"


def test_failing_callback_never_fails_the_job(make_settings, redis_client, upload, song, receiver):
    receiver.status = 500
    worker = Worker(make_settings(callback_allow_hosts="127.0.0.1", callback_attempts=1))
    upload("cb3", song)
    result = run(worker, json.dumps({"id": "cb3", "callback": {"url": receiver.url, "data": {}}}))
    assert result["state"] == "done" and result["callback"]["delivered"] is False
    assert status(redis_client, "cb3")["state"] == "done"
    assert any("cb3: callback" in line and ".worker.error:" in line for line in log_lines(redis_client))


def test_temp_dir_is_removed_even_on_failure(worker, upload, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    upload("tmp1", b"junk" * 1000)
    with pytest.raises(UnprocessableInput):
        run(worker, "tmp1")
    assert list(tmp_path.iterdir()) == []


def test_oversized_event_data_is_the_same_permanent_rejection_directly_and_through_the_queue(
    worker, settings, redis_client, s3
):
    data = {"id": "big200", "pad": "x" * 200_000}
    event = new_event(data)
    with pytest.raises(InvalidJob, match=r"is [0-9]+ bytes, over MAX_MESSAGE_BYTES=65536") as direct:
        worker.handle(event)
    assert direct.value.permanent and "event data is" in str(direct.value)
    assert not s3.bucket_exists(settings.output_bucket)  # rejected before any I/O
    # The same request as a queue message (a structured CloudEvent): the same error class, the same limit.
    envelope = {"specversion": "1.0", "id": event["id"], "source": event["source"], "type": event["type"], "data": data}
    redis_client.rpush(settings.queue_key, json.dumps(envelope))
    result = Runner(settings, worker).run_once(wait_s=0)
    assert result.outcome is Outcome.DEAD
    (entry,) = [json.loads(raw) for raw in redis_client.lrange(dead_key(settings.queue_key), 0, -1)]
    assert entry["error_type"] == "InvalidJob" and entry["permanent"] is True
    assert "over MAX_MESSAGE_BYTES=65536" in entry["error"]
