"""No message, receiver or default setting can crash or block the fleet.

- Property tests (Hypothesis) of the parser and the claim path: any bytes and any JSON value become a job or the
  permanent error, never another exception; through a real Redis the runner dead-letters every one of them.
- Runner processes: a message that kills its runner every time is dead-lettered by the claim after MAX_ATTEMPTS
  runs; a fleet given good jobs mixed with every poison message finishes the good ones and exits 0; an idle runner
  with the shipped ConfigMap's settings exits 0; Redis losing its data is said, not hidden.
- Stems that a job published before it failed are listed in its status (`published`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support import REPO_ROOT, runner_env, wait_for
from test_hostile_inputs import REJECTED_MESSAGES

from function.errors import InvalidJob
from function.messages import Job, event_from_message, event_from_request, job_from_event, new_event
from function.queue import WorkQueue, block_slice_s
from function.runner import Outcome, Runner
from workbench import sample_song

EXAMPLES = int(os.environ.get("POISON_EXAMPLES", "400"))
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**60, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["id", "songhash", "hash", "model", "callback", "stems", "two_stems", "format", "bucket", "key", "data"]
            )
            | st.text(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def job_or_permanent_error(raw: bytes | str, settings) -> Job | InvalidJob:
    """The parser's whole contract: a Job, or InvalidJob; any other exception fails the test."""
    try:
        return job_from_event(event_from_message(raw, settings.max_message_bytes), settings)
    except InvalidJob as err:
        return err


# ----- the parser, for any input


@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_any_bytes_become_a_job_or_the_permanent_error(raw: bytes, make_settings) -> None:
    job_or_permanent_error(raw, make_settings())


@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_VALUES, depth=st.integers(min_value=0, max_value=3000), wrap=st.sampled_from(["bare", "id", "cb"]))
def test_any_json_value_becomes_a_job_or_the_permanent_error(value, depth: int, wrap: str, make_settings) -> None:
    settings = make_settings()
    text = json.dumps(value, allow_nan=True)
    if depth > 64:
        text = nested(depth, text)  # deeper than any limit: must be refused, never recursed into
    if wrap == "id":
        text = '{"id": ' + text + "}"
    elif wrap == "cb":
        text = '{"id": "ok1", "callback": {"url": "http://x/", "data": ' + text + '}, "stems": ' + text + "}"
    outcome = job_or_permanent_error(text, settings)
    if depth > 64:
        assert isinstance(outcome, InvalidJob) and "nested deeper than 64 levels" in str(outcome)
    if isinstance(outcome, Job):
        assert isinstance(outcome.id, str)


@hypothesis_settings(
    max_examples=EXAMPLES // 4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=JSON_VALUES | st.binary(max_size=100))
def test_any_event_data_built_in_code_becomes_a_job_or_the_permanent_error(data, make_settings) -> None:
    """`handle(event)` can be called with any Python value as data (replay, functions-framework, tests)."""
    with contextlib.suppress(InvalidJob):
        job_from_event(new_event(data), make_settings())


def test_an_event_built_in_code_with_deep_data_is_refused(make_settings) -> None:
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidJob, match="could not be read: RecursionError"):
        job_from_event(new_event({"id": "a1", "callback": {"url": "http://x/", "data": deep}}), make_settings())


@pytest.mark.parametrize(
    "body",
    [
        nested(1000).encode(),
        b'{"specversion": "1.0", "data": ' + nested(3000).encode() + b', "id": "e", "source": "s", "type": "t"}',
        b"1" * 5000,
    ],
)
def test_http_bodies_of_any_depth_or_number_size_are_refused(body: bytes) -> None:
    headers = {"content-type": "application/cloudevents+json"}
    with pytest.raises(InvalidJob):
        event_from_request(headers, body, 65536)


@pytest.mark.parametrize(
    "literal", ["null", "true", "false", "-1", "0", "1e309", "NaN", "Infinity", "-Infinity", "12345", "1.5", "-0"]
)
def test_json_literals_are_never_ids(literal: str, make_settings, redis_client) -> None:
    outcome = job_or_permanent_error(literal, make_settings())
    assert isinstance(outcome, InvalidJob)
    event = CloudEvent({"type": "t", "source": "s", "id": "e1", "datacontenttype": "text/plain"}, literal.encode())
    with pytest.raises(InvalidJob):
        job_from_event(event, make_settings())


# ----- the claim path, through a real Redis


@hypothesis_settings(
    max_examples=max(10, EXAMPLES // 20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(min_size=1, max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_the_runner_dead_letters_any_message_it_cannot_run(raw: bytes, settings, redis_client) -> None:
    """No S3 object exists for any id here, so every message ends in the dead-letter list with a reason, and the
    runner returns (it never raises)."""
    redis_client.delete("toWorker", "toWorker:dead")
    redis_client.rpush("toWorker", raw)
    result = Runner(settings).run_once(wait_s=0)
    assert result.outcome is Outcome.DEAD, result
    (entry,) = [json.loads(e) for e in redis_client.lrange("toWorker:dead", 0, -1)]
    assert entry["error"] and entry["permanent"] is True and entry["message_bytes"] == len(raw)
    assert redis_client.llen("toWorker:processing") == 0 and redis_client.zcard("toWorker:leases") == 0


def test_the_claim_waits_in_slices_shorter_than_the_socket_timeout(make_settings, redis_client) -> None:
    assert block_slice_s(10) == 8 and block_slice_s(3) == 1.5 and block_slice_s(0.01) == 0.01
    settings = make_settings(redis_timeout_s=1)
    runner = Runner(settings)
    assert runner.queue.block_s == 0.5
    started = time.monotonic()
    assert runner.run_once(wait_s=2.5).outcome is Outcome.EMPTY  # five BLMOVEs; none outlives the 1 s socket
    assert 2.4 < time.monotonic() - started < 6


# ----- runner processes


CLAIM_WAIT_NAMES = ("CLAIM_WAIT_S", "CLAIM_WAIT_SECONDS")  # the setting and its older name


def shipped_configmap() -> dict[str, str]:
    """The worker's ConfigMap as shipped: the first one under keda/ that sets the claim wait."""
    for path in sorted((REPO_ROOT / "keda").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            data = document.get("data") if isinstance(document, dict) else None
            if document and document.get("kind") == "ConfigMap" and any(n in (data or {}) for n in CLAIM_WAIT_NAMES):
                return {name: str(value) for name, value in data.items()}
    raise AssertionError("no ConfigMap with CLAIM_WAIT_S under keda/")


def shipped_claim_wait_s(shipped: dict[str, str]) -> float:
    return float(next(shipped[name] for name in CLAIM_WAIT_NAMES if name in shipped))


def test_an_idle_runner_exits_0_with_the_shipped_settings(settings, redis_client) -> None:
    """The ConfigMap's claim wait (30 s) against the default REDIS_TIMEOUT_S=10: the claim waits the whole 30 s for a
    message that never comes, then the pod exits 0 (KEDA's extra pods must not count as failed)."""
    shipped = shipped_configmap()
    env = runner_env(settings)
    for name in ("REDIS_TIMEOUT_S", *CLAIM_WAIT_NAMES):
        env.pop(name, None)  # the pod's values: the ConfigMap's claim wait, the default socket timeout
    where = (
        "MINIO_ENDPOINT",
        "DEMUCS_MODEL",
        "DEMUCS_DEVICE",
        "REDIS_HOST",
        "REDIS_PORT",
        "INPUT_BUCKET",
        "OUTPUT_BUCKET",
    )  # the test's services and tiny model, not the cluster's
    env.update({name: value for name, value in shipped.items() if name not in where})
    wait_s = shipped_claim_wait_s(shipped)
    assert wait_s >= 10 and "REDIS_TIMEOUT_S" not in env  # the combination that used to exit 1
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "function.runner"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=wait_s + 60,
    )
    waited = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert waited >= wait_s, waited
    assert "Redis unavailable" not in done.stderr


def start_runner(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "function.runner", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def fleet_env(settings, **extra: str) -> dict[str, str]:
    fleet = {
        "DEMUCS_MODEL": "tiny",
        "DEMUCS_DEVICE": "cpu",
        "DEMUCS_SHIFTS": "0",
        "DEMUCS_THREADS": "1",
        "CLAIM_WAIT_S": "1",
        "LEASE_S": "2",
        "ORPHAN_GRACE_S": "1",
        "MAX_ATTEMPTS": "3",
    }
    return runner_env(settings, **{**fleet, **extra})


def test_a_message_that_kills_its_runner_every_time_stops_after_max_attempts(settings, upload, redis_client) -> None:
    """Each runner that claims the message is SIGKILLed mid-job (as an OOM kill would); after MAX_ATTEMPTS=3 runs
    the next claim dead-letters it, before parsing, with the reason, and that runner exits 0."""
    upload("killer", sample_song.song_mp3(seconds=30.0))
    redis_client.rpush("toWorker", "killer")
    env = fleet_env(settings)
    for attempt in (1, 2, 3):
        process = start_runner(env)
        wait_for(
            lambda: (
                redis_client.hget("status:killer", "attempts") == str(attempt).encode()  # noqa: B023
                and redis_client.hget("status:killer", "state") == b"separating"
            ),
            90,
            f"attempt {attempt}",
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        wait_for(
            lambda: not redis_client.zrangebyscore("toWorker:leases", time.time(), "+inf"),
            10,
            "the lease to pass its deadline",
        )
        time.sleep(0.1)
    last = start_runner(env)
    output = last.communicate(timeout=120)[0]
    assert last.returncode == 0, output
    (entry,) = [json.loads(e) for e in redis_client.lrange("toWorker:dead", 0, -1)]
    assert entry["error"].startswith("crashed the runner 3 times") and entry["attempts"] == 3
    assert entry["error_type"] == "Exhausted" and entry["job_id"] == "killer" and entry["message"] == "killer"
    status = {k.decode(): v.decode() for k, v in redis_client.hgetall("status:killer").items()}
    assert status["state"] == "failed" and "crashed the runner 3 times" in status["error"]
    logged = b"\n".join(redis_client.lrange("logging", 0, -1)).decode()
    assert "job killer: dead-lettered after 3 attempt(s): crashed the runner 3 times" in logged
    assert redis_client.llen("toWorker") == 0 and redis_client.llen("toWorker:processing") == 0


def test_a_fleet_finishes_good_jobs_mixed_with_every_poison_message(settings, upload, song, redis_client) -> None:
    good = [f"good{i}" for i in range(3)]
    for job_id in good:
        upload(job_id, song)
    poison = [case.message for case in REJECTED_MESSAGES]
    messages: list[str | bytes] = []
    for index, message in enumerate(poison):
        messages.append(message)
        if index % 8 == 0 and good[index // 8 :]:
            messages.append(good[index // 8])
    redis_client.rpush("toWorker", *messages)
    env = fleet_env(settings)
    runners = [start_runner(env, "--max-messages", "200") for _ in range(2)]
    outputs = [runner.communicate(timeout=240)[0] for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0], outputs
    for job_id in good:
        assert redis_client.hget(f"status:{job_id}", "state") == b"done", job_id
    dead = [json.loads(e) for e in redis_client.lrange("toWorker:dead", 0, -1)]
    assert len(dead) == len(poison)
    assert all(entry["error"] and entry["attempts"] <= 3 for entry in dead)
    assert sorted(entry["message_sha256"] for entry in dead) == sorted(
        hashlib.sha256(m.encode() if isinstance(m, str) else m).hexdigest() for m in poison
    )
    assert redis_client.llen("toWorker") == 0 and redis_client.llen("toWorker:processing") == 0


def test_redis_losing_its_data_is_said_and_counted(settings, upload, redis_client) -> None:
    """A flush while a runner holds a claim stands for a restart without persistence: the runner must say that
    Redis lost its data, count it, and never claim that nothing was lost."""
    upload("lost1", sample_song.song_mp3(seconds=30.0))
    redis_client.rpush("toWorker", "lost1", "lost2")
    process = start_runner(fleet_env(settings, LEASE_S="30"))
    wait_for(lambda: redis_client.hget("status:lost1", "state") == b"separating", 90, "separation to start")
    redis_client.flushall()
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "Redis lost its data" in output and "No message was lost" not in output
    assert "leaving the message to the runner that has it now" not in output
    logged = b"\n".join(redis_client.lrange("logging", 0, -1)).decode()
    assert "Redis lost its data since job lost1 was claimed" in logged
    assert redis_client.hget("toWorker:metrics:counters", "redis_data_loss") == b"1"


def test_a_runner_whose_lease_was_reaped_still_says_so(make_settings, redis_client) -> None:
    """No data loss: a reaped lease keeps its old message (the marker is unchanged)."""
    queue = WorkQueue(redis_client, "toWorker", lease_s=30)
    redis_client.rpush("toWorker", "x1")
    claim = queue.claim(1)
    assert claim is not None and claim.dataset and not queue.lost_data_since(claim)
    redis_client.delete("toWorker:dataset")
    assert queue.lost_data_since(claim)


# ----- stems published before a failure


def test_stems_published_by_an_earlier_attempt_stay_listed_when_the_job_fails(
    settings, worker, upload, song, s3, redis_client
) -> None:
    upload("pub1", song)
    event = event_from_message("pub1", settings.max_message_bytes, "2026-01-01T00:00:00.000Z")
    result = worker.handle(event)
    status = {k.decode(): v.decode() for k, v in redis_client.hgetall("status:pub1").items()}
    assert json.loads(status["published"]) == result["stems"] == json.loads(status["outputs"])
    s3.remove_object(settings.input_bucket, "pub1.mp3")  # the next attempt of the same submission fails
    with pytest.raises(Exception, match="not found"):
        worker.handle(event)
    status = {k.decode(): v.decode() for k, v in redis_client.hgetall("status:pub1").items()}
    assert status["state"] == "failed"
    published = json.loads(status["published"])
    assert sorted(published) == sorted(result["stems"])
    for where in published.values():  # what the status lists is there
        assert s3.stat_object(where["bucket"], where["key"]).size > 0
    other = event_from_message("pub1", settings.max_message_bytes, "2026-01-02T00:00:00.000Z")  # a new submission
    with pytest.raises(Exception, match="not found"):
        worker.handle(other)
    assert redis_client.hget("status:pub1", "published") is None


def test_shipped_configmap_is_found() -> None:
    assert Path(REPO_ROOT / "keda").is_dir() and shipped_claim_wait_s(shipped_configmap()) > 0


# ----- receivers that never finish answering


class SlowReceiver:
    """A raw loopback server that reads the request, then answers as `behaviour` says, for at most `limit_s`."""

    def __init__(self, behaviour: str, limit_s: float = 60.0) -> None:
        import socket
        import threading

        self.behaviour = behaviour
        self.limit_s = limit_s
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.closed = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        import threading

        while not self.closed.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()

    def answer(self, connection) -> None:
        deadline = time.monotonic() + self.limit_s
        with connection:
            connection.settimeout(self.limit_s)
            try:
                connection.recv(65536)
                if self.behaviour == "trickle-status":  # the status line, a byte every 0.5 s, forever
                    for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
                        if time.monotonic() > deadline or self.closed.is_set():
                            return
                        connection.sendall(bytes([byte]))
                        time.sleep(0.5)
                elif self.behaviour == "trickle-headers":
                    connection.sendall(b"HTTP/1.1 200 OK\r\n")
                    while time.monotonic() < deadline and not self.closed.is_set():
                        connection.sendall(b"X: y\r\n")
                        time.sleep(0.5)
                elif self.behaviour == "stall-after-headers":  # a complete head, then a body that never comes
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nx")
                    self.closed.wait(self.limit_s)
                elif self.behaviour == "silent":
                    self.closed.wait(self.limit_s)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.server.close()


@pytest.mark.parametrize("behaviour", ["trickle-status", "trickle-headers", "silent"])
def test_a_trickling_receiver_cannot_hold_a_job_past_its_deadlines(behaviour: str, make_settings) -> None:
    """CALLBACK_TIMEOUT_S bounds each attempt and CALLBACK_TOTAL_S all of them, by the wall clock: a receiver that
    sends a byte every 0.5 s (each socket read succeeds) used to hold one attempt for as long as it liked."""
    from function.callback import deliver
    from function.messages import Callback

    receiver = SlowReceiver(behaviour)
    try:
        settings = make_settings(
            callback_timeout_s=1.5, callback_total_s=4, callback_attempts=3, callback_allow_hosts="127.0.0.1/32"
        )
        started = time.monotonic()
        outcome = deliver(Callback(url=receiver.url), {"id": "x"}, "evt-1", settings)
        took = time.monotonic() - started
    finally:
        receiver.close()
    assert not outcome.delivered and "Timeout" in outcome.reason, outcome
    assert took < 4 + 0.5, took  # CALLBACK_TOTAL_S, whatever the peer does
    assert 2 <= receiver.accepted <= 3  # each attempt ended at CALLBACK_TIMEOUT_S, so there was time to retry


def test_only_the_head_of_an_answer_is_read(make_settings) -> None:
    """A 2xx head is delivery; a body the receiver never finishes sending is not waited for."""
    from function.callback import deliver
    from function.messages import Callback

    receiver = SlowReceiver("stall-after-headers")
    try:
        settings = make_settings(callback_timeout_s=2, callback_total_s=5, callback_allow_hosts="127.0.0.1/32")
        started = time.monotonic()
        outcome = deliver(Callback(url=receiver.url), {"id": "x"}, "evt-2", settings)
        took = time.monotonic() - started
    finally:
        receiver.close()
    assert outcome.delivered and outcome.status == 200 and took < 2


# ----- persistence, as operators see it


def test_stemworker_stats_warns_when_redis_keeps_nothing_across_a_restart(env, redis_client) -> None:
    from click.testing import CliRunner

    from stemops.cli import cli
    from stemops.persistence import read_persistence

    assert read_persistence(redis_client).none  # the tests' Redis: --save "" --appendonly no
    result = CliRunner().invoke(cli, ["stats", "--json"])
    stats = json.loads(result.output)
    assert (
        stats["redis_persistence_none"] is True
        and "a Redis restart loses every queued job" in stats["redis_persistence"]
    )
    redis_client.config_set("appendonly", "yes")
    try:
        assert not read_persistence(redis_client).none
        stats = json.loads(CliRunner().invoke(cli, ["stats", "--json"]).output)
        assert stats["redis_persistence_none"] is False and "AOF on" in stats["redis_persistence"]
    finally:
        redis_client.config_set("appendonly", "no")


def test_a_cut_dead_letter_is_not_requeued(env, settings, redis_client, capsys) -> None:
    from stemops.cli import main

    big = json.dumps({"id": "big1", "pad": "x" * 60_000})
    redis_client.rpush("toWorker", big, "{bad")
    assert Runner(settings).run_once(wait_s=0).outcome is Outcome.DEAD
    assert Runner(settings).run_once(wait_s=0).outcome is Outcome.DEAD
    first = json.loads(redis_client.lindex("toWorker:dead", 0))
    assert first["truncated"] is True and len(first["message"]) == 4096 and first["message_bytes"] == len(big)
    assert len(redis_client.lindex("toWorker:dead", 0)) < 6000  # bounded, whatever the message's size
    capsys.readouterr()
    assert main(["dead", "requeue", "0"]) != 0
    assert "resubmit it from its source" in capsys.readouterr().err
    assert main(["dead", "requeue", "--all"]) == 0
    assert "1 dead letter(s) requeued" in capsys.readouterr().out
    assert redis_client.lrange("toWorker", 0, -1) == [b"{bad"]


def test_a_byte_order_mark_before_a_message_is_not_content(make_settings) -> None:
    settings = make_settings()
    for raw in ("\ufeff" + json.dumps({"id": "bom1"}), "\ufeffbom1", " \ufeff bom1\n"):
        outcome = job_or_permanent_error(raw.encode(), settings)
        assert isinstance(outcome, Job) and outcome.id == "bom1", raw
