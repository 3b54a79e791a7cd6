"""The ScaledJob settings the simulation needs, read from `keda/` or given directly.

This is the planner's only import of KEDA's scaling decision and of the manifest parser, both the emulator's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench.emulator import DEFAULT_POLLING_INTERVAL_S, load_manifests
from workbench.scaling import STRATEGIES, Decision, ScalingStrategy, decide

__all__ = ["STRATEGIES", "Decision", "FleetSpec", "ScalingStrategy", "decide", "fleet_from_manifests"]

# function.config's default when the ConfigMap sets no claim wait.
DEFAULT_CLAIM_WAIT_S = 30.0


@dataclass(frozen=True)
class FleetSpec:
    """How the fleet scales and how a pod takes messages.

    `pending_until` is "claim" when the ScaledJob lists pendingPodConditions (the worker turns Ready only by
    claiming, which is what the emulator watches for), else "running": KEDA then counts a Job pending only
    until its container runs.
    """

    strategy: ScalingStrategy
    polling_interval_s: float = DEFAULT_POLLING_INTERVAL_S
    list_length: float = 1.0
    activation_list_length: float = 0.0
    claim_wait_s: float = DEFAULT_CLAIM_WAIT_S
    max_messages: int = 1
    pending_until: str = "claim"

    def __post_init__(self) -> None:
        if self.polling_interval_s <= 0 or self.list_length <= 0 or self.max_messages < 1:
            raise ValueError("pollingInterval and listLength must be > 0 and max_messages >= 1")
        if self.pending_until not in ("claim", "running"):
            raise ValueError(f"pending_until must be 'claim' or 'running', got {self.pending_until!r}")

    def with_overrides(self, **changes: Any) -> FleetSpec:
        """A copy with FleetSpec fields and ScalingStrategy fields (`name`, `max_replica_count`, ...) changed."""
        strategy_fields = {k: v for k, v in changes.items() if k in ScalingStrategy.__dataclass_fields__}
        fleet_fields = {k: v for k, v in changes.items() if k not in strategy_fields}
        strategy = replace(self.strategy, **strategy_fields) if strategy_fields else self.strategy
        return replace(self, strategy=strategy, **fleet_fields)


def fleet_from_manifests(folder: Path) -> FleetSpec:
    """The ScaledJob as the emulator reads it (`workbench.emulator.load_manifests`), with the job runner's claim
    wait and MAX_MESSAGES from its pod's environment."""
    job = load_manifests(folder).scaled_job
    env = job.pod.env
    claim_wait_s = env.get("CLAIM_WAIT_S", env.get("CLAIM_WAIT_SECONDS", DEFAULT_CLAIM_WAIT_S))
    return FleetSpec(
        strategy=job.strategy,
        polling_interval_s=job.polling_interval_s,
        list_length=job.list_length,
        activation_list_length=job.activation_list_length,
        claim_wait_s=float(claim_wait_s),
        max_messages=int(env.get("MAX_MESSAGES", 1)),
        pending_until="claim" if job.strategy.pending_pod_conditions else "running",
    )
