"""The ScaledJob settings the simulation needs, read from `keda/` or given directly.

This is the planner's only import of KEDA's scaling decision, so moving that module touches one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench.emulator import load_documents
from workbench.scaling import STRATEGIES, Decision, ScalingStrategy, decide

__all__ = ["STRATEGIES", "Decision", "FleetSpec", "ScalingStrategy", "decide", "fleet_from_manifests"]

# KEDA and Kubernetes defaults for fields a manifest leaves out.
DEFAULT_POLLING_INTERVAL_S = 30.0
DEFAULT_MAX_REPLICA_COUNT = 100
DEFAULT_LIST_LENGTH = 5.0
# function.config's default when the ConfigMap sets no CLAIM_WAIT_SECONDS.
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
    """The ScaledJob's scaling fields, its redis trigger, and CLAIM_WAIT_SECONDS / MAX_MESSAGES from its ConfigMaps."""
    docs = load_documents(folder)
    scaled = [d for d in docs if d.get("kind") == "ScaledJob"]
    if len(scaled) != 1:
        raise ValueError(f"expected exactly one ScaledJob in {folder}, found {len(scaled)}")
    spec = scaled[0]["spec"]
    trigger = next(t for t in spec["triggers"] if t["type"] == "redis")["metadata"]
    scaling = spec.get("scalingStrategy", {})
    config: dict[str, str] = {}
    for doc in docs:
        if doc.get("kind") == "ConfigMap":
            config.update({k: str(v) for k, v in (doc.get("data") or {}).items()})
    conditions = tuple(scaling.get("pendingPodConditions", ()))
    return FleetSpec(
        strategy=ScalingStrategy(
            name=scaling.get("strategy", "default"),
            max_replica_count=int(spec.get("maxReplicaCount", DEFAULT_MAX_REPLICA_COUNT)),
            min_replica_count=int(spec.get("minReplicaCount", 0)),
            queue_length_deduction=scaling.get("customScalingQueueLengthDeduction"),
            running_job_percentage=scaling.get("customScalingRunningJobPercentage"),
            pending_pod_conditions=conditions,
        ),
        polling_interval_s=float(spec.get("pollingInterval", DEFAULT_POLLING_INTERVAL_S)),
        list_length=float(trigger.get("listLength", DEFAULT_LIST_LENGTH)),
        activation_list_length=float(trigger.get("activationListLength", 0)),
        claim_wait_s=float(config.get("CLAIM_WAIT_SECONDS", DEFAULT_CLAIM_WAIT_S)),
        max_messages=int(config.get("MAX_MESSAGES", 1)),
        pending_until="claim" if conditions else "running",
    )
