"""The planning table (node kinds x load x cache hit rate) and the strategy comparison, as Markdown."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

from bench.planning.fleet import STRATEGIES
from bench.planning.metrics import Summary
from bench.planning.scenario import Scenario, run
from bench.planning.workload import RateProfile


def _summary_of(scenario: Scenario) -> Summary:
    return run(scenario)[1]


def run_all(scenarios: Sequence[Scenario], jobs: int = 1) -> list[Summary]:
    """Summaries in the order given; `jobs` > 1 runs scenarios in worker processes (results are identical)."""
    if jobs <= 1:
        return [_summary_of(s) for s in scenarios]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_summary_of, scenarios))


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


def planning_scenarios(bases: dict[str, Scenario], peak_ratio: float, hit_rates: Iterable[float]) -> list[Scenario]:
    """For each node kind: constant load at the mean, then the diurnal day, each at every hit rate."""
    out = []
    for name, base in bases.items():
        for load, ratio in (("mean", 1.0), (f"diurnal {peak_ratio:g}x", peak_ratio)):
            rate = RateProfile(base.rate.mean_per_s, base.rate.duration_s, ratio)
            out += [base.but(label=f"{name}|{load}|{hit:.0%}", rate=rate, hit_rate=hit) for hit in hit_rates]
    return out


def planning_markdown(scenarios: Sequence[Scenario], summaries: Sequence[Summary]) -> str:
    lines = [
        "| node kind | load | cache hits | pods peak | pods mean | nodes peak | nodes mean | p50 latency | "
        "p95 latency | cold-start pod-h | cost / 1,000 songs | cost / day |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, s in zip(scenarios, summaries, strict=True):
        name, load, hits = scenario.label.split("|")
        per_1000 = s.cost_per_1000_songs
        per_day = None if per_1000 is None else per_1000 * scenario.rate.mean_per_s * 86_400 / 1000
        lines.append(
            f"| {name} | {load} | {hits} | {s.peak_pods:,} | {s.mean_pods:,.0f} | {s.peak_nodes:,} | "
            f"{s.mean_nodes:,.0f} | {s.p50_s:,.0f} s | {s.p95_s:,.0f} s | {s.cold_start_pod_hours:,.0f} | "
            f"{_money(s.cost_per_1000_songs)} | {_money(per_day)} |"
        )
    return "\n".join(lines) + "\n"


def comparison_scenarios(base: Scenario, drain_messages: int, custom: tuple[int, str]) -> list[Scenario]:
    """Each KEDA strategy with one message per pod, then the base strategy with MAX_MESSAGES=drain_messages.

    `custom` (queue length deduction, running job percentage) applies when the base sets neither.
    """
    strategy = base.fleet.strategy
    deduction, percentage = custom
    if strategy.queue_length_deduction is not None or strategy.running_job_percentage is not None:
        deduction, percentage = strategy.queue_length_deduction or 0, strategy.running_job_percentage or "1"
    out = []
    for name in STRATEGIES:
        extra = {"queue_length_deduction": deduction, "running_job_percentage": percentage} if name == "custom" else {}
        out.append(base.but(label=name, fleet=base.fleet.with_overrides(name=name, max_messages=1, **extra)))
    out.append(base.but(label=f"{strategy.name} + drain", fleet=base.fleet.with_overrides(max_messages=drain_messages)))
    return out


def comparison_markdown(scenarios: Sequence[Scenario], summaries: Sequence[Summary]) -> str:
    lines = [
        "| strategy | MAX_MESSAGES | pods started | pods peak | nodes peak | p50 | p95 | p99 | cold-start pod-h | "
        "idle pod-h | node-h | cost / 1,000 songs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, s in zip(scenarios, summaries, strict=True):
        fleet = scenario.fleet
        name = scenario.label
        if fleet.strategy.name == "custom":
            name += (
                f" (deduction {fleet.strategy.queue_length_deduction}, "
                f"percentage {fleet.strategy.running_job_percentage})"
            )
        lines.append(
            f"| {name} | {fleet.max_messages} | {s.pods_started:,} | {s.peak_pods:,} | {s.peak_nodes:,} | "
            f"{s.p50_s:,.0f} s | {s.p95_s:,.0f} s | {s.p99_s:,.0f} s | {s.cold_start_pod_hours:,.0f} | "
            f"{s.idle_pod_hours:,.0f} | {s.node_hours:,.0f} | {_money(s.cost_per_1000_songs)} |"
        )
    return "\n".join(lines) + "\n"
