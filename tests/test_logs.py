"""LOG_FORMAT=json and text lines: UTC ISO-8601 times whatever TZ, and the job's id and attempt on every line of a
job (function/logs.py), with stage, duration and error type as fields. The job runner runs real jobs in a child
process under TZ=America/New_York; its stderr is parsed line by line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from datetime import datetime

import pytest
from support import REPO_ROOT, tiny_runner_env

from function.logs import JsonFormatter, TextFormatter, job_context
from function.runner import Outcome, Runner

NEW_YORK = "America/New_York"


def parsed_time(line: dict) -> float:
    text = line["time"]
    assert text.endswith("Z"), text
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset().total_seconds() == 0
    return stamp.timestamp()


def run_runner(settings, *args: str, **env: str) -> tuple[list[dict], float, float]:
    before = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "function.runner", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=tiny_runner_env(
            settings,
            CLAIM_WAIT_S="1",
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            TZ=NEW_YORK,
            **env,
        ),
    )
    after = time.time()
    lines = [json.loads(text) for text in done.stderr.splitlines()]  # every stderr line is one JSON object
    assert lines, done.stderr
    return lines, before, after


def test_every_line_of_every_kind_of_job_has_its_id_attempt_and_a_utc_time(
    settings, redis_client, upload, song, receiver
):
    upload("logged", song)
    redis_client.rpush(
        settings.queue_key, json.dumps({"songhash": "logged", "callback": receiver.url}), "nosong", "{not json"
    )
    lines, before, after = run_runner(settings, "--max-messages", "3")
    for line in lines:
        # The UTC instant it was written: a local time marked Z would be 5 hours off in New York.
        assert before - 1 <= parsed_time(line) <= after + 1, line
        assert line["level"] in {"debug", "info", "warning", "error"} and line["logger"]
    by_job: dict[str, list[dict]] = {}
    for line in lines:
        by_job.setdefault(line.get("job_id"), []).append(line)
    done, dead = by_job["logged"], by_job["nosong"]
    assert {line["stage"] for line in done if "stage" in line} >= {
        "claimed",
        "received",
        "downloading",
        "separating",
        "uploading",
        "done",
        "callback",
    }
    assert {line["stage"] for line in dead if "stage" in line} >= {"claimed", "received", "failed", "dead"}
    for line in done + dead:
        assert line["attempt"] == 1, line
    # Every line that names one of the jobs carries its id, whatever logger wrote it.
    for job_id, its_lines in (("logged", done), ("nosong", dead)):
        assert all(line in its_lines for line in lines if f"job {job_id}" in line["message"]), job_id
        assert all("event_id" in line for line in its_lines if "stage" in line), job_id
    # Fields, not only text: durations and error types.
    (finished,) = [line for line in done if line.get("stage") == "done"]
    assert finished["duration_s"] > 0
    (downloaded,) = [line for line in done if line.get("stage") == "downloading"]
    assert downloaded["duration_s"] >= 0
    (failed,) = [line for line in dead if line.get("stage") == "failed"]
    assert failed["error_type"] == "UnprocessableInput" and failed["duration_s"] >= 0
    (dead_lettered,) = [line for line in dead if line.get("stage") == "dead"]
    assert dead_lettered["error_type"] == "UnprocessableInput"
    # A message with no id still has its attempt on its lines.
    (malformed,) = [line for line in lines if line["message"].startswith("malformed message")]
    assert malformed["attempt"] == 1 and malformed["error_type"] == "InvalidJob" and "job_id" not in malformed
    # Outside a job, no job fields.
    outcomes = [line for line in lines if line["message"].startswith("outcome")]
    assert [line.get("job_id") for line in outcomes] == ["logged", "nosong", None]


@pytest.fixture
def json_lines():
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


def test_requeued_and_interrupted_lines_carry_the_job_and_its_error(make_settings, redis_client, json_lines):
    closed = make_settings(minio_endpoint="127.0.0.1:9", s3_timeout_s=1)
    redis_client.rpush(closed.queue_key, "flaky")
    assert Runner(closed).run_once(wait_s=1).outcome is Outcome.REQUEUED
    stopping = Runner(closed)
    stopping.stopping = True
    assert stopping.run_once(wait_s=1).outcome is Outcome.INTERRUPTED
    lines = json_lines()
    (requeued,) = [line for line in lines if line.get("stage") == "requeued"]
    assert requeued["job_id"] == "flaky" and requeued["attempt"] == 1 and requeued["error_type"] == "Transient"
    assert requeued["duration_s"] > 0
    (interrupted,) = [line for line in lines if line.get("stage") == "interrupted"]
    assert interrupted["job_id"] == "flaky" and interrupted["attempt"] == 2
    assert interrupted["error_type"] == "Interrupted"
    assert all(line.get("job_id") == "flaky" and "attempt" in line for line in lines if "flaky" in line["message"])


def record(message: str, created: float) -> logging.LogRecord:
    entry = logging.LogRecord("stemworker", logging.INFO, __file__, 1, message, None, None)
    entry.created = created
    return entry


def test_text_lines_are_utc_and_name_the_job_in_a_child_process_under_another_tz():
    """The text format too, in a fresh interpreter whose local time is New York's."""
    code = (
        "import logging; from function.logs import TextFormatter, job_context;"
        "r = logging.LogRecord('stemworker', logging.INFO, 'x', 1, 'hello', None, None); r.created = 1.0e9;"
        "f = TextFormatter(); print(f.format(r));"
        "exec('with job_context(job_id=\"j1\", attempt=2):\\n print(f.format(r))')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "TZ": NEW_YORK},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2001-09-09T01:46:40.000Z INFO stemworker: hello",
        "2001-09-09T01:46:40.000Z INFO stemworker: hello [job_id=j1 attempt=2]",
    ]


def test_json_fields_come_from_the_context_and_the_record():
    formatter = JsonFormatter()
    outside = json.loads(formatter.format(record("job abc: lifted from the text", 1.0e9)))
    assert outside == {
        "time": "2001-09-09T01:46:40.000Z",
        "level": "info",
        "logger": "stemworker",
        "message": "job abc: lifted from the text",
        "job_id": "abc",
    }
    with job_context(job_id="j1", attempt=3, event_id=None):
        inside = record("anything", 1.0e9)
        inside.stage = "done"
        inside.duration_s = 1.25
        fields = json.loads(formatter.format(inside))
    assert fields["job_id"] == "j1" and fields["attempt"] == 3 and "event_id" not in fields
    assert fields["stage"] == "done" and fields["duration_s"] == 1.25
    assert TextFormatter().format(record("x", 1.0e9)).startswith("2001-09-09T01:46:40.000Z INFO")
