"""The ScaledJob emulator: KEDA's scaling math checked against hand-worked cases, the manifest reading, and
one short run with real pods against the real Redis.

Each expected number below is worked by hand from KEDA's formulas (see `workbench.scaling`):
maxScale = ceil(min(L / listLength, maxReplicaCount)), scaleTo = ceil(L), create = min(scaleTo, effective).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.emulator import cron_interval_s, load_manifests
from workbench.scaling import ScalingStrategy, decide, max_scale

ROOT = Path(__file__).resolve().parent.parent


def strategy(name: str, max_replicas: int = 10, **kwargs: object) -> ScalingStrategy:
    return ScalingStrategy(name=name, max_replica_count=max_replicas, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("length", "list_length", "cap", "expected"),
    [
        (10, 1, 4, 4),  # 10 / 1 = 10, capped at 4
        (3, 1, 4, 3),
        (7, 3, 10, 3),  # 7 / 3 = 2.33 -> 3
        (6, 3, 10, 2),
        (0, 1, 10, 0),
        (100, 5, 10, 10),  # 20, capped
    ],
)
def test_max_scale_is_ceil_of_length_over_target_capped(length, list_length, cap, expected):
    assert max_scale(length, list_length, cap) == expected


def test_default_subtracts_every_running_job():
    # L=10, listLength=1, max=4: maxScale 4; running 1 -> effective 3; create min(10, 3) = 3.
    decision = decide(strategy("default", 4), 10, 1, running=1, pending=0)
    assert (decision.max_scale, decision.effective_max_scale, decision.create) == (4, 3, 3)
    # Running already at the cap: nothing more.
    assert decide(strategy("default", 4), 10, 1, running=4, pending=0).create == 0


def test_default_creates_from_scale_to_not_from_max_scale():
    # listLength=3, L=2: maxScale ceil(0.67) = 1, scaleTo = 2 -> create min(2, 1) = 1.
    assert decide(strategy("default"), 2, 3, running=0, pending=0).create == 1


def test_accurate_subtracts_only_pending_jobs():
    # L=5, max=10, running=3 of which pending=1: 5+3-1 = 7 <= 10 -> effective 5-1 = 4.
    decision = decide(strategy("accurate"), 5, 1, running=3, pending=1)
    assert (decision.effective_max_scale, decision.create) == (4, 4)


def test_accurate_caps_at_max_replicas_minus_running():
    # L=8, max=10, running=4, pending=1: 8+4-1 = 11 > 10 -> effective 10-4 = 6.
    assert decide(strategy("accurate"), 8, 1, running=4, pending=1).create == 6
    # L=8, max=10, running=4, pending=2: 8+4-2 = 10, not > 10 -> effective 8-2 = 6 as well.
    assert decide(strategy("accurate"), 8, 1, running=4, pending=2).create == 6
    # L=8, max=4, running=4, pending=0: 12 > 4 -> 4-4 = 0.
    assert decide(strategy("accurate", 4), 8, 1, running=4, pending=0).create == 0


def test_accurate_does_not_double_count_pods_that_have_not_claimed():
    # Two Jobs started for two messages; their pods have not claimed yet: 2+2-2 = 2 <= 10 -> 2-2 = 0.
    assert decide(strategy("accurate"), 2, 1, running=2, pending=2).create == 0
    # One of them claimed (message left the list): L=1, running 2, pending 1 -> 1-1 = 0.
    assert decide(strategy("accurate"), 1, 1, running=2, pending=1).create == 0
    # A new message while both are busy: L=1, pending 0 -> 1 new Job.
    assert decide(strategy("accurate"), 1, 1, running=2, pending=0).create == 1


def test_eager_fills_free_slots_up_to_max_scale():
    # L=3, max=10, running=2, pending=0: min(10-2-0, 3) = 3, scaleTo becomes 10 -> create 3
    # (default would give 3-2 = 1).
    decision = decide(strategy("eager"), 3, 1, running=2, pending=0)
    assert (decision.scale_to, decision.effective_max_scale, decision.create) == (10, 3, 3)
    assert decide(strategy("default"), 3, 1, running=2, pending=0).create == 1
    # L=5, max=4, running=3, pending=1: maxScale 4; min(4-3-1, 4) = 0.
    assert decide(strategy("eager", 4), 5, 1, running=3, pending=1).create == 0


def test_custom_deducts_queue_length_and_a_share_of_running_jobs():
    # L=10, max=8, deduction 1, percentage 0.5, running 4: maxScale 8; 8 - 1 - int(4*0.5) = 5; min(5, 8) = 5.
    custom = strategy("custom", 8, queue_length_deduction=1, running_job_percentage="0.5")
    assert decide(custom, 10, 1, running=4, pending=0).create == 5
    # int() truncates: running 3 -> 8 - 1 - int(1.5) = 6.
    assert decide(custom, 10, 1, running=3, pending=0).create == 6


def test_custom_with_a_percentage_that_is_not_a_number_falls_back_to_default():
    broken = strategy("custom", 8, queue_length_deduction=1, running_job_percentage="half")
    # default: maxScale 8 - running 4 = 4.
    assert decide(broken, 10, 1, running=4, pending=0).create == 4


def test_inactive_trigger_creates_nothing():
    assert decide(strategy("accurate"), 0, 1, running=0, pending=0).create == 0
    # activationListLength 2: a list of 2 is not active (the scaler needs length > activation).
    decision = decide(strategy("accurate"), 2, 1, running=0, pending=0, activation_list_length=2)
    assert not decision.active and decision.create == 0
    assert decide(strategy("accurate"), 3, 1, running=0, pending=0, activation_list_length=2).create == 3


def test_min_replica_count_tops_up_before_any_strategy():
    # min 2, nothing running, empty list: active anyway, scaleTo = effective = 2 - 0 = 2.
    decision = decide(strategy("accurate", min_replica_count=2), 0, 1, running=0, pending=0)
    assert decision.active and decision.create == 2
    # min 2, one running, L=5: top up by 1 only; the strategy is not consulted.
    assert decide(strategy("accurate", min_replica_count=2), 5, 1, running=1, pending=0).create == 1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="strategy"):
        ScalingStrategy(name="greedy")
    with pytest.raises(ValueError, match="listLength"):
        max_scale(3, 0, 10)
    with pytest.raises(ValueError, match="pending"):
        decide(strategy("accurate"), 3, 1, running=1, pending=2)


def test_manifests_are_read_as_keda_would():
    manifests = load_manifests(ROOT / "keda")
    spec = manifests.scaled_job
    assert spec.strategy.name == "accurate"
    assert spec.strategy.pending_pod_conditions == ("PodScheduled", "Ready")
    assert spec.list_length == 1 and spec.list_name == "toWorker"
    assert spec.pod.command == ("python", "-m", "function.runner")
    # The pods' queue is the list KEDA counts.
    assert spec.pod.env["QUEUE_KEY"] == spec.list_name
    # Secrets are not in the pod env the emulator builds from the manifest.
    assert "REDIS_URL" not in spec.pod.env and "MINIO_SECRET_KEY" not in spec.pod.env
    assert spec.pod.empty_dirs == ("/tmp",) and spec.pod.env["TMPDIR"] == "/tmp"
    assert manifests.reaper is not None and manifests.reaper.command == ("python", "-m", "function.reaper")
    assert manifests.reap_interval_s == 60


def test_cron_interval():
    assert cron_interval_s("* * * * *") == 60
    assert cron_interval_s("*/5 * * * *") == 300


def run_scaler(services, tmp_path: Path, *args: str, timeout_s: float = 120) -> tuple[dict, str]:
    summary = tmp_path / "summary.json"
    env_args = [f"--env={name}={value}" for name, value in services.env().items()]
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.emulator",
            "--workdir",
            str(tmp_path / "work"),
            "--summary-json",
            str(summary),
            "--polling-interval",
            "0.3",
            "--max-seconds",
            str(timeout_s - 30),
            *env_args,
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads(summary.read_text()), completed.stdout


def test_empty_queue_starts_no_pod(services, redis_client, tmp_path):
    summary, out = run_scaler(services, tmp_path)
    assert summary["drained"] and summary["jobs"] == 0 and summary["pods"] == 0
    assert "queue=0 processing=0 pending=0 running=0" in out


def test_one_job_per_message_and_no_double_count(services, redis_client, tmp_path):
    # Two malformed messages: each pod claims one and dead-letters it without loading a model.
    redis_client.rpush("toWorker", "{not json", "[also not json")
    summary, out = run_scaler(services, tmp_path, "--max-replicas", "3", "--env=CLAIM_WAIT_S=0")
    # accurate + pending pods: exactly one Job per message, though several polls ran before the pods claimed.
    assert summary["jobs"] == 2 and summary["pods"] == 2, out
    assert summary["outcomes"] == {"dead-lettered": 2}
    assert summary["jobs_succeeded"] == 2 and summary["dead"] == 2
    assert redis_client.llen("toWorker:dead") == 2
    assert out.count("created=+2") == 1 and "created=+1" not in out
    logs = sorted((tmp_path / "work" / "pods").glob("*/log"))
    assert len(logs) == 2 and all("dead-lettered" in log.read_text() for log in logs)
    # Each pod's emptyDir was removed when it ended.
    assert not list((tmp_path / "work" / "pods").glob("*/volume-*"))
