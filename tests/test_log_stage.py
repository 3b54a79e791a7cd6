"""LOG_FORMAT=json lines carry the job's `stage` (and `job_id`) where the worker knows them; the Redis `logging`
list keeps its plain `<host>.worker.<level>:<message>` format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from function.errors import UnprocessableInput
from function.logs import JsonFormatter
from function.messages import new_event
from function.runner import Outcome, Runner
from workbench import sample_song


@pytest.fixture
def json_lines():
    """Every stemworker log record of the test, formatted as LOG_FORMAT=json formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("stemworker")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_each_state_change_line_names_its_stage(worker, upload, redis_client, settings, json_lines):
    upload("staged", sample_song.song_mp3(seconds=1.0))
    worker.handle(new_event({"songhash": "staged", "stems": ["vocals"]}))
    with pytest.raises(UnprocessableInput):
        worker.handle(new_event({"songhash": "nosong"}))
    lines = json_lines()
    staged = [line["stage"] for line in lines if line.get("job_id") == "staged" and "stage" in line]
    assert staged == ["received", "downloading", "separating", "uploading", "done"]  # the id from the job context
    failed = [line for line in lines if line.get("job_id") == "nosong"]
    assert [line["stage"] for line in failed] == ["received", "failed"] and failed[-1]["level"] == "error"
    assert [line["stage"] for line in lines if line["message"].startswith("received event")] == ["received"] * 2
    # The Redis list keeps its format: no JSON, no stage field.
    listed = [raw.decode() for raw in redis_client.lrange(settings.log_key, 0, -1)]
    assert any(line.partition(".worker.info:")[2].startswith("job staged: done in ") for line in listed)
    assert all(".worker." in line and not line.startswith("{") and '"stage"' not in line for line in listed)


def test_runner_lines_carry_job_id_and_stage(settings, redis_client, json_lines):
    redis_client.rpush(settings.queue_key, "absent")
    assert Runner(settings).run_once(1).outcome is Outcome.DEAD
    stages = {line["stage"]: line.get("job_id") for line in json_lines() if "stage" in line}
    assert stages["claimed"] == "absent"  # "claimed job <id>" has no `job <id>:` prefix: the id is passed along
    assert stages["failed"] == "absent" and stages["dead"] == "absent"
