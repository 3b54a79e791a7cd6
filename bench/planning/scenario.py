"""One planning scenario: every input of a run in one value, and running it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bench.planning.fleet import FleetSpec
from bench.planning.metrics import Summary, summarize
from bench.planning.profiles import CostProfile, NodeKind
from bench.planning.simulator import SimResult, Simulation
from bench.planning.workload import RateProfile, SongLengths, arrival_times, build_workload

# A cache hit: the worker finds the song's stems, writes the status and returns (no model, no separation).
DEFAULT_HIT_S = 1.0


@dataclass(frozen=True)
class Scenario:
    label: str
    fleet: FleetSpec
    profile: CostProfile
    node: NodeKind | None
    rate: RateProfile
    songs: SongLengths = field(default_factory=SongLengths)
    process: str = "poisson"
    hit_rate: float = 0.0
    hit_s: float = DEFAULT_HIT_S
    seed: int = 1
    warmup_s: float = 0.0

    def but(self, **changes: Any) -> Scenario:
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The inputs, for the JSON output."""
        node = self.node
        return {
            "label": self.label,
            "strategy": self.fleet.strategy.name,
            "max_replica_count": self.fleet.strategy.max_replica_count,
            "polling_interval_s": self.fleet.polling_interval_s,
            "list_length": self.fleet.list_length,
            "pending_until": self.fleet.pending_until,
            "claim_wait_s": self.fleet.claim_wait_s,
            "max_messages": self.fleet.max_messages,
            "profile": vars(self.profile),
            "node": vars(node) if node is not None else None,
            "rate_per_s": self.rate.mean_per_s,
            "duration_s": self.rate.duration_s,
            "peak_ratio": self.rate.peak_ratio,
            "arrivals": self.process,
            "songs": {
                "kind": self.songs.kind,
                "mean_s": self.songs.mean_s,
                "sd_s": self.songs.sd_s,
                "values": list(self.songs.values),
            },
            "hit_rate": self.hit_rate,
            "hit_s": self.hit_s,
            "seed": self.seed,
            "warmup_s": self.warmup_s,
        }


def run(scenario: Scenario) -> tuple[SimResult, Summary]:
    # Separate random streams for arrivals, song lengths and hits: changing the hit rate or the song
    # lengths leaves the push times as they were, so scenarios differ only where they should.
    arrivals_rng, songs_rng, hits_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(scenario.seed).spawn(3)
    )
    arrivals = arrival_times(scenario.rate, scenario.process, arrivals_rng)
    audio = scenario.songs.sample(len(arrivals), songs_rng)
    workload = build_workload(
        arrivals, audio, scenario.profile.seconds_per_audio_s, scenario.hit_rate, scenario.hit_s, hits_rng
    )
    result = Simulation(
        workload, scenario.fleet, scenario.profile, scenario.node, window_start_s=scenario.warmup_s
    ).run()
    return result, summarize(result, scenario.profile, scenario.node, scenario.warmup_s)
