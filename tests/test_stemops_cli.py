"""`stemworker` against the real Redis and S3, with jobs run by the real job runner: stats, jobs, watch, dead
list/show/requeue/purge, flood; --json on every command; one-line errors with exit codes, never a traceback."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time

import click
import pytest

from function import keys
from function.queue import WorkQueue
from function.runner import Outcome, Runner
from stemops.cli import cli, main
from stemops.deadletters import parse_duration_s
from stemops.recent import outputs_of


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def json_of(capsys, *args: str):
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return json.loads(out)


def test_every_command_takes_json():
    def commands(group: click.Group, prefix: str = ""):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command

    found = dict(commands(cli))
    assert set(found) == {
        "stats",
        "jobs",
        "workers",
        "watch",
        "dead list",
        "dead show",
        "dead requeue",
        "dead purge",
        "flood",
        "exporter",
        "doctor",
    }
    for name, command in found.items():
        # `exporter` serves /metrics: it has no output for scripts to parse, so no --json.
        assert ("--json" in {opt for param in command.params for opt in param.opts}) == (name != "exporter"), name


def test_stats_jobs_and_watch_follow_real_jobs(env, settings, redis_client, upload, song, capsys):
    upload("good", song)
    redis_client.rpush(settings.queue_key, json.dumps({"songhash": "good", "stems": ["vocals"]}), "missing")
    for job_id in ("good", "missing"):  # as the REST tier does: queued before the message is pushed
        redis_client.hset(f"status:{job_id}", mapping={"state": "queued", "progress": 0})
    before = json_of(capsys, "stats", "--json")
    assert (before["waiting"], before["processing"], before["dead"], before["running"]) == (2, 0, 0, 0)
    assert before["oldest_waiting_s"] is not None and before["done_last_hour"] == 0

    outcomes: list[Outcome] = []
    worker = threading.Thread(target=lambda: outcomes.extend(Runner(settings).run_once(5).outcome for _ in range(2)))
    worker.start()
    try:
        code, out, err = run(capsys, "watch", "good", "--json", "--interval", "0.1", "--timeout-s", "300")
    finally:
        worker.join(300)
    assert code == 0, err
    changes = [json.loads(line) for line in out.splitlines()]
    assert changes[-1]["state"] == "done" and changes[-1]["outputs"]["vocals"]["key"] == "good-vocals.mp3"
    # Numbers as numbers.
    assert changes[-1]["progress"] == 100 and changes[-1]["attempts"] == 1
    assert isinstance(changes[-1]["seconds"], float) and isinstance(changes[-1]["audio_seconds"], float)
    assert all(isinstance(change["progress"], int) for change in changes)
    assert len({change["state"] for change in changes}) >= 2  # it saw the job move, not only its end
    assert outcomes == [Outcome.DONE, Outcome.DEAD]

    code, out, _ = run(capsys, "watch", "good")  # stdout is not a terminal here: plain lines
    assert code == 0 and "good-vocals.mp3" in out and out.startswith("job good: done\n")
    code, out, _ = run(capsys, "watch", "missing")
    assert code == 1 and "not found" in out
    code, _, err = run(capsys, "watch", "nosuchjob")
    assert code == 2 and "no status for job 'nosuchjob'" in err
    code, _, err = run(capsys, "watch", "../etc")
    assert code == 2 and "job id must be" in err

    # A message claimed by a live runner (a real lease) and one waiting.
    redis_client.rpush(settings.queue_key, "held", "waiting")
    assert WorkQueue(redis_client, settings.queue_key).claim(0) is not None
    after = json_of(capsys, "stats", "--json")
    assert (after["waiting"], after["processing"], after["dead"], after["running"]) == (1, 1, 1, 1)
    assert (after["done_last_hour"], after["cached_last_hour"], after["failed_last_hour"]) == (1, 0, 1)
    assert after["median_job_s_last_hour"] == pytest.approx(float(redis_client.hget("status:good", "seconds")))
    code, out, _ = run(capsys, "stats")
    assert code == 0 and "waiting" in out and "running (leases)" in out and "done 1" in out
    lines = run(capsys, "stats", "--watch", "--count", "2", "--interval", "0.1", "--json")[1].splitlines()
    assert len(lines) == 2 and all(json.loads(line)["dead"] == 1 for line in lines)
    code, out, _ = run(capsys, "stats", "--watch", "--count", "2", "--interval", "0.1")
    assert code == 0 and out.count("oldest waiting") == 2  # not a terminal: every refresh is printed

    listing = json_of(capsys, "jobs", "--json")
    assert listing["queue"] == settings.queue_key
    # Queued but not started: listed apart from the recent jobs, next to be claimed first.
    assert [m["job_id"] for m in listing["waiting"]] == ["waiting"] and listing["waiting_total"] == 1
    assert listing["waiting"][0]["waiting_s"] is not None  # `stats` saw it arrive
    # Claimed outside a runner (no holder recorded): running, pod unknown.
    assert [(job["job_id"], job["pod"]) for job in listing["running"]] == [(None, None)]
    rows = listing["jobs"]
    assert [row["id"] for row in rows] == ["missing", "good"]  # newest first
    good = rows[1]
    assert (good["state"], good["progress"], good["model"], good["attempts"]) == ("done", 100, "tiny", 1)
    assert good["audio_seconds"] == pytest.approx(3.0, abs=0.1) and good["seconds"] > 0 and good["error"] is None
    assert rows[0]["state"] == "failed" and "not found" in rows[0]["error"]
    done_only = json_of(capsys, "jobs", "--state", "done", "--json")
    assert [row["id"] for row in done_only["jobs"]] == ["good"] and done_only["waiting"] == []
    assert [row["id"] for row in json_of(capsys, "jobs", "--limit", "1", "--json")["jobs"]] == ["missing"]
    code, out, _ = run(capsys, "jobs")
    assert code == 0 and "good" in out and "done" in out and "failed" in out
    assert "1 waiting message(s)" in out and "1 running job(s)" in out
    assert run(capsys, "jobs", "--state", "nonsense")[0] == 2


def dead_letter(settings, redis_client, *messages: str) -> None:
    """Dead-letter each message through the real runner (inputs that do not exist fail for good)."""
    redis_client.rpush(settings.queue_key, *messages)
    runner = Runner(settings)
    assert [runner.run_once(1).outcome for _ in messages] == [Outcome.DEAD] * len(messages)


def test_dead_list_show_and_requeue(env, settings, redis_client, capsys):
    dead_letter(settings, redis_client, "gone0", "gone1", "{not json")
    listed = json_of(capsys, "dead", "list", "--json")
    assert listed["total"] == 3
    assert [(e["index"], e["job_id"]) for e in listed["entries"]] == [(0, "gone0"), (1, "gone1"), (2, None)]
    newest = json_of(capsys, "dead", "list", "--limit", "1", "--json")
    assert newest["total"] == 3 and [e["index"] for e in newest["entries"]] == [2]
    code, out, _ = run(capsys, "dead", "list")
    assert code == 0 and "gone1" in out and "UnprocessableInput" in out
    shown = json_of(capsys, "dead", "show", "1", "--json")
    assert shown["job_id"] == "gone1" and shown["message"] == "gone1" and shown["attempts"] == 1
    assert "gone1" in run(capsys, "dead", "show", "1")[1]
    code, _, err = run(capsys, "dead", "show", "7")
    assert code == 2 and "no dead letter #7" in err

    # Requeue #1: back at the head with its attempt count reset, and said so in the logging list.
    digest = hashlib.sha256(b"gone1").hexdigest()[:32]
    redis_client.hset(keys.attempts_key(settings.queue_key), mapping={digest: 5, f"{digest}:first_seen": "x"})
    redis_client.rpush(settings.queue_key, "other-waiting")
    moved = json_of(capsys, "dead", "requeue", "1", "--json")
    assert moved == {"requeued": [{"index": 1, "job_id": "gone1"}]}
    assert redis_client.lrange(settings.queue_key, 0, -1) == [b"gone1", b"other-waiting"]
    assert redis_client.hgetall(keys.attempts_key(settings.queue_key)) == {}
    assert [e["job_id"] for e in json_of(capsys, "dead", "list", "--json")["entries"]] == ["gone0", None]
    log = [line.decode() for line in redis_client.lrange(settings.log_key, 0, 20)]
    assert any(".worker.info:stemworker dead requeue: job gone1 put back at the head" in line for line in log)
    result = Runner(settings).run_once(1)
    assert result.job_id == "gone1" and result.attempts == 1  # a fresh first attempt

    code, _, err = run(capsys, "dead", "requeue")
    assert code == 2 and "one index N or --all" in err
    assert run(capsys, "dead", "requeue", "0", "--all")[0] == 2
    code, out, _ = run(capsys, "dead", "requeue", "--all")
    assert code == 0 and "3 dead letter(s) requeued" in out
    assert redis_client.llen(keys.dead_key(settings.queue_key)) == 0
    assert redis_client.llen(settings.queue_key) == 4  # other-waiting + the three letters


def test_dead_purge_asks_first_and_honours_older_than(env, settings, redis_client, capsys, monkeypatch):
    dead_letter(settings, redis_client, "old0", "new1", "new2")
    dead = keys.dead_key(settings.queue_key)
    entry = json.loads(redis_client.lindex(dead, 0))
    redis_client.lset(dead, 0, json.dumps({**entry, "failed_at": "2020-01-01T00:00:00.000Z"}))

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = run(capsys, "dead", "purge")
    assert code == 1 and "not confirmed" in err and redis_client.llen(dead) == 3
    code, _, err = run(capsys, "dead", "purge", "--older-than", "soon", "--yes")
    assert code == 2 and "'soon'" in err
    assert json_of(capsys, "dead", "purge", "--older-than", "1d", "--yes", "--json") == {"purged": 1}
    assert [json.loads(e)["job_id"] for e in redis_client.lrange(dead, 0, -1)] == ["new1", "new2"]
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, _ = run(capsys, "dead", "purge")
    assert code == 0 and "purged 2 dead letter(s)" in out and redis_client.llen(dead) == 0
    log = [line.decode() for line in redis_client.lrange(settings.log_key, 0, 5)]
    assert any("stemworker dead purge: removed 2" in line for line in log)


def test_outputs_of_reads_only_an_object_of_stems():
    assert outputs_of({"outputs": '{"vocals": {"bucket": "out", "key": "a-vocals.mp3"}}'}) == {
        "vocals": {"bucket": "out", "key": "a-vocals.mp3"}
    }
    # a field another writer filled with something else is no outputs, not a crash in `stemworker show`
    assert outputs_of({"outputs": '["a-vocals.mp3"]'}) == {}
    assert outputs_of({"outputs": "not json"}) == {}
    assert outputs_of({}) == {}


def test_parse_duration():
    assert [parse_duration_s(x) for x in ("90", "90s", "30m", "12h", "7d", "2w", "1.5h")] == [
        90,
        90,
        1800,
        43200,
        604800,
        1209600,
        5400,
    ]
    with pytest.raises(ValueError, match="'7 days'"):
        parse_duration_s("7 days")


def test_flood_pushes_copies_and_follows(env, settings, redis_client, s3, capsys):
    pushed = json_of(capsys, "flood", "--count", "3", "--id", "fl", "--seconds", "1", "--json")
    assert pushed["ids"] == ["fl-0", "fl-1", "fl-2"] and pushed["pushed"] == 3
    assert [json.loads(m)["songhash"] for m in redis_client.lrange(settings.queue_key, 0, -1)] == pushed["ids"]
    sizes = {s3.stat_object(settings.input_bucket, f"{job_id}.mp3").size for job_id in pushed["ids"]}
    assert len(sizes) == 1 and sizes.pop() == pushed["song_bytes"]
    assert {redis_client.hget(f"status:{job_id}", "state") for job_id in pushed["ids"]} == {b"queued"}
    redis_client.delete(settings.queue_key)

    # --wait follows the jobs while a real runner takes them; a model the worker does not allow fails each fast.
    stop = threading.Event()

    def consume() -> None:
        runner = Runner(settings)
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            runner.run_once(0.2)

    worker = threading.Thread(target=consume)
    worker.start()
    try:
        code, out, err = run(
            capsys,
            "flood",
            "--count",
            "2",
            "--id",
            "bad",
            "--model",
            "nosuch",
            "--seconds",
            "1",
            "--wait",
            "--timeout-s",
            "120",
            "--json",
        )
    finally:
        stop.set()
        worker.join(30)
    assert code == 1, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"], summary["unfinished"]) == (0, 2, 0)
    assert "0 done, 2 failed, 0 unfinished" in err
    code, _, err = run(capsys, "flood", "--form", "bare", "--model", "tiny")
    assert code == 2 and "bare id message" in err
    assert redis_client.llen(settings.queue_key) == 0


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["jobs"],
        ["watch", "x"],
        ["dead", "list"],
        ["dead", "show", "0"],
        ["dead", "requeue", "--all"],
        ["dead", "purge", "--yes"],
        ["stats", "--json"],
    ],
)
def test_unreachable_redis_is_one_line_and_exit_1(command, capsys, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:9/0")
    monkeypatch.setenv("REDIS_TIMEOUT_S", "0.5")
    code, out, err = run(capsys, *command)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("stemworker: cannot reach Redis at redis://:***@127.0.0.1:9/0")
    assert "hunter2" not in err and "Traceback" not in err


def test_bad_settings_exit_2_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("REDIS_PORT", "not-a-port")
    code, _, err = run(capsys, "stats")
    assert code == 2 and "REDIS_PORT" in err and err.count("\n") == 1


def test_options_read_their_environment_variable(env, settings, redis_client, capsys, monkeypatch):
    dead_letter(settings, redis_client, "e0", "e1")
    monkeypatch.setenv("STEMWORKER_DEAD_LIST_LIMIT", "1")
    assert [e["job_id"] for e in json_of(capsys, "dead", "list", "--json")["entries"]] == ["e1"]


def test_workers_jobs_and_stats_name_the_pod_running_each_job(env, make_settings, redis_client, upload, capsys):
    """A real runner with POD_NAME set: while its job runs, `workers`, `jobs` and `stats` show the pod and the job's
    age; its status hash records the pod and the claim time; once done, nothing is left in the holders' hash."""
    from function.claims import live_claims
    from workbench import sample_song

    settings = make_settings(pod_name="stemworker-abc12")
    upload("slow", sample_song.song_mp3(seconds=30.0))
    redis_client.rpush(settings.queue_key, "slow")
    outcomes: list[Outcome] = []
    runner = threading.Thread(target=lambda: outcomes.append(Runner(settings).run_once(5).outcome))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        shown = None
        while time.monotonic() < deadline:
            shown = json_of(capsys, "workers", "--json")
            if shown["workers"] and shown["workers"][0]["jobs"][0]["state"] == "separating":
                break
            time.sleep(0.1)
        assert shown is not None and [w["pod"] for w in shown["workers"]] == ["stemworker-abc12"]
        (held,) = shown["workers"][0]["jobs"]
        assert held["job_id"] == "slow" and held["age_s"] >= 0 and 0 < held["lease_left_s"] <= settings.lease_s
        running = json_of(capsys, "jobs", "--json")["running"]
        assert [(job["job_id"], job["pod"]) for job in running] == [("slow", "stemworker-abc12")]
        stats = json_of(capsys, "stats", "--json")
        assert [(job["job_id"], job["pod"]) for job in stats["running_jobs"]] == [("slow", "stemworker-abc12")]
        code, out, _ = run(capsys, "workers")
        assert code == 0 and "stemworker-abc12" in out and "slow" in out
    finally:
        runner.join(300)
    assert outcomes == [Outcome.DONE]
    status = {k.decode(): v.decode() for k, v in redis_client.hgetall("status:slow").items()}
    assert status["pod"] == "stemworker-abc12" and status["claimed_at"].endswith("Z")
    assert live_claims(redis_client, settings.queue_key) == []
    assert redis_client.hlen(keys.holders_key(settings.queue_key)) == 0
    assert json_of(capsys, "workers", "--json")["workers"] == []


def test_a_killed_runners_holder_record_goes_with_its_lease(settings, redis_client):
    """A holder whose lease is gone (its runner died before removing it; a reaper dropped the lease) is dropped by
    the next reader; a lease without a holder record is shown with an unknown pod."""
    from function.claims import live_claims, record_claim

    queue = WorkQueue(redis_client, settings.queue_key)
    redis_client.rpush(settings.queue_key, "a", "b")
    first, second = queue.claim(0), queue.claim(0)
    record_claim(redis_client, settings, first.token, first.message, first.attempts, "a")
    redis_client.zrem(keys.leases_key(settings.queue_key), first.token)  # as a reaper does when the lease expires
    (left,) = live_claims(redis_client, settings.queue_key)
    assert left.token == second.token and left.pod is None and left.job_id is None
    assert redis_client.hlen(keys.holders_key(settings.queue_key)) == 0


def test_watch_prints_lines_without_a_terminal(env, settings, redis_client, capsys):
    redis_client.hset("status:piped", mapping={"state": "failed", "progress": 0, "error": "input not found"})
    code, out, _ = run(capsys, "watch", "piped")
    assert code == 1 and out.splitlines()[0] == "job piped: failed" and "input not found" in out
