"""`stemworker doctor` against the real Redis and S3: the static checks, and `--watch` against the REST-tier emulator
(tests/rest_tier.py) in every shape of docs/rest-tiers.md. For each shape the tier submits one song while doctor
watches; the block doctor prints is applied as the worker's settings, and the job must then succeed through the
job runner, seen through the tier's own status field."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from rest_tier import Tier, TierClient
from support import wait_for

from function.runner import Outcome, Runner
from stemops.cli import main
from stemops.tierwatch import parse_monitor_line
from workbench import sample_song


@pytest.fixture(scope="module")
def short_song() -> bytes:
    return sample_song.song_mp3(seconds=1.0)


@pytest.fixture
def buckets(s3):
    """Buckets a tier made (fixed names, or one per song), emptied and removed afterwards."""
    names: list[str] = []
    yield names
    for name in {bucket.name for bucket in s3.list_buckets()} & set(names):
        for item in s3.list_objects(name, recursive=True):
            s3.remove_object(name, item.object_name)
        s3.remove_bucket(name)


@dataclass(frozen=True)
class Shape:
    """A tier: how it submits (`tier`) and its own layout (`layout`: the settings that describe where it puts
    things, which doctor has to find), with what doctor must print for it (`expected`)."""

    tier: Tier
    layout: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)


SHAPES = {
    "lpush": Shape(Tier("lpush", push="lpush", id_field="hash"), {}, {"QUEUE_POP": "right", "QUEUE_KEY": "toWorker"}),
    "rpush-bare": Shape(Tier("rpush-bare", push="rpush", id_field=None), {}, {"QUEUE_POP": "left"}),
    "list-toWorkers": Shape(
        Tier("toWorkers", push="lpush"), {"queue_key": "toWorkers"}, {"QUEUE_KEY": "toWorkers", "QUEUE_POP": "right"}
    ),
    "audio-tracks": Shape(
        Tier("audio-tracks", push="lpush"),
        {"input_bucket": "audio-tracks", "input_key": "{id}/original.mp3"},
        {"INPUT_BUCKET": "audio-tracks", "INPUT_KEY": "{id}/original.mp3"},
    ),
    "bare-id-queues": Shape(
        Tier("queues", push="lpush", id_field=None),
        {"input_bucket": "queues"},
        {"INPUT_BUCKET": "queues", "INPUT_KEY": "{id}.mp3"},
    ),
    "bucket-per-song": Shape(
        Tier("per-song", push="lpush"),
        {"input_bucket": "{id}", "input_key": "{id}.mp3"},
        {"INPUT_BUCKET": "{id}", "INPUT_KEY": "{id}.mp3"},
    ),
    "job-status-hash": Shape(
        Tier(
            "job-hash",
            push="lpush",
            own_status={"status": "queued", "filename": "a.mp3"},
            own_status_ttl_s=86400,
            status_field="status",
        ),
        {"status_key": "job:{id}"},
        {"STATUS_KEY": "job:{id}", "STATE_FIELDS": "state,status"},
    ),
    "object_name": Shape(
        Tier("object-name", push="lpush", key="uploads/{id}/song.mp3", key_field="object_name"),
        {},
        {"QUEUE_POP": "right"},
    ),
    "bucket-and-key-in-message": Shape(
        Tier("named", push="rpush", bucket="tier-uploads", key="u/{id}.mp3"), {}, {"INPUT_BUCKET": "tier-uploads"}
    ),
    "model-name": Shape(
        Tier("model", push="lpush", fields={"model": "mdx_extra_q", "user": 42}),
        {},
        {"MODEL_ALIASES": "mdx_extra_q:tiny"},
    ),
}


def watch_while(capsys, redis_client: redis.Redis, submit, *args: str) -> tuple[int, str, str]:
    """Run `stemworker doctor --watch` in a thread, `submit()` once it is listening, and return its exit code and
    output."""
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(code=main(["doctor", "--watch", *args])))
    thread.start()
    try:
        wait_for(
            lambda: (
                not thread.is_alive()
                or any(entry.get("cmd") in ("monitor", "psubscribe") for entry in redis_client.client_list())
            ),
            20,
            "doctor to listen",
        )
        submit()
    finally:
        thread.join(60)
    out, err = capsys.readouterr()
    assert not thread.is_alive()
    return result["code"], out, err


def block_of(out: str) -> dict[str, str]:
    """The NAME=value lines of doctor's output (comments left out)."""
    pairs = (line.split("=", 1) for line in out.splitlines() if line and not line.startswith("#") and "=" in line)
    return {name: value.strip("'") for name, value in pairs}


@pytest.mark.parametrize("name", list(SHAPES))
def test_doctor_watch_prints_a_block_that_serves_the_tier(
    name, make_settings, env, redis_client, s3, short_song, capsys, buckets
):
    shape = SHAPES[name]
    job_id = f"song{uuid.uuid4().hex[:8]}"
    tier_layout = make_settings(**shape.layout)
    client = TierClient(shape.tier, tier_layout, redis_client, s3)
    buckets += [client.input_location(job_id)[0], "audio-tracks", "queues", "tier-uploads"]
    code, out, err = watch_while(capsys, redis_client, lambda: client.submit(job_id, short_song), "--timeout", "30")
    assert code == 0, out + err
    block = block_of(out)
    for setting, value in shape.expected.items():
        assert block.get(setting) == value, (setting, out)
    assert "# OUTPUT_KEY=" in out and "# STEM_ALIASES=" in out  # what one submission cannot show
    assert ("# message fields the worker does not read: user" in out) == ("user" in shape.tier.fields)
    assert redis_client.llen(tier_layout.queue_key) == 1  # doctor took nothing off the tier's list
    # The block, applied: the job runs end to end and the tier's own status field says so.
    worker = make_settings(**{setting.lower(): value for setting, value in block.items()})
    result = Runner(worker).run_once(0)
    assert (result.outcome, result.job_id) == (Outcome.DONE, job_id), result.error
    assert client.status(job_id) == "done"
    if shape.tier.own_status_ttl_s:
        assert 0 < redis_client.ttl(client.status_key(job_id)) <= shape.tier.own_status_ttl_s


def test_doctor_watch_finds_a_loopback_callback_and_json_for_scripts(
    make_settings, env, redis_client, s3, short_song, capsys, receiver
):
    tier = Tier("callback", push="lpush", fields={"callback": f"http://localhost:{receiver.port}/hook"})
    client = TierClient(tier, make_settings(), redis_client, s3)
    code, out, _ = watch_while(
        capsys, redis_client, lambda: client.submit("cb1", short_song), "--json", "--timeout", "30"
    )
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["block"]["CALLBACK_ALLOW_HOSTS"] == "127.0.0.1/32" and report["block"]["QUEUE_POP"] == "right"
    assert report["observed"]["id"] == "cb1" and report["observed"]["input"].endswith("/cb1.mp3")
    worker = make_settings(**{setting.lower(): value for setting, value in report["block"].items()})
    assert Runner(worker).run_once(0).outcome == Outcome.DONE
    assert [request["json"]["state"] for request in receiver.requests] == ["done"]


def test_doctor_watch_says_plainly_what_it_cannot_serve(make_settings, env, redis_client, s3, capsys):
    """A message without an id the worker reads, and a song that was never uploaded."""
    client = TierClient(Tier("no-id", id_field="song_id"), make_settings(), redis_client, s3)
    code, out, _ = watch_while(capsys, redis_client, lambda: client.submit("x1", None), "--timeout", "30")
    assert code == 1 and "# PROBLEM: no pushed message holds an id the worker reads" in out
    settings = make_settings()
    client = TierClient(Tier("no-upload"), settings, redis_client, s3)
    s3.make_bucket(settings.input_bucket)
    s3.put_object(settings.input_bucket, "uploads/My Song.mp3", io.BytesIO(b"ID3"), 3)  # named by its file name

    def set_and_push() -> None:
        redis_client.set("status:x2", "queued")  # a status kept as a string where the worker writes a hash
        client.submit("x2", None)

    code, out, _ = watch_while(capsys, redis_client, set_and_push, "--timeout", "30")
    assert code == 1 and "# PROBLEM: no object in S3 holds the id x2" in out
    assert f"the newest object is {settings.input_bucket}/uploads/My Song.mp3, whose name does not hold the id" in out
    assert "# PROBLEM: the tier keeps status:x2 as a string (SET), where the worker writes its status hash" in out


def test_doctor_watch_names_a_handoff_that_is_not_a_list(env, redis_client, capsys):
    code, _, err = watch_while(
        capsys, redis_client, lambda: redis_client.xadd("jobs", {"hash": "s1"}), "--timeout", "3"
    )
    assert code == 3 and "it saw XADD jobs, but stemworker reads its jobs from a Redis list" in err


def test_doctor_watch_waits_a_little_for_an_upload_that_follows_the_push(
    make_settings, env, redis_client, s3, short_song, capsys
):
    settings = make_settings()
    client = TierClient(Tier("late-upload", push="lpush"), settings, redis_client, s3)

    def push_then_upload() -> None:
        client.submit("late1", None)
        time.sleep(3)  # past the watch's grace: the block comes after the upload
        s3.make_bucket(settings.input_bucket)
        s3.put_object(settings.input_bucket, "late1.mp3", io.BytesIO(short_song), len(short_song))

    code, out, _ = watch_while(capsys, redis_client, push_then_upload, "--timeout", "30")
    assert code == 0 and f"# input: {settings.input_bucket}/late1.mp3" in out


def test_doctor_watch_tells_the_job_from_a_tiers_log_pushes(make_settings, env, redis_client, s3, short_song, capsys):
    """A one-word log line parses as a bare id too; the job is the push whose song is in S3."""
    settings = make_settings()
    client = TierClient(Tier("logs-too", push="rpush", id_field="hash"), settings, redis_client, s3)

    def log_then_submit() -> None:
        redis_client.lpush("tier-log", "received")
        client.submit("real1", short_song)
        redis_client.lpush("tier-log", "queued")

    code, out, _ = watch_while(capsys, redis_client, log_then_submit, "--timeout", "30")
    block = block_of(out)
    assert code == 0 and (block["QUEUE_KEY"], block["QUEUE_POP"]) == (settings.queue_key, "left")
    assert f"# input: {settings.input_bucket}/real1.mp3" in out


def test_doctor_watch_times_out_with_exit_3(env, redis_client, capsys):
    code, _, err = watch_while(capsys, redis_client, lambda: None, "--timeout", "1")
    assert code == 3 and "no LPUSH or RPUSH was seen in 1 s" in err


@pytest.fixture
def acl_user(redis_client, monkeypatch, env):
    """A Redis user with the given ACL rules, which doctor then connects as (REDIS_URL)."""
    made: list[str] = []

    def make(*rules: str) -> str:
        name = f"doctor{len(made)}"
        redis_client.acl_setuser(
            name, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=list(rules), reset=True
        )
        made.append(name)
        url = env["REDIS_URL"].replace("redis://", f"redis://{name}:pw@")
        monkeypatch.setenv("REDIS_URL", url)
        return url

    yield make
    for name in made:
        redis_client.acl_deluser(name)


def test_without_monitor_doctor_watches_keyspace_notifications_and_restores_them(
    acl_user, make_settings, redis_client, s3, short_song, capsys, buckets
):
    acl_user("+@all", "-monitor")
    redis_client.config_set("notify-keyspace-events", "")
    layout = make_settings(status_key="job:{id}", input_bucket="queues")
    buckets.append("queues")
    tier = Tier("keyspace", push="lpush", id_field=None, own_status={"status": "queued"}, status_field="status")
    client = TierClient(tier, layout, redis_client, s3)
    code, out, _ = watch_while(capsys, redis_client, lambda: client.submit("ks1", short_song), "--timeout", "30")
    assert code == 0, out
    assert "# watched with keyspace notifications (MONITOR refused" in out
    block = block_of(out)
    assert (block["QUEUE_POP"], block["INPUT_BUCKET"], block["STATUS_KEY"], block["STATE_FIELDS"]) == (
        "right",
        "queues",
        "job:{id}",
        "state,status",
    )
    assert redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
    worker = make_settings(**{setting.lower(): value for setting, value in block.items()})
    assert Runner(worker).run_once(0).outcome == Outcome.DONE and client.status("ks1") == "done"


def test_without_monitor_or_config_doctor_says_what_to_allow(acl_user, redis_client, capsys):
    acl_user("+@all", "-monitor", "-config")
    redis_client.config_set("notify-keyspace-events", "")
    code, _, err = watch_while(capsys, redis_client, lambda: None, "--timeout", "5")
    assert code == 1
    assert "MONITOR is not allowed, and keyspace notifications are off and cannot be turned on" in err
    assert "+monitor" in err and "notify-keyspace-events" in err


# --- the static checks ------------------------------------------------------------------------------------------


def test_doctor_checks_a_working_setup(env, settings, redis_client, s3, capsys):
    s3.make_bucket(settings.input_bucket)
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    levels = {check["name"]: check["level"] for check in report["checks"]}
    assert code == 0 and report["ok"]
    assert levels == {
        "settings": "ok",
        "redis": "ok",
        "persistence": "warn",
        "s3": "ok",
        "input bucket": "ok",
        "output bucket": "warn",
        "model": "ok",
        "claim wait": "ok",
        "queue": "ok",
    }
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "a Redis restart loses every queued job" in details["persistence"]
    assert "tiny loads from DEMUCS_REPO" in details["model"]


def test_doctor_names_the_tiers_list_when_the_queue_key_is_missing(env, settings, redis_client, s3, capsys):
    redis_client.rpush("toWorkers", json.dumps({"hash": "abc"}), "def")
    redis_client.rpush("logging", "host.worker.info:a log line")
    code = main(["doctor", "--no-model"])
    out = capsys.readouterr().out
    assert code == 1  # the input bucket is missing too: a failed check
    assert (
        "toWorker does not exist, but toWorkers holds 2 messages the worker reads as jobs: is that the tier's "
        "queue? Set QUEUE_KEY=toWorkers" in out
    )
    assert f"fail  input bucket   {settings.input_bucket} does not exist" in out


def test_a_template_bucket_is_reported_as_such(env, redis_client, monkeypatch, capsys):
    monkeypatch.setenv("INPUT_BUCKET", "{id}")
    assert main(["doctor", "--no-model"]) == 0
    assert "ok    input bucket   template '{id}': rendered per job" in capsys.readouterr().out


def test_monitor_lines_are_parsed_with_their_quoting():
    line = rb'1700000000.123456 [0 127.0.0.1:5000] "LPUSH" "to Workers" "{\"hash\": \"a b\"}" "\xc3\xa9\n"'
    command = parse_monitor_line(line)
    assert command is not None and command.name == "LPUSH"
    assert command.args == (b"to Workers", b'{"hash": "a b"}', "é\n".encode())
    assert parse_monitor_line(b"OK") is None
