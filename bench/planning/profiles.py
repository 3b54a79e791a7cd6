"""Per-job cost profiles (from a `bench/run.py` result JSON, flags, or the built-in examples) and node kinds."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
# Interpreter start, imports and the BLMOVE of a cold `python -m function.runner`: 1.75-2.50 s measured
# (README, "How it scales"). The rest of a cold start (model load, first pass) comes after the claim.
DEFAULT_START_TO_CLAIM_S = 2.5


@dataclass(frozen=True)
class CostProfile:
    """What one pod costs in time and memory on one kind of node.

    cold_start_s: what a fresh pod pays once (cold job minus warm job); the first `start_to_claim_s` of it
    come before the pod claims a message, the rest when it first handles a song that needs the model.
    seconds_per_audio_s: warm job wall seconds per second of audio (decode, separate, encode, upload).
    threads: torch threads of the measurement (0 when the source does not say).
    """

    name: str
    cold_start_s: float
    seconds_per_audio_s: float
    memory_mib: float
    threads: int
    source: str
    start_to_claim_s: float = DEFAULT_START_TO_CLAIM_S

    def __post_init__(self) -> None:
        if self.cold_start_s < 0 or self.seconds_per_audio_s <= 0 or self.start_to_claim_s < 0:
            raise ValueError(f"profile {self.name}: cold start and start-to-claim >= 0, seconds per audio s > 0")

    @property
    def pre_claim_s(self) -> float:
        return min(self.start_to_claim_s, self.cold_start_s)

    @property
    def model_load_s(self) -> float:
        return self.cold_start_s - self.pre_claim_s


@dataclass(frozen=True)
class NodeKind:
    """A node pool: pods that fit on one node, seconds from request to a pod running on it, price per hour.

    pods_per_node 0 turns nodes off: every pod starts at once and costs nothing (how the local emulator runs).
    """

    name: str
    pods_per_node: int
    start_s: float
    price_per_hour: float
    scale_down_s: float = 600.0  # cluster-autoscaler's default --scale-down-unneeded-time
    description: str = ""

    def __post_init__(self) -> None:
        if self.pods_per_node < 0 or self.start_s < 0 or self.price_per_hour < 0 or self.scale_down_s < 0:
            raise ValueError(f"node kind {self.name}: every figure must be >= 0")


CPU2_SOURCE = (
    "README 'Results: 2-core CPU': `python -m bench.run --seconds 30 --repeat 3`, htdemucs fp32 on "
    "2 shared AMD EPYC cores: warm job 15.37 s, cold job 19.65 s for 30 s of audio, cold peak RSS "
    "1318 MiB"
)
GPU_SOURCE = (
    "README 'Results: one H100': `python -m bench.run --device cuda --seconds 30 --repeat 2`: warm job "
    "1.34 s, cold job 9.70 s for 30 s of audio, cold peak RSS 1499 MiB (host memory)"
)
CPU4_SPEEDUP = 1.7  # assumed, not measured: 2 -> 4 torch threads rarely scales linearly

EXAMPLE_PROFILES: dict[str, CostProfile] = {
    "cpu2": CostProfile(
        "cpu2",
        cold_start_s=19.65 - 15.37,
        seconds_per_audio_s=15.37 / 30,
        memory_mib=1318,
        threads=2,
        source=CPU2_SOURCE,
    ),
    "cpu4": CostProfile(
        "cpu4",
        cold_start_s=19.65 - 15.37,
        seconds_per_audio_s=15.37 / 30 / CPU4_SPEEDUP,
        memory_mib=1318,
        threads=4,
        source=f"NOT MEASURED: the cpu2 figures with an assumed {CPU4_SPEEDUP}x speed-up of the "
        "warm job from 2 to 4 threads; replace with a 4-CPU `bench/run.py` result",
    ),
    "gpu": CostProfile(
        "gpu", cold_start_s=9.70 - 1.34, seconds_per_audio_s=1.34 / 30, memory_mib=1499, threads=0, source=GPU_SOURCE
    ),
}

# Example prices, not quotes: see docs/capacity.md for where they come from; pass your own with --price.
EXAMPLE_NODES: dict[str, NodeKind] = {
    "cpu2": NodeKind(
        "cpu-16",
        pods_per_node=7,
        start_s=120.0,
        price_per_hour=0.68,
        description="16 vCPU / 32 GiB (c5.4xlarge-like), 7 pods of 2 CPU / 4 GiB requests",
    ),
    "cpu4": NodeKind(
        "cpu-16",
        pods_per_node=3,
        start_s=120.0,
        price_per_hour=0.68,
        description="16 vCPU / 32 GiB (c5.4xlarge-like), 3 pods of 4 CPU requests",
    ),
    "gpu": NodeKind(
        "gpu-h100",
        pods_per_node=1,
        start_s=300.0,
        price_per_hour=2.49,
        description="1 x H100 node, one pod holds the GPU",
    ),
}


def _scenario(summaries: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    if name not in summaries:
        raise ValueError(f"{path}: no {name!r} summary; run bench/run.py with stemworker_warm and stemworker_cold")
    return summaries[name]


def profile_from_bench(name: str, path: Path, variant: str = "") -> CostProfile:
    """A profile from `bench/run.py --json`: cold start = cold - warm median, rate = warm median / audio seconds.

    `variant` picks the `--variant NAME` scenarios (`stemworker_warm@NAME`) instead of the default ones.
    """
    data = json.loads(path.read_text())
    meta, summaries = data["meta"], data["summaries"]
    suffix = f"@{variant}" if variant else ""
    warm = _scenario(summaries, f"stemworker_warm{suffix}", path)
    cold = _scenario(summaries, f"stemworker_cold{suffix}", path)
    audio_s = float(meta["audio_s"])
    return CostProfile(
        name=name,
        cold_start_s=max(0.0, cold["wall_median_s"] - warm["wall_median_s"]),
        seconds_per_audio_s=warm["wall_median_s"] / audio_s,
        memory_mib=cold["peak_rss_median_bytes"] / MIB,
        threads=int(meta.get("threads", 0)),
        source=f"{path}: {meta.get('command', 'bench/run.py')} on {meta.get('machine', '?')} "
        f"({meta.get('device', '?')}, {audio_s:g} s of audio{', variant ' + variant if variant else ''})",
    )


def parse_profile_arg(text: str) -> CostProfile:
    """NAME=PATH or NAME=PATH@VARIANT (a bench/run.py result JSON)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"expected NAME=PATH.json[@VARIANT], got {text!r}")
    path, _, variant = rest.partition("@")
    return profile_from_bench(name, Path(path), variant)


def override(profile: CostProfile, **changes: float | None) -> CostProfile:
    """The profile with every change that is not None applied (flags given directly win over files)."""
    return replace(profile, **{k: v for k, v in changes.items() if v is not None})
