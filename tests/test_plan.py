"""The capacity planner (bench/plan.py, bench/planning/): the event simulation against hand-worked cases, the
inputs it reads and the outputs it writes. Pure and fast: no services, no processes.

Unless a test says otherwise: no nodes (pods start at once), polls at 0, 10, 20, ... s, KEDA's `accurate`
strategy, a Job pending until its pod claims, explicit push times and work seconds per message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import plan, report
from bench.flood_measure import build_measured, parse_poll_lines, pod_claims
from bench.planning import validation
from bench.planning.fleet import FleetSpec, ScalingStrategy, fleet_from_manifests
from bench.planning.metrics import summarize
from bench.planning.profiles import CostProfile, NodeKind, profile_from_bench
from bench.planning.scenario import Scenario, run
from bench.planning.simulator import Simulation
from bench.planning.workload import RateProfile, SongLengths, Workload, arrival_times

ROOT = Path(__file__).resolve().parent.parent


def fleet(
    strategy: str = "accurate",
    max_replicas: int = 10,
    max_messages: int = 1,
    claim_wait_s: float = 0.0,
    **strategy_fields: object,
) -> FleetSpec:
    return FleetSpec(
        strategy=ScalingStrategy(
            name=strategy, max_replica_count=max_replicas, pending_pod_conditions=("Ready",), **strategy_fields
        ),  # type: ignore[arg-type]
        polling_interval_s=10.0,
        list_length=1.0,
        claim_wait_s=claim_wait_s,
        max_messages=max_messages,
    )


def profile(cold_start_s: float = 0.0, start_to_claim_s: float = 0.0) -> CostProfile:
    return CostProfile(
        "test",
        cold_start_s=cold_start_s,
        seconds_per_audio_s=1.0,
        memory_mib=1000,
        threads=1,
        source="test",
        start_to_claim_s=start_to_claim_s,
    )


def workload(pushes: list[float], work_s: float, needs_model: bool = True) -> Workload:
    arrivals = np.asarray(pushes, dtype=float)
    return Workload(
        arrivals=arrivals,
        work_s=np.full(len(pushes), work_s),
        needs_model=np.full(len(pushes), needs_model),
        audio_s=np.full(len(pushes), work_s),
    )


def simulate(
    pushes: list[float], work_s: float, spec: FleetSpec, cost: CostProfile | None = None, node: NodeKind | None = None
):
    return Simulation(workload(pushes, work_s), spec, cost or profile(), node).run()


# ----- hand-worked runs


def test_one_pod_at_a_time_serves_one_message_per_poll():
    # Pushes at 0, 1, 2, 3; each pod starts 2 s before it claims and works 5 s; maxReplicaCount 1.
    # Poll 0 sees 1 message -> 1 pod: claims at 2, done at 7, exits. Polls 10, 20, 30 each find the pod gone
    # and the list non-empty -> 1 pod each, done at 17, 27, 37.
    result = simulate([0, 1, 2, 3], 5.0, fleet(max_replicas=1), profile(cold_start_s=2.0, start_to_claim_s=2.0))
    assert result.done_at.tolist() == [7, 17, 27, 37]
    assert result.latencies.tolist() == [7, 16, 25, 34]
    assert result.pods_started == 4
    assert result.cold_pod_seconds == 4 * 2.0
    assert result.busy_pod_seconds == 4 * 5.0
    assert result.pod_seconds == 4 * 7.0
    summary = summarize(result, profile(), None)
    assert summary.drain_s == 37
    assert summary.p50_s == pytest.approx(20.5)  # numpy's linear interpolation between 16 and 25


def test_drain_mode_pays_the_cold_start_once_per_pod():
    # Same pushes, MAX_MESSAGES 4; the cold start is 3 s: 2 before the claim, 1 (model load) on the first song.
    # The one pod claims at 2, done at 8, then takes the next message at once: done 13, 18, 23.
    # Poll 10: 2 messages queued, 1 running, 0 pending -> accurate: 1 + 1 - 0 > cap 1, so cap - running = 0.
    cost = profile(cold_start_s=3.0, start_to_claim_s=2.0)
    drained = simulate([0, 1, 2, 3], 5.0, fleet(max_replicas=1, max_messages=4), cost)
    assert drained.done_at.tolist() == [8, 13, 18, 23]
    assert drained.pods_started == 1
    assert drained.cold_pod_seconds == 3.0
    one_each = simulate([0, 1, 2, 3], 5.0, fleet(max_replicas=1), cost)
    assert one_each.pods_started == 4
    assert one_each.cold_pod_seconds == 4 * 3.0


def test_max_replica_count_caps_pods():
    # 100 messages at once, 5 pods at most, 10 s each with no start-up: a pod ends exactly at the next poll
    # (ends are handled before the poll at the same instant), so every poll runs 5: 20 rounds, 200 s.
    result = simulate([0.0] * 100, 10.0, fleet(max_replicas=5))
    assert max(result.timeline.pods) == 5
    assert result.pods_started == 100
    assert float(np.max(result.done_at)) == 200.0


@pytest.mark.parametrize(
    ("strategy", "pods_at_polls"),
    [
        # Worked from KEDA's formulas with cap 10; pods claim 15 s after creation, work 1000 s.
        # Pushes: 4 at 0, 4 at 5, 4 at 25. At polls 0, 10, 20, 30 (queue L, running R, pending P):
        # default  (maxScale - R):        0: 4-0=4 | 10: 8-4=4 | 20: 4-8<0 | 30: 4-8<0
        ("default", [4, 8, 8, 8]),
        # accurate (maxScale - P, or cap - R when maxScale + R - P > cap):
        #                                 0: 4 | 10: 8+4-4=8 -> 8-4=4 | 20: 4+8-4=8 -> 4-4=0 | 30: 4+8-0=12 -> 10-8=2
        ("accurate", [4, 8, 8, 10]),
        # eager (min(cap - R - P, maxScale)): 0: 4 | 10: min(2, 8)=2 | 20: L=4 (4 claimed) min(10-6-2, 4)=2 |
        #                                 30: L=12-6=6, min(10-8-2, 6)=0
        ("eager", [4, 6, 8, 8]),
        # custom, deduction 1, percentage 0.5 (maxScale - 1 - int(R * 0.5)):
        #                                 0: 4-1-0=3 | 10: 8-1-1=6 | 20: L=5, 5-1-4=0 | 30: L=3, 3-1-4<0
        ("custom", [3, 9, 9, 9]),
    ],
)
def test_strategies_differ_on_a_burst_as_kedas_would(strategy, pods_at_polls):
    extra = {"queue_length_deduction": 1, "running_job_percentage": "0.5"} if strategy == "custom" else {}
    spec = fleet(strategy, max_replicas=10, claim_wait_s=1000.0, **extra)
    pushes = [0.0] * 4 + [5.0] * 4 + [25.0] * 4
    result = simulate(pushes, 1000.0, spec, profile(cold_start_s=15.0, start_to_claim_s=15.0))
    assert result.timeline.pods[:4] == pods_at_polls


def test_default_strategy_starves_while_pods_are_busy():
    # The same burst: under `default` the last 4 pushes wait for a running pod to finish (~1000 s);
    # `accurate` starts pods for them at the poll at 30 s.
    pushes = [0.0] * 4 + [5.0] * 4 + [25.0] * 4
    cost = profile(cold_start_s=15.0, start_to_claim_s=15.0)
    default = simulate(pushes, 1000.0, fleet("default", claim_wait_s=1000.0), cost)
    accurate = simulate(pushes, 1000.0, fleet("accurate", claim_wait_s=1000.0), cost)
    assert default.claimed_at[8] > 1000
    assert accurate.claimed_at[8] == 45.0  # created at the poll at 30, claims 15 s later


def test_pending_until_running_counts_start_up_pods_as_capacity():
    # Without pendingPodConditions a pod stops being pending as soon as it runs, so `accurate` subtracts it
    # from nothing: at the poll at 10 both pushes are still queued (pods claim at 15) and 2 more pods start.
    spec = fleet(claim_wait_s=1000.0)
    running = FleetSpec(**{**spec.__dict__, "pending_until": "running"})
    cost = profile(cold_start_s=15.0, start_to_claim_s=15.0)
    assert simulate([0, 0], 100.0, spec, cost).timeline.pods[1] == 2
    assert simulate([0, 0], 100.0, running, cost).timeline.pods[1] == 4


def test_an_idle_pod_blocks_for_the_next_push_then_gives_up():
    # One pod created at 0 for the push at 0; it is done at 1 and with MAX_MESSAGES 2 waits for more: the push
    # at 20 is beyond its 5 s wait, so it exits at 6 and a new pod takes the push at the poll at 20; that one
    # also waits 5 s for a second message and exits at 26.
    result = simulate([0, 20], 1.0, fleet(max_messages=2, claim_wait_s=5.0))
    assert result.pods_started == 2
    assert result.done_at.tolist() == [1, 21]
    assert result.pod_seconds == (6 - 0) + (26 - 20)
    assert result.idle_pod_seconds == 2 * 5.0


def test_nodes_start_late_bill_until_removed():
    # 3 pods at poll 0, 2 per node, a node takes 50 s: two nodes are requested, both ready at 50; the pods
    # work 10 s (done 60), the nodes are empty from 60 and removed 100 s later, at 160.
    node = NodeKind("n", pods_per_node=2, start_s=50.0, price_per_hour=3.6, scale_down_s=100.0)
    result = simulate([0, 0, 0], 10.0, fleet(), node=node)
    assert result.done_at.tolist() == [60, 60, 60]
    assert result.nodes_started == 2
    assert result.node_seconds == 2 * 160
    summary = summarize(result, profile(), node)
    assert summary.cost == pytest.approx(2 * 160 / 3600 * 3.6)
    assert summary.cost_per_1000_songs == pytest.approx(summary.cost / 3 * 1000)


def test_a_stuck_fleet_stops_and_reports_unserved_messages():
    # custom with a deduction of 1 never starts a pod for a lone message.
    spec = fleet("custom", queue_length_deduction=1, running_job_percentage="1")
    result = simulate([0], 1.0, spec)
    summary = summarize(result, profile(), None)
    assert summary.unserved == 1
    assert math.isinf(summary.p95_s)


# ----- workload, cache hits, determinism


def test_uniform_constant_arrivals_are_evenly_spaced():
    times = arrival_times(RateProfile(0.5, 20.0), "uniform", np.random.default_rng(0))
    assert times.tolist() == pytest.approx([1, 3, 5, 7, 9, 11, 13, 15, 17, 19])


def test_diurnal_rate_peaks_at_mid_day_with_the_given_ratio():
    rate = RateProfile(10.0, 86_400.0, peak_ratio=1.5)
    times = arrival_times(rate, "poisson", np.random.default_rng(3))
    assert len(times) == pytest.approx(864_000, rel=0.01)
    noon = np.sum((times >= 11.5 * 3600) & (times < 12.5 * 3600)) / 3600
    midnight = np.sum(times < 1800) / 1800
    assert noon == pytest.approx(15.0, rel=0.03)
    assert midnight == pytest.approx(5.0, rel=0.05)


def test_lognormal_song_lengths_have_the_given_mean_and_sd():
    lengths = SongLengths("lognormal", 240.0, 60.0).sample(200_000, np.random.default_rng(1))
    assert lengths.mean() == pytest.approx(240.0, rel=0.01)
    assert lengths.std() == pytest.approx(60.0, rel=0.03)


def small_scenario(**changes: object) -> Scenario:
    base = Scenario(
        label="t",
        fleet=fleet(max_replicas=1000, claim_wait_s=30.0),
        profile=profile(),
        node=NodeKind("n", 4, 0.0, 1.0, scale_down_s=0.0),
        rate=RateProfile(1.0, 20_000.0),
        songs=SongLengths("fixed", 20.0),
        hit_s=0.0,
        seed=7,
    )
    return base.but(**changes)


def test_cache_hits_cut_work_in_proportion():
    full = run(small_scenario())[1]
    half = run(small_scenario(hit_rate=0.5))[1]
    assert half.unserved == 0
    # With free hits and no cold start, the work is exactly the misses' seconds: about half.
    assert half.busy_pod_hours / full.busy_pod_hours == pytest.approx(0.5, abs=0.02)
    # One pod per node, nodes that start at once and go as soon as they are empty: cost follows the work.
    one_per_node = NodeKind("n", 1, 0.0, 1.0, scale_down_s=0.0)
    full_cost = run(small_scenario(node=one_per_node))[1].cost
    half_cost = run(small_scenario(node=one_per_node, hit_rate=0.5))[1].cost
    assert half_cost / full_cost == pytest.approx(half.busy_pod_hours / full.busy_pod_hours, rel=1e-6)


def test_same_seed_same_result_other_seed_other_result():
    a, b = run(small_scenario())[1], run(small_scenario())[1]
    c = run(small_scenario(seed=8))[1]
    assert a == b
    assert a != c


# ----- inputs: manifests and bench results


def test_fleet_from_the_keda_manifests():
    spec = fleet_from_manifests(ROOT / "keda")
    assert spec.strategy.name == "accurate"
    assert spec.strategy.max_replica_count == 4
    assert spec.polling_interval_s == 30
    assert spec.list_length == 1
    assert spec.pending_until == "claim"
    assert spec.claim_wait_s == 30
    assert spec.max_messages == 1


def test_profile_from_a_bench_run_json(tmp_path):
    samples = [
        {"scenario": "stemworker_warm", "wall_s": 15.0, "cpu_s": 28.0, "peak_rss_bytes": 1300 * report.MIB, "ok": True},
        {"scenario": "stemworker_cold", "wall_s": 19.0, "cpu_s": 30.0, "peak_rss_bytes": 1200 * report.MIB, "ok": True},
    ]
    summaries = report.summarize(samples, 30.0)
    meta = {"audio_s": 30.0, "threads": 2, "device": "cpu", "machine": "test box", "command": "run.py"}
    path = tmp_path / "results.json"
    report.write_json(path, samples, summaries, meta, [], [""])
    loaded = profile_from_bench("cpu2", path)
    assert loaded.cold_start_s == pytest.approx(4.0)
    assert loaded.seconds_per_audio_s == pytest.approx(0.5)
    assert loaded.memory_mib == pytest.approx(1200)
    assert loaded.threads == 2


# ----- validation and the flood format


def flood_from_simulation(spec: FleetSpec, start_to_claim_s: float, pushes: list[float], work_s: float) -> dict:
    """What flood_measure would write for a flood that behaved exactly like the model."""
    cost = profile(cold_start_s=start_to_claim_s, start_to_claim_s=start_to_claim_s)
    result = simulate(pushes, work_s, spec, cost)
    jobs = [
        {"id": f"j{i}", "push_s": p, "start_s": float(s), "end_s": float(e)}
        for i, (p, s, e) in enumerate(zip(pushes, result.claimed_at, result.done_at, strict=True))
    ]
    return {
        "format": validation.FORMAT,
        "t0": "2026-01-01T00:00:00.000Z",
        "fleet": {
            "strategy": spec.strategy.name,
            "max_replica_count": spec.strategy.max_replica_count,
            "polling_interval_s": spec.polling_interval_s,
            "list_length": spec.list_length,
            "pending_until": spec.pending_until,
            "claim_wait_s": spec.claim_wait_s,
            "max_messages": spec.max_messages,
        },
        "jobs": jobs,
        "pods": [
            {"name": f"p{i}", "start_s": float(s) - start_to_claim_s, "jobs": [f"j{i}"]}
            for i, s in enumerate(result.claimed_at)
        ],
    }


def test_validate_passes_on_a_flood_that_behaved_like_the_model(tmp_path):
    flood = flood_from_simulation(fleet(max_replicas=3), 2.0, [0.5 * i for i in range(30)], 25.0)
    path = tmp_path / "flood.json"
    path.write_text(json.dumps(flood))
    comparison = validation.compare(validation.load(path))
    assert comparison.cold_start_s == pytest.approx(2.0)
    assert comparison.predicted_drain_s == pytest.approx(comparison.measured_drain_s)
    assert comparison.passed
    assert plan.main(["validate", "--measured", str(path)]) == 0


def test_validate_fails_when_the_measured_flood_drained_much_later(tmp_path):
    flood = flood_from_simulation(fleet(max_replicas=3), 2.0, [0.5 * i for i in range(30)], 25.0)
    for job in flood["jobs"][-3:]:  # the last jobs waited far longer in the list than the scaling explains
        job["start_s"] += 200.0
        job["end_s"] += 200.0
    path = tmp_path / "flood.json"
    path.write_text(json.dumps(flood))
    assert not validation.compare(validation.load(path)).passed
    assert plan.main(["validate", "--measured", str(path)]) == 1


def test_flood_measure_builds_the_format_from_logs_and_status_hashes():
    log = "\n".join(
        [
            "scaler: stemworker strategy=accurate maxReplicaCount=2 listName=toWorker listLength=1 "
            "pollingInterval=10 s reap every 60 s; a Job is pending until its pod claims "
            "(stands for pendingPodConditions PodScheduled,Ready)",
            "[    0.0 s] queue=2 processing=0 pending=2 running=2 created=+2 done=0 dead=0 killed=0",
            "[   10.0 s] queue=1 processing=2 pending=0 running=2 created=+0 done=0 dead=0 killed=0",
            "[   20.0 s] queue=0 processing=1 pending=1 running=1 created=+1 done=1 dead=0 killed=0",
        ]
    )
    header, polls = parse_poll_lines(log)
    assert header == {
        "strategy": "accurate",
        "max_replica_count": 2,
        "list_length": 1.0,
        "polling_interval_s": 10.0,
        "pending_until": "claim",
    }
    assert polls == [(0.0, 2), (10.0, 0), (20.0, 1)]
    claims = pod_claims(
        {
            "stemworker-0000-0": "2026-01-01 00:00:03,000 INFO stemworker: claimed job a (attempt 1/3)",
            "stemworker-0001-0": "x\n... claimed job b (attempt 1/3)\noutcome done job=b",
            "stemworker-0002-0": "... claimed job c (attempt 1/3)",
        }
    )
    assert claims == {"stemworker-0000-0": ["a"], "stemworker-0001-0": ["b"], "stemworker-0002-0": ["c"]}
    pushes = {"a": 1000.0, "b": 1000.5, "c": 1001.0}
    statuses = {
        "a": {"received_at": "1970-01-01T00:16:43.000Z", "done_at": "1970-01-01T00:17:40.000Z"},
        "b": {"received_at": "1970-01-01T00:16:44.000Z", "done_at": "1970-01-01T00:17:50.000Z"},
        "c": {"received_at": "1970-01-01T00:17:03.500Z", "done_at": "1970-01-01T00:18:00.000Z"},
    }
    measured = build_measured(
        pushes, statuses, header, polls, scaler_started_at=999.0, claims=claims, claim_wait_s=30.0, max_messages=1
    )
    assert measured["format"] == validation.FORMAT
    assert measured["poll_offset_s"] == -1.0
    assert measured["jobs"][0] == {"id": "a", "push_s": 0.0, "start_s": 3.0, "end_s": 60.0}
    assert [pod["start_s"] for pod in measured["pods"]] == [-1.0, -1.0, 19.0]
    assert measured["fleet"]["max_replica_count"] == 2


# ----- the command line


def test_simulate_writes_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "plan.json", tmp_path / "plan.png"
    code = plan.main(
        [
            "--songs-per-day",
            "20000",
            "--hours",
            "1",
            "--max-replicas",
            "500",
            "--seed",
            "2",
            "--json",
            str(out_json),
            "--png",
            str(out_png),
        ]
    )
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["summary"]["songs"] == pytest.approx(20000 / 24, rel=0.15)
    assert data["summary"]["unserved"] == 0
    assert data["scenario"]["strategy"] == "accurate"
    assert len(data["timeline"]["t_s"]) == len(data["timeline"]["pods"])
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert "per 1,000 songs" in capsys.readouterr().out


def test_table_writes_the_marked_block(tmp_path):
    doc = tmp_path / "capacity.md"
    doc.write_text("intro\n<!-- plan-table:begin -->\nold\n<!-- plan-table:end -->\noutro\n")
    code = plan.main(
        [
            "table",
            "--songs-per-day",
            "5000",
            "--hours",
            "2",
            "--warmup-s",
            "0",
            "--profiles",
            "cpu2",
            "--hit-rates",
            "0,0.5",
            "--write",
            str(doc),
        ]
    )
    assert code == 0
    text = doc.read_text()
    assert text.startswith("intro\n<!-- plan-table:begin -->\n### Planning table")
    assert text.endswith("<!-- plan-table:end -->\noutro\n")
    assert "\nold\n" not in text
    assert text.count("| cpu2 |") == 4  # mean and diurnal, two hit rates
    assert "| accurate + drain | 10 |" in text
