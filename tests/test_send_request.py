"""scripts/send-request.py against real Redis and S3: message forms, flooding with server-side copies, following
the jobs while a real job runner separates them, and events printed ready for replay."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from pathlib import Path

import pytest

from function import audio, replay
from function.runner import Outcome, Runner
from workbench import sample_song

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "send-request.py"


def load_script():
    spec = importlib.util.spec_from_file_location("send_request", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


send_request = load_script()


def queued(redis_client, settings) -> list[str]:
    return [raw.decode() for raw in redis_client.lrange(settings.queue_key, 0, -1)]


def test_message_forms(env, settings, redis_client, s3):
    assert send_request.main(["--form", "bare", "--id", "formbare"]) == 0
    assert (
        send_request.main(
            [
                "--id",
                "formjson",
                "--model",
                "tiny",
                "--stems",
                "bass,vocals",
                "--format",
                "wav",
                "--callback",
                "http://example.invalid/hook",
            ]
        )
        == 0
    )
    assert send_request.main(["--form", "cloudevent", "--id", "formce", "--two-stems", "vocals"]) == 0
    bare, as_json, as_event = queued(redis_client, settings)
    assert bare == "formbare"
    assert json.loads(as_json) == {
        "songhash": "formjson",
        "model": "tiny",
        "stems": ["bass", "vocals"],
        "format": "wav",
        "callback": "http://example.invalid/hook",
    }
    event = json.loads(as_event)
    assert event["specversion"] == "1.0" and event["data"] == {"songhash": "formce", "two_stems": "vocals"}
    for job_id in ("formbare", "formjson", "formce"):
        assert s3.stat_object(settings.input_bucket, f"{job_id}.mp3").size > 0
        assert redis_client.hget(f"status:{job_id}", "state") == b"queued"


def test_no_upload_pushes_a_job_whose_input_is_missing(env, settings, redis_client, s3):
    assert send_request.main(["--id", "gone", "--form", "bare", "--no-upload"]) == 0
    assert queued(redis_client, settings) == ["gone"]
    assert not s3.bucket_exists(settings.input_bucket) or not list(s3.list_objects(settings.input_bucket))


def test_bad_options_exit_2(env, redis_client, settings):
    with pytest.raises(SystemExit) as bare_with_stems:
        send_request.main(["--form", "bare", "--stems", "vocals"])
    assert bare_with_stems.value.code == 2
    assert send_request.main(["--id", "../x"]) == 2
    assert send_request.main(["--song", "/nonexistent/song.mp3"]) == 2
    assert queued(redis_client, settings) == []


def test_print_event_no_push_is_ready_to_replay(env, settings, redis_client, tmp_path, capsys):
    assert send_request.main(["--id", "printed", "--format", "flac", "--print-event", "--no-push"]) == 0
    out = capsys.readouterr().out
    assert queued(redis_client, settings) == []
    path = tmp_path / "event.json"
    path.write_text(out)
    assert replay.main([str(path), "--dry-run"]) == 0
    job = json.loads(capsys.readouterr().out)["job"]
    assert job["id"] == "printed" and job["format"] == "flac"
    assert replay.main([str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "done"


def test_flood_copies_one_upload_and_wait_follows_a_real_runner(env, settings, redis_client, s3, capsys):
    stop = threading.Event()
    outcomes: list[Outcome] = []

    def run_jobs() -> None:
        runner = Runner(settings)
        while not stop.is_set() and len([o for o in outcomes if o == Outcome.DONE]) < 3:
            outcomes.append(runner.run_once(0.5).outcome)

    worker = threading.Thread(target=run_jobs, daemon=True)
    worker.start()
    try:
        code = send_request.main(["--count", "3", "--id", "flood", "--stems", "vocals", "--wait", "--timeout-s", "300"])
    finally:
        stop.set()
        worker.join(60)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "copied it to 2 more key(s)" in err and "3 done, 0 failed, 0 unfinished" in err
    ids = ["flood-0", "flood-1", "flood-2"]
    sizes = {s3.stat_object(settings.input_bucket, f"{job_id}.mp3").size for job_id in ids}
    assert len(sizes) == 1
    for job_id in ids:
        assert redis_client.hget(f"status:{job_id}", "state") == b"done"
        assert s3.stat_object(settings.output_bucket, f"{job_id}-vocals.mp3").size > 0
    assert outcomes.count(Outcome.DONE) == 3


def test_distinct_flood_uploads_different_files_of_the_same_song(env, settings, redis_client, s3, tmp_path):
    song = sample_song.song_mp3(seconds=2.0)
    (tmp_path / "song.mp3").write_bytes(song)
    assert (
        send_request.main(
            ["--song", str(tmp_path / "song.mp3"), "--count", "3", "--id", "dist", "--distinct", "--no-push"]
        )
        == 0
    )
    copies = [s3.get_object(settings.input_bucket, f"dist-{n}.mp3").read() for n in range(3)]
    assert len({hashlib.sha256(data).digest() for data in [song, *copies]}) == 4
    for n, data in enumerate(copies):
        (tmp_path / f"{n}.mp3").write_bytes(data)
        assert abs(audio.probe_duration_s(tmp_path / f"{n}.mp3") - 2.0) < 0.1


def test_wait_reports_failures_and_the_deadline(env, settings, redis_client, s3, capsys):
    # Nobody consumes the queue: the deadline passes with the job still queued.
    assert send_request.main(["--id", "stuck", "--wait", "--timeout-s", "0.5"]) == 1
    assert "0 done, 0 failed, 1 unfinished" in capsys.readouterr().err
    redis_client.delete(settings.queue_key)
    # A job whose input vanished fails, and following it reports the failure with its error.
    assert send_request.main(["--id", "willfail"]) == 0
    s3.remove_object(settings.input_bucket, "willfail.mp3")
    assert Runner(settings).run_once(0).outcome == Outcome.DEAD
    capsys.readouterr()
    assert send_request.follow(redis_client, settings, ["willfail"], 30) == 1
    err = capsys.readouterr().err
    assert "willfail: failed" in err and "not found" in err and "0 done, 1 failed" in err


def test_tier_variants(env, settings, redis_client, s3, tier_bucket):
    """Each flag that reproduces a REST tier's message or layout (docs/rest-tiers.md)."""
    assert (
        send_request.main(
            ["--id", "v1", "--push", "lpush", "--id-field", "hash", "--model", "default", "--empty-callback", "object"]
        )
        == 0
    )
    assert send_request.main(["--id", "v2", "--push", "rpush", "--empty-callback", "null"]) == 0
    assert (
        send_request.main(
            ["--id", "v3", "--bucket", tier_bucket, "--key", "users/7/{id}.mp3", "--empty-callback", "string"]
        )
        == 0
    )
    assert (
        send_request.main(
            [
                "--id",
                "v4",
                "--form",
                "bare",
                "--push",
                "lpush",
                "--no-status",
                "--tier-field",
                "status=queued",
                "--tier-field",
                "filename=My Song.mp3",
            ]
        )
        == 0
    )
    assert send_request.main(["--id", "v5", "--id-field", "id", "--empty-callback", "array"]) == 0
    assert send_request.main(["--id", "v6", "--key", "up/{id}.mp3", "--key-field", "object_name"]) == 0
    # LPUSHed messages sit at the head, RPUSHed ones at the tail.
    assert [json.loads(m) if m.startswith("{") else m for m in queued(redis_client, settings)] == [
        "v4",
        {"hash": "v1", "model": "default", "callback": {}},
        {"songhash": "v2", "callback": None},
        {"songhash": "v3", "bucket": tier_bucket, "key": "users/7/v3.mp3", "callback": ""},
        {"id": "v5", "callback": []},
        {"songhash": "v6", "object_name": "up/v6.mp3"},
    ]
    assert s3.stat_object(settings.input_bucket, "up/v6.mp3").size > 0
    assert s3.stat_object(tier_bucket, "users/7/v3.mp3").size > 0
    assert redis_client.hgetall("status:v4") == {b"status": b"queued", b"filename": b"My Song.mp3"}
    assert redis_client.ttl("status:v4") == -1  # only the tier's fields: it set no expiry
    assert redis_client.hget("status:v1", "state") == b"queued"


def test_tier_variant_flags_that_contradict_exit_2(env, redis_client, settings):
    for argv in (
        ["--form", "bare", "--bucket", "b"],
        ["--form", "bare", "--id-field", "hash"],
        ["--callback", "http://x/", "--empty-callback", "object"],
        ["--tier-field", "novalue"],
    ):
        with pytest.raises(SystemExit) as exited:
            send_request.main(argv)
        assert exited.value.code == 2, argv
    assert queued(redis_client, settings) == []


def test_a_bucket_per_song(env, settings, redis_client, s3, monkeypatch):
    """INPUT_BUCKET={id}: each job's song goes to a bucket of its own (the first uploaded, the others copied)."""
    monkeypatch.setenv("INPUT_BUCKET", "{id}")
    try:
        assert send_request.main(["--id", "persong", "--count", "2"]) == 0
        for job_id in ("persong-0", "persong-1"):
            assert s3.stat_object(job_id, f"{job_id}.mp3").size > 0
        worker = settings.model_copy(update={"input_bucket": "{id}"})
        assert [Runner(worker).run_once(0).outcome for _ in range(2)] == [Outcome.DONE, Outcome.DONE]
    finally:
        for bucket in ("persong-0", "persong-1"):
            if s3.bucket_exists(bucket):
                for item in s3.list_objects(bucket, recursive=True):
                    s3.remove_object(bucket, item.object_name)
                s3.remove_bucket(bucket)
