"""Command-line flags shared by the planner's commands, and turning them into a Scenario."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.planning import profiles
from bench.planning.fleet import STRATEGIES, FleetSpec, fleet_from_manifests
from bench.planning.profiles import CostProfile, NodeKind
from bench.planning.scenario import DEFAULT_HIT_S, Scenario
from bench.planning.workload import RateProfile, SongLengths

ROOT = Path(__file__).resolve().parents[2]
TABLE_MAX_REPLICAS = 10_000  # high enough never to bind: the table asks how many pods the load needs


def add_common(parser: argparse.ArgumentParser, table_defaults: bool = False) -> None:
    fleet = parser.add_argument_group("fleet (default: the ScaledJob in --manifests)")
    fleet.add_argument("--manifests", type=Path, default=ROOT / "keda", help="folder with the ScaledJob")
    fleet.add_argument("--strategy", choices=STRATEGIES)
    fleet.add_argument(
        "--max-replicas",
        type=int,
        default=TABLE_MAX_REPLICAS if table_defaults else None,
        help="maxReplicaCount" + (f" (default {TABLE_MAX_REPLICAS})" if table_defaults else ""),
    )
    fleet.add_argument("--polling-interval", type=float, help="pollingInterval, seconds")
    fleet.add_argument("--list-length", type=float, help="the redis trigger's listLength")
    fleet.add_argument(
        "--pending-until",
        choices=("claim", "running"),
        help="a Job is pending until its pod claims (pendingPodConditions set) or runs (none)",
    )
    fleet.add_argument("--claim-wait", type=float, help="CLAIM_WAIT_S: how long a pod waits on an empty list")
    fleet.add_argument("--max-messages", type=int, help="MAX_MESSAGES per pod (drain mode when > 1)")
    fleet.add_argument("--queue-length-deduction", type=int, help="custom strategy")
    fleet.add_argument("--running-job-percentage", help="custom strategy, a float as a string")
    load = parser.add_argument_group("load")
    load.add_argument("--songs-per-day", type=float, default=1_000_000, help="mean arrival rate (default 1,000,000)")
    load.add_argument(
        "--hours",
        type=float,
        default=25.0 if table_defaults else 24.0,
        help="simulated time" + (" (default 25: one day after the warm-up)" if table_defaults else " (default 24)"),
    )
    load.add_argument(
        "--peak-ratio",
        type=float,
        default=1.5 if table_defaults else 1.0,
        help="diurnal peak/mean, 1 = constant" + (" (default 1.5)" if table_defaults else ""),
    )
    load.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    load.add_argument(
        "--song-length",
        default="240",
        help="seconds: 240 | lognormal:MEAN,SD | list:S,S,... | file:PATH (one length per line)",
    )
    load.add_argument("--hit-rate", type=float, default=0.0, help="cache hit rate, 0-1")
    load.add_argument("--hit-s", type=float, default=DEFAULT_HIT_S, help="seconds a cache hit takes")
    load.add_argument("--seed", type=int, default=1)
    load.add_argument(
        "--warmup-s",
        type=float,
        default=3600.0 if table_defaults else 0.0,
        help="leave the first seconds out of latency, fleet-size and cost-per-song figures"
        + (" (default 3600)" if table_defaults else ""),
    )
    cost = parser.add_argument_group("cost")
    cost.add_argument("--node-kind", default="cpu2", help="profile and node kind to simulate (default cpu2)")
    cost.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME=PATH[@VARIANT]",
        help="a bench/run.py result JSON as the cost profile NAME (repeatable)",
    )
    cost.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=PODS,START_S,PRICE",
        help="node kind for profile NAME: pods per node, start-up seconds, price per hour",
    )
    for flag, text in (
        ("--cold-start-s", "cold start a new pod pays once"),
        ("--seconds-per-audio-s", "warm job seconds per second of audio"),
        ("--memory-mib", "memory per pod"),
        ("--start-to-claim-s", "part of the cold start before the claim"),
        ("--pods-per-node", "pods per node (0: no nodes, no cost)"),
        ("--node-start-s", "seconds from node request to pods running on it"),
        ("--price", "price per node-hour"),
        ("--scale-down-s", "seconds a node stays empty before it is removed"),
    ):
        cost.add_argument(flag, type=float, help=text)
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the results as JSON")
    out.add_argument("--png", type=Path, help="write queue, pods and nodes over time (simulate)")
    out.add_argument("--list-profiles", action="store_true", help="print the built-in example profiles and exit")


def song_lengths(spec: str) -> SongLengths:
    kind, sep, rest = spec.partition(":")
    if not sep:
        return SongLengths("fixed", float(spec))
    if kind == "lognormal":
        mean, sd = (float(x) for x in rest.split(","))
        return SongLengths("lognormal", mean, sd)
    if kind in ("list", "file"):
        text = Path(rest).read_text() if kind == "file" else rest.replace(",", "\n")
        values = tuple(float(x) for x in text.split())
        return SongLengths("empirical", sum(values) / len(values), 0.0, values)
    raise ValueError(f"--song-length: expected SECONDS, lognormal:MEAN,SD, list:... or file:PATH, got {spec!r}")


def profile_set(args: argparse.Namespace) -> dict[str, CostProfile]:
    """The built-in examples, replaced or extended by --profile files; flags override every one of them."""
    found = dict(profiles.EXAMPLE_PROFILES)
    for text in args.profile:
        loaded = profiles.parse_profile_arg(text)
        found[loaded.name] = loaded
    return {
        name: profiles.override(
            p,
            cold_start_s=args.cold_start_s,
            seconds_per_audio_s=args.seconds_per_audio_s,
            memory_mib=args.memory_mib,
            start_to_claim_s=args.start_to_claim_s,
        )
        for name, p in found.items()
    }


def node_kinds(args: argparse.Namespace) -> dict[str, NodeKind]:
    found = dict(profiles.EXAMPLE_NODES)
    for text in args.node:
        name, _, figures = text.partition("=")
        pods, start, price = figures.split(",")
        found[name] = NodeKind(name, int(pods), float(start), float(price))
    changes = {
        "pods_per_node": None if args.pods_per_node is None else int(args.pods_per_node),
        "start_s": args.node_start_s,
        "price_per_hour": args.price,
        "scale_down_s": args.scale_down_s,
    }
    return {name: profiles.override(kind, **changes) for name, kind in found.items()}  # type: ignore[arg-type]


def fleet_of(args: argparse.Namespace) -> FleetSpec:
    fleet = fleet_from_manifests(args.manifests)
    changes = {
        "name": args.strategy,
        "max_replica_count": args.max_replicas,
        "queue_length_deduction": args.queue_length_deduction,
        "running_job_percentage": args.running_job_percentage,
        "polling_interval_s": args.polling_interval,
        "list_length": args.list_length,
        "pending_until": args.pending_until,
        "claim_wait_s": args.claim_wait,
        "max_messages": args.max_messages,
    }
    return fleet.with_overrides(**{k: v for k, v in changes.items() if v is not None})


def build_scenario(
    args: argparse.Namespace, profile: CostProfile | None = None, node: NodeKind | None = None, label: str | None = None
) -> Scenario:
    if profile is None or node is None:
        known, kinds = profile_set(args), node_kinds(args)
        if args.node_kind not in known or args.node_kind not in kinds:
            raise ValueError(
                f"--node-kind {args.node_kind!r} needs a profile (built-in or --profile) and a node "
                f"kind (built-in or --node); profiles: {sorted(known)}, node kinds: {sorted(kinds)}"
            )
        profile, node = known[args.node_kind], kinds[args.node_kind]
    return Scenario(
        label=label or args.node_kind,
        fleet=fleet_of(args),
        profile=profile,
        node=node,
        rate=RateProfile(args.songs_per_day / 86_400, args.hours * 3600, args.peak_ratio),
        songs=song_lengths(args.song_length),
        process=args.arrivals,
        hit_rate=args.hit_rate,
        hit_s=args.hit_s,
        seed=args.seed,
        warmup_s=args.warmup_s,
    )
