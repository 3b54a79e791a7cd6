"""Replay: saved events and dead-letter entries run again through the real worker, a dry run, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function import messages, replay
from function.core import Worker
from function.errors import UnprocessableInput
from function.keys import dead_key
from function.messages import event_from_message, new_event
from function.runner import Outcome, Runner


def last_json(text: str) -> dict:
    """The last JSON object printed in `text`: the CLI's own answer, after any log lines the worker wrote to the
    same stream (which ones depends on how logging was set up by earlier tests in the same process)."""
    starts = [i for i, line in enumerate(text.splitlines(keepends=True)) if line.startswith("{")]
    lines = text.splitlines(keepends=True)
    for start in reversed(starts):
        try:
            return json.JSONDecoder().raw_decode("".join(lines[start:]))[0]
        except ValueError:
            continue
    raise AssertionError(f"no JSON object in {text!r}")


def status(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(f"status:{job_id}").items()}


def test_dead_letter_round_trip_fix_the_data_then_replay(env, settings, redis_client, upload, song, s3, capsys):
    redis_client.rpush(settings.queue_key, json.dumps({"songhash": "dl1", "stems": ["bass", "vocals"]}))
    result = Runner(settings).run_once(0)
    assert result.outcome == Outcome.DEAD and "not found" in (result.error or "")
    entry = json.loads(redis_client.lindex(dead_key(settings.queue_key), -1))
    assert entry["job_id"] == "dl1" and entry["error_type"] == "UnprocessableInput"

    upload("dl1", song)  # fix the data
    assert replay.main(["--from-dead-letter", "--dry-run"]) == 0
    assert last_json(capsys.readouterr().out)["job"]["stems"] == ["bass", "vocals"]
    assert replay.main(["--from-dead-letter"]) == 0
    printed = last_json(capsys.readouterr().out)
    assert printed["state"] == "done" and set(printed["stems"]) == {"bass", "vocals"}
    for where in printed["stems"].values():
        assert s3.stat_object(where["bucket"], where["key"]).size > 0
    assert status(redis_client, "dl1")["state"] == "done"


def test_dead_letter_entry_without_event_replays_its_raw_message(env, settings, redis_client):
    entry = {
        "message": "dl-raw",
        "event": None,
        "job_id": None,
        "error": "x",
        "error_type": "InvalidJob",
        "permanent": True,
        "attempts": 1,
        "first_seen_at": "",
        "failed_at": "",
    }
    redis_client.rpush(dead_key(settings.queue_key), json.dumps(entry))
    assert replay.main(["--from-dead-letter", "0", "--dry-run"]) == 0
    assert replay.main(["--from-dead-letter", "5"]) == 2


def test_saved_event_replays_after_the_input_arrives(
    make_settings, redis_client, upload, song, tmp_path, env, monkeypatch, capsys
):
    saved_dir = tmp_path / "events"
    worker = Worker(make_settings(save_events_dir=saved_dir))
    event = event_from_message('{"songhash": "saved1", "format": "flac"}', 65536)
    with pytest.raises(UnprocessableInput):
        worker.handle(event)
    path = saved_dir / f"{event['id']}.json"
    saved = json.loads(path.read_text())
    assert saved["type"] == event["type"] and saved["data"] == {"songhash": "saved1", "format": "flac"}

    assert replay.main([str(path)]) == 1  # still missing: the error is printed, the exit code says so
    assert "not found" in last_json(capsys.readouterr().err)["error"]
    upload("saved1", song)
    monkeypatch.setenv("SAVE_EVENTS_DIR", str(tmp_path / "replayed"))
    assert replay.main([str(path), "--new-id"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["format"] == "flac" and len(result["stems"]) == 4
    replayed = list((tmp_path / "replayed").glob("*.json"))
    assert len(replayed) == 1 and replayed[0].name != path.name


def test_a_save_failure_never_fails_the_job(make_settings, redis_client, upload, song, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    upload("savefail", song)
    result = Worker(make_settings(save_events_dir=blocker)).handle(new_event("savefail"))
    assert result["state"] == "done"
    lines = [line.decode() for line in redis_client.lrange("logging", 0, -1)]
    assert any("could not save event" in line for line in lines)


def test_dry_run_rejects_an_invalid_job_and_bad_files_exit_2(env, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(messages.event_json(new_event({"id": "../../x"})))
    assert replay.main([str(bad), "--dry-run"]) == 1
    assert "job id" in last_json(capsys.readouterr().err)["error"]
    not_event = tmp_path / "not-event.json"
    not_event.write_text('{"songhash": "x"}')
    assert replay.main([str(not_event)]) == 2
    assert "specversion" in capsys.readouterr().err
    assert replay.main([str(tmp_path / "missing.json")]) == 2
    with pytest.raises(SystemExit):
        replay.main([])


def test_unsafe_event_ids_never_become_paths(tmp_path):
    event = new_event("abc", event_id="../../etc/passwd")
    path = messages.save_event(event, tmp_path)
    assert path.parent == tmp_path and ".." not in path.name
    assert messages.read_event_file(path)["id"] == "../../etc/passwd"
    assert Path(messages.event_file_name("ok-id_1")).stem == "ok-id_1"
