"""Capacity planner: a discrete-event simulation of the stemworker ScaledJob fleet (KEDA polls, Jobs, pods,
the Redis list, nodes) that predicts latency, fleet size and cost.

    python -m bench.plan [simulate] [options]          one scenario: summary, --json, --png
    python -m bench.plan compare [options]             the four KEDA strategies and drain mode, side by side
    python -m bench.plan table [--write docs/capacity.md]   the planning table (CPU and GPU, mean and peak load,
                                                       0/20/50 % cache hits) and the comparison for each node kind
    python -m bench.plan validate --measured FLOOD.json     predicted vs measured drain time and p95 latency

The scaling decision is KEDA's own math (`decide`), with the ScaledJob's pollingInterval, maxReplicaCount,
scalingStrategy and pendingPodConditions read from `--manifests` (flags override). Cost profiles come from a
`bench/run.py --json` result (`--profile NAME=PATH`) or the built-in examples (cpu2, cpu4, gpu), whose sources
`--list-profiles` prints. See docs/capacity.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.planning import profiles, tables, validation
from bench.planning.chart import write_png
from bench.planning.cli_args import add_common, build_scenario, node_kinds, profile_set
from bench.planning.metrics import timeline_dict
from bench.planning.scenario import Scenario, run
from bench.planning.workload import RateProfile
from function.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = ("simulate", "compare", "table", "validate")
TABLE_BEGIN = "<!-- plan-table:begin -->"
TABLE_END = "<!-- plan-table:end -->"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    simulate = sub.add_parser("simulate", help="one scenario")
    add_common(simulate)
    compare = sub.add_parser("compare", help="default, custom, accurate, eager, and drain mode")
    add_common(compare)
    compare.add_argument("--drain-messages", type=int, default=10, help="MAX_MESSAGES of the drain-mode row")
    table = sub.add_parser("table", help="the planning table")
    add_common(table, table_defaults=True)
    table.add_argument("--profiles", default="cpu2,gpu", help="node kinds, comma separated (default cpu2,gpu)")
    table.add_argument("--hit-rates", default="0,0.2,0.5", help="cache hit rates, comma separated")
    table.add_argument("--drain-messages", type=int, default=10, help="MAX_MESSAGES of the drain-mode rows")
    table.add_argument("--write", type=Path, help=f"replace the block between {TABLE_BEGIN} and {TABLE_END} here")
    table.add_argument("--jobs", type=int, default=1, help="scenarios run in this many processes")
    check = sub.add_parser("validate", help="predicted vs measured flood")
    check.add_argument("--measured", type=Path, required=True, help="flood JSON (bench/flood_measure.py collect)")
    check.add_argument("--tolerance", type=float, default=validation.TOLERANCE)
    check.add_argument("--start-to-claim-s", type=float, help="instead of the median measured in the flood")
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["simulate", *argv]
    return parser.parse_args(argv)


def print_summary(scenario: Scenario, summary: dict) -> None:
    fleet, profile, node = scenario.fleet, scenario.profile, scenario.node
    print(
        f"{scenario.label}: {summary['songs']:,} songs over {scenario.rate.duration_s / 3600:g} h "
        f"(mean {scenario.rate.mean_per_s:.3f}/s, peak/mean {scenario.rate.peak_ratio:g}, {scenario.process}); "
        f"cache hits {scenario.hit_rate:.0%}"
    )
    print(
        f"fleet: {fleet.strategy.name}, maxReplicaCount {fleet.strategy.max_replica_count}, "
        f"pollingInterval {fleet.polling_interval_s:g} s, pending until {fleet.pending_until}, "
        f"MAX_MESSAGES {fleet.max_messages}, CLAIM_WAIT_S {fleet.claim_wait_s:g}"
    )
    print(
        f"profile {profile.name}: cold start {profile.cold_start_s:.2f} s ({profile.pre_claim_s:.2f} s before the "
        f"claim), {profile.seconds_per_audio_s:.4f} s per audio s, {profile.memory_mib:.0f} MiB; {profile.source}"
    )
    if node is not None and node.pods_per_node:
        print(
            f"nodes {node.name}: {node.pods_per_node} pods/node, start {node.start_s:g} s, "
            f"${node.price_per_hour:g}/h, scale-down after {node.scale_down_s:g} s empty"
        )
    if summary["unserved"]:
        print(f"WARNING: {summary['unserved']:,} messages were never served (the fleet stopped scaling)")
    print(
        f"latency push->done (after {summary['warmup_s']:g} s warm-up): p50 {summary['p50_s']:.1f} s, "
        f"p95 {summary['p95_s']:.1f} s, p99 {summary['p99_s']:.1f} s; drained {summary['drain_s']:.0f} s after "
        f"the first push"
    )
    print(
        f"fleet size: pods peak {summary['peak_pods']:,} mean {summary['mean_pods']:,.1f}; nodes peak "
        f"{summary['peak_nodes']:,} mean {summary['mean_nodes']:,.1f}; queue peak {summary['peak_queue']:,}; "
        f"pod memory at peak {summary['peak_pod_memory_gib']:,.0f} GiB"
    )
    print(
        f"pod-hours: {summary['pod_hours']:,.1f} total = {summary['busy_pod_hours']:,.1f} working + "
        f"{summary['cold_start_pod_hours']:,.1f} cold start ({summary['cold_start_pod_seconds']:,.0f} pod-seconds) + "
        f"{summary['idle_pod_hours']:,.1f} waiting on an empty list; {summary['pods_started']:,} pods"
    )
    if summary["peak_pods"] >= fleet.strategy.max_replica_count:
        print(
            f"NOTE: the fleet reached maxReplicaCount {fleet.strategy.max_replica_count}; raise --max-replicas to "
            "see what the load needs"
        )
    cost = summary["cost"]
    if cost is not None:
        print(
            f"cost: {summary['node_hours']:,.1f} node-hours = ${cost:,.2f} for the whole run; "
            f"${summary['cost_per_1000_songs']:.3f} per 1,000 songs after the warm-up"
        )


def cmd_simulate(args: argparse.Namespace) -> int:
    scenario = build_scenario(args)
    result, summary = run(scenario)
    data = summary.to_dict()
    print_summary(scenario, data)
    if args.json:
        args.json.write_text(
            json.dumps({"scenario": scenario.describe(), "summary": data, "timeline": timeline_dict(result)}, indent=1)
        )
    if args.png:
        write_png(
            args.png,
            result.timeline,
            f"{scenario.label}: {data['songs']:,} songs, {scenario.fleet.strategy.name}, p95 {data['p95_s']:.0f} s",
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    base = build_scenario(args)
    scenarios = tables.comparison_scenarios(base, args.drain_messages, (1, "0.5"))
    summaries = tables.run_all(scenarios)
    print(tables.comparison_markdown(scenarios, summaries))
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"scenario": s.describe(), "summary": m.to_dict()} for s, m in zip(scenarios, summaries, strict=True)],
                indent=1,
            )
        )
    return 0


def table_text(args: argparse.Namespace) -> tuple[str, list[dict]]:
    names = [name.strip() for name in args.profiles.split(",") if name.strip()]
    kinds, nodes = profile_set(args), node_kinds(args)
    bases = {name: build_scenario(args, kinds[name], nodes[name], label=name) for name in names}
    plan = tables.planning_scenarios(bases, args.peak_ratio, [float(h) for h in args.hit_rates.split(",")])
    # The comparisons run at a constant mean load without hits, whatever the table's own load is.
    steady = {
        name: base.but(rate=RateProfile(base.rate.mean_per_s, base.rate.duration_s), hit_rate=0.0)
        for name, base in bases.items()
    }
    compared = [s for name in names for s in tables.comparison_scenarios(steady[name], args.drain_messages, (1, "0.5"))]
    summaries = tables.run_all(plan + compared, args.jobs)
    text = ["### Planning table", "", tables.planning_markdown(plan, summaries[: len(plan)])]
    per_kind = len(compared) // len(names)
    for index, name in enumerate(names):
        rows = slice(index * per_kind, (index + 1) * per_kind)
        text += [
            f"### Strategies and drain mode: {name}, constant load at the mean, no cache hits",
            "",
            tables.comparison_markdown(compared[rows], summaries[len(plan) :][rows]),
        ]
    records = [
        {"scenario": s.describe(), "summary": m.to_dict()} for s, m in zip(plan + compared, summaries, strict=True)
    ]
    return "\n".join(text), records


def replace_block(path: Path, text: str) -> None:
    document = path.read_text()
    if TABLE_BEGIN not in document or TABLE_END not in document:
        raise SystemExit(f"{path} has no {TABLE_BEGIN} ... {TABLE_END} block to replace")
    head, rest = document.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    path.write_text(f"{head}{TABLE_BEGIN}\n{text}\n{TABLE_END}{tail}")


def cmd_table(args: argparse.Namespace) -> int:
    text, records = table_text(args)
    print(text)
    if args.write:
        replace_block(args.write, text)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    comparison = validation.compare(validation.load(args.measured), args.tolerance, args.start_to_claim_s)
    print(comparison.report())
    return 0 if comparison.passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "list_profiles", False):
        for name, profile in profiles.EXAMPLE_PROFILES.items():
            print(f"{name}: {profile}\n  nodes: {profiles.EXAMPLE_NODES[name]}")
        return 0
    try:
        return {"simulate": cmd_simulate, "compare": cmd_compare, "table": cmd_table, "validate": cmd_validate}[
            args.command
        ](args)
    except (ValueError, OSError, KeyError, ConfigError) as err:
        print(f"plan: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
