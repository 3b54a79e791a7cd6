"""The one-shot job runner against real Redis and S3: claim, lease, reap, retry, dead-letter, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest
from support import REPO_ROOT, leases_expired, tiny_runner_env, wait_for

from function.queue import WorkQueue
from function.runner import Outcome, Runner, main
from workbench import sample_song


def state_of(redis_client, job_id: str) -> str | None:
    value = redis_client.hget(f"status:{job_id}", "state")
    return value.decode() if value else None


def dead_entries(redis_client) -> list[dict]:
    return [json.loads(e) for e in redis_client.lrange("toWorker:dead", 0, -1)]


def test_done_job_leaves_no_trace_in_queue(settings, upload, song, redis_client):
    upload("ok1", song)
    redis_client.lpush("toWorker", "ok1")
    result = Runner(settings).run_once(wait_s=1)
    assert result.outcome is Outcome.DONE and result.job_id == "ok1" and result.attempts == 1
    assert redis_client.llen("toWorker:processing") == 0
    assert redis_client.hlen("toWorker:attempts") == 0
    assert redis_client.zcard("toWorker:leases") == 0 and redis_client.hlen("toWorker:leased") == 0
    assert state_of(redis_client, "ok1") == "done"
    assert redis_client.hget("status:ok1", "attempts") == b"1"


def test_empty_queue_is_a_normal_exit(settings, redis_client):
    assert Runner(settings).run_once(wait_s=0.2).outcome is Outcome.EMPTY


def test_permanent_error_is_dead_lettered_with_context(settings, redis_client):
    redis_client.lpush("toWorker", json.dumps({"songhash": "missing1", "model": "tiny"}))
    result = Runner(settings).run_once(wait_s=1)
    assert result.outcome is Outcome.DEAD
    (entry,) = dead_entries(redis_client)
    assert entry["job_id"] == "missing1" and entry["permanent"] is True
    assert entry["error_type"] == "UnprocessableInput" and "not found" in entry["error"]
    assert json.loads(entry["message"]) == {"songhash": "missing1", "model": "tiny"}
    assert entry["event"]["data"] == {"songhash": "missing1", "model": "tiny"}
    assert entry["attempts"] == 1 and entry["first_seen_at"] and entry["failed_at"]
    assert redis_client.llen("toWorker:processing") == 0
    assert state_of(redis_client, "missing1") == "failed"


def test_malformed_message_is_dead_lettered(settings, redis_client):
    redis_client.lpush("toWorker", "{not json")
    assert Runner(settings).run_once(wait_s=1).outcome is Outcome.DEAD
    (entry,) = dead_entries(redis_client)
    assert entry["event"] is None and entry["message"] == "{not json" and "not valid JSON" in entry["error"]


def test_transient_error_requeues_until_max_attempts(make_settings, redis_client, services):
    closed = make_settings(minio_endpoint="127.0.0.1:9", max_attempts=2, s3_timeout_s=1)
    redis_client.lpush("toWorker", "later", "first")  # "first" is at the head
    runner = Runner(closed)
    first = runner.run_once(wait_s=1)
    assert first.outcome is Outcome.REQUEUED and first.attempts == 1 and first.job_id == "first"
    assert redis_client.lrange("toWorker", 0, -1) == [b"first", b"later"]  # back at the head
    assert redis_client.hget("status:first", "retryable") == b"1"
    second = runner.run_once(wait_s=1)
    assert second.outcome is Outcome.DEAD and second.attempts == 2
    (entry,) = dead_entries(redis_client)
    assert entry["permanent"] is False and entry["error_type"] == "Transient" and entry["attempts"] == 2
    assert redis_client.lrange("toWorker", 0, -1) == [b"later"]
    assert redis_client.hget("status:first", "retryable") == b"0"


def test_right_pop_gives_fifo_for_rpush_producers(make_settings, redis_client, upload, song):
    settings = make_settings(queue_pop="right", demucs_model="tiny")
    queue = WorkQueue(redis_client, "toWorker", pop="right")
    redis_client.lpush("toWorker", "a1", "a2")  # LPUSH producer: a1 is oldest, at the right
    claim = queue.claim(1)
    assert claim is not None and claim.message == b"a1"
    queue.requeue(claim)
    assert redis_client.rpop("toWorker") == b"a1"  # requeued to the head (the end pops happen from)
    assert settings.queue_pop == "right"


def test_poison_message_is_dead_lettered_after_max_attempts(make_settings, redis_client):
    settings = make_settings(max_attempts=3, orphan_grace_s=0)
    queue = WorkQueue(redis_client, "toWorker", lease_s=30, orphan_grace_s=0)
    redis_client.lpush("toWorker", "poison")
    for _ in range(3):  # three pods claim it and die: their leases pass their deadlines
        claim = queue.claim(1)
        assert claim is not None
        redis_client.zadd("toWorker:leases", {claim.token: 0})
        assert queue.reap() == 1
    result = Runner(settings).run_once(wait_s=1)
    assert result.outcome is Outcome.DEAD and result.attempts == 3
    (entry,) = dead_entries(redis_client)
    assert "crashed the runner 3 times" in entry["error"] and entry["attempts"] == 3  # the giving-up claim is no run
    assert redis_client.llen("toWorker") == 0 and redis_client.llen("toWorker:processing") == 0


def runner_env(settings, **extra: str) -> dict[str, str]:
    return tiny_runner_env(settings, CLAIM_WAIT_S="2", **extra)


def start_runner(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "function.runner"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="module")
def long_song() -> bytes:
    return sample_song.song_mp3(seconds=30.0)


def test_sigterm_mid_job_requeues_and_exits_zero(settings, upload, long_song, redis_client):
    upload("term1", long_song)
    redis_client.lpush("toWorker", "term1")
    process = start_runner(runner_env(settings))
    wait_for(lambda: state_of(redis_client, "term1") == "separating", 60, "separation to start")
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert redis_client.lrange("toWorker", 0, -1) == [b"term1"]
    assert redis_client.llen("toWorker:processing") == 0
    assert redis_client.zcard("toWorker:leases") == 0
    assert (
        int(
            redis_client.hget(
                "toWorker:attempts",
                next(k for k in redis_client.hkeys("toWorker:attempts") if not k.endswith(b":first_seen")),
            )
        )
        == 0
    )


def test_kill_9_mid_job_is_rescued_by_the_next_runner(settings, upload, long_song, redis_client):
    upload("kill1", long_song)
    redis_client.lpush("toWorker", "kill1")
    env = runner_env(settings, LEASE_S="2", ORPHAN_GRACE_S="0")
    process = start_runner(env)
    wait_for(lambda: state_of(redis_client, "kill1") == "separating", 60, "separation to start")
    process.kill()
    process.wait(timeout=10)
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"kill1"]
    wait_for(lambda: leases_expired(redis_client), 10, "the dead pod's lease to expire")
    # A reaper CronJob run requeues it to the head of the queue.
    assert main_reap(env) == 0 and redis_client.lrange("toWorker", 0, -1) == [b"kill1"]
    assert redis_client.zcard("toWorker:leases") == 0
    rescuer = start_runner(env)
    output = rescuer.communicate(timeout=120)[0].decode()
    assert rescuer.returncode == 0, output
    assert state_of(redis_client, "kill1") == "done", output
    assert redis_client.hget("status:kill1", "attempts") == b"2"
    assert redis_client.llen("toWorker:processing") == 0 and redis_client.llen("toWorker") == 0


def test_poison_killed_on_every_run_counts_only_its_runs(make_settings, upload, long_song, redis_client):
    settings = make_settings(max_attempts=2)
    upload("pois2", long_song)
    redis_client.lpush("toWorker", "pois2")
    env = runner_env(settings, LEASE_S="2", ORPHAN_GRACE_S="0")
    reaper = WorkQueue(redis_client, "toWorker")
    for run in ("1", "2"):  # the pod dies (OOM kill) in the middle of every run
        process = start_runner(env)
        wait_for(
            lambda run=run: (
                state_of(redis_client, "pois2") == "separating"
                and redis_client.hget("status:pois2", "attempts") == run.encode()
            ),
            60,
            f"run {run} to separate",
        )
        process.kill()
        process.wait(timeout=10)
        wait_for(lambda: leases_expired(redis_client), 10, "the dead pod's lease to expire")
        assert reaper.reap() == 1
    giving_up = start_runner(env)
    output = giving_up.communicate(timeout=120)[0].decode()
    assert giving_up.returncode == 0, output
    (entry,) = dead_entries(redis_client)
    assert entry["attempts"] == 2 and "crashed the runner 2 times" in entry["error"]
    assert state_of(redis_client, "pois2") == "failed" and redis_client.hget("status:pois2", "attempts") == b"2"
    assert any(b"dead-lettered after 2 attempt(s)" in line for line in redis_client.lrange("logging", 0, -1))


def test_runner_whose_lease_is_reaped_mid_job_lets_the_message_go(make_settings, upload, long_song, redis_client):
    settings = make_settings(demucs_model="micro")
    upload("fence1", long_song)
    redis_client.lpush("toWorker", "fence1")
    zombie = Runner(settings)
    results = []
    thread = threading.Thread(target=lambda: results.append(zombie.run_once(wait_s=1)))
    thread.start()
    wait_for(lambda: state_of(redis_client, "fence1") == "separating", 60, "separation to start")
    # The runner is cut off for longer than LEASE_S: its lease passes its deadline and a reaper requeues
    # the message (one transaction, so the runner's heartbeat cannot renew in between).
    (token,) = redis_client.zrange("toWorker:leases", 0, -1)
    reaper = WorkQueue(redis_client, "toWorker")
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.zadd("toWorker:leases", {token: 0})
        reaper._reap(
            keys=[reaper.processing_key, reaper.queue_key, reaper.leases_key, reaper.leased_key, reaper.orphans_key],
            args=[0, "left"],
            client=pipe,
        )
        assert pipe.execute()[1] == 1
    thread.join(timeout=120)
    (result,) = results
    assert result.outcome is Outcome.LOST and result.job_id == "fence1" and "reaped" in (result.error or "")
    assert state_of(redis_client, "fence1") == "separating"  # its `failed` was refused: the status is not its own
    assert redis_client.lrange("toWorker", 0, -1) == [b"fence1"] and redis_client.llen("toWorker:processing") == 0
    rescued = Runner(settings).run_once(wait_s=1)
    assert rescued.outcome is Outcome.DONE and rescued.attempts == 2
    assert state_of(redis_client, "fence1") == "done" and redis_client.llen("toWorker:processing") == 0
    assert any(b"lease lost" in line for line in redis_client.lrange("logging", 0, -1))


def main_reap(env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "function.runner", "--reap"], env=env, cwd=REPO_ROOT, capture_output=True, timeout=60
    ).returncode


def test_exit_code_one_when_redis_is_down(make_settings, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("REDIS_TIMEOUT_S", "1")
    monkeypatch.setenv("CLAIM_WAIT_S", "1")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "unused")  # credentials are checked at start, before Redis is
    monkeypatch.setenv("MINIO_SECRET_KEY", "unused")
    assert main([]) == 1


def test_check_reports_ok_against_live_services(settings, monkeypatch, capsys):
    for name, value in runner_env(settings).items():
        monkeypatch.setenv(name, value)
    assert main(["--check"]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    monkeypatch.setenv("OUTPUT_BUCKET", "stems-{id}")  # a bucket per song: reachability only, nothing created
    assert main(["--check"]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("S3_TIMEOUT_S", "1")
    assert main(["--check"]) == 1
    assert "s3: object store unavailable" in capsys.readouterr().out


def test_preload_starts_the_default_model_loading_before_the_claim(settings, redis_client, monkeypatch):
    from function import separation

    monkeypatch.setattr(separation, "_models", {})
    runner = Runner(settings)
    assert runner.run_once(wait_s=0.2).outcome is Outcome.EMPTY
    runner.worker._pool.shutdown(wait=True)
    assert separation._models == {}  # without preload an empty queue loads nothing
    runner = Runner(settings)
    assert runner.run_once(wait_s=0.2, preload=True).outcome is Outcome.EMPTY
    runner.worker._pool.shutdown(wait=True)
    assert [key[0] for key in separation._models] == [settings.demucs_model]


def test_info_log_has_the_cold_start_timeline(settings, upload, song, redis_client):
    upload("timeline1", song)
    redis_client.lpush("toWorker", "timeline1")
    env = runner_env(settings)  # the default LOG_LEVEL, INFO
    done = subprocess.run(
        [sys.executable, "-m", "function.runner", "--max-messages", "1"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert state_of(redis_client, "timeline1") == "done"
    (line,) = [raw for raw in done.stderr.splitlines() if "timeline {" in raw]
    timeline = json.loads(line.split("timeline ", 1)[1])
    names = [name for name, _ in timeline["marks"]]
    assert names == ["imports", "settings", "clients", "message"]
    times = [timeline["process_start"]] + [at for _, at in timeline["marks"]]
    assert times == sorted(times)
    (job,) = timeline["jobs"]
    assert {"download", "model_wait", "decode", "separate", "encode_upload", "total"} <= set(job)
    assert sum(job[k] for k in ("download", "model_wait", "decode", "separate", "encode_upload")) <= job["total"]


def test_no_timeline_at_warning(settings, redis_client):
    env = runner_env(settings, LOG_LEVEL="WARNING")
    done = subprocess.run(
        [sys.executable, "-m", "function.runner"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "timeline" not in done.stderr
