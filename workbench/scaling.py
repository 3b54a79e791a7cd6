"""KEDA's ScaledJob scaling decision as a pure function: how many new Jobs one poll creates.

This follows KEDA (`pkg/scaling/scaledjob/metrics.go` and `pkg/scaling/executor/scale_jobs.go`, v2.19+):

- the redis scaler reports the list length `L`; the trigger is active when `L > activationListLength`
  (or always, when `minReplicaCount > 0`);
- `scaleTo = ceil(L)` and `maxScale = ceil(min(L / listLength, maxReplicaCount))`;
- `running` counts every unfinished Job (pending ones included); `pending` counts the unfinished Jobs whose
  pod has not met every `pendingPodConditions` entry (without that list: has no pod Running or Succeeded);
- below `minReplicaCount` running Jobs, KEDA tops up to the minimum and ignores the strategy;
- otherwise the strategy gives the effective maximum from `maxScale`, `running - minReplicaCount`,
  `pending` and `maxReplicaCount`:
    default:  maxScale - running
    custom:   min(maxScale - deduction - int(running * percentage), maxReplicaCount)
    accurate: maxReplicaCount - running       if maxScale + running - pending > maxReplicaCount
              maxScale - pending               otherwise
    eager:    min(maxReplicaCount - running - pending, maxScale), and scaleTo becomes maxReplicaCount;
- an inactive trigger or an effective maximum <= 0 creates nothing; otherwise `min(scaleTo, effective)` Jobs.

`custom` with a percentage that is not a number falls back to `default`, as KEDA does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STRATEGIES = ("default", "custom", "accurate", "eager")


@dataclass(frozen=True)
class ScalingStrategy:
    """`spec.scalingStrategy` and the replica bounds of one ScaledJob."""

    name: str = "default"
    max_replica_count: int = 100
    min_replica_count: int = 0
    queue_length_deduction: int | None = None
    running_job_percentage: str | None = None
    pending_pod_conditions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"scalingStrategy.strategy must be one of {list(STRATEGIES)}, got {self.name!r}")
        if self.max_replica_count < 0 or self.min_replica_count < 0:
            raise ValueError(
                f"replica counts must be >= 0, got min {self.min_replica_count} max {self.max_replica_count}"
            )


@dataclass(frozen=True)
class Decision:
    """One poll's outcome: the inputs KEDA computed and how many Jobs it creates."""

    active: bool
    scale_to: int
    max_scale: int
    effective_max_scale: int
    create: int


def max_scale(queue_length: float, list_length: float, max_replica_count: int) -> int:
    """ceil(min(queue_length / list_length, max_replica_count)): the Jobs the queue calls for, capped."""
    if list_length <= 0:
        raise ValueError(f"listLength must be > 0, got {list_length}")
    return math.ceil(min(queue_length / list_length, max_replica_count))


def _percentage(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def effective_max_scale(
    strategy: ScalingStrategy, maxscale: int, running: int, pending: int, scale_to: int
) -> tuple[int, int]:
    """(effective max scale, scale_to) of one strategy; `running` is already less minReplicaCount."""
    cap = strategy.max_replica_count
    name = strategy.name
    percentage = _percentage(strategy.running_job_percentage)
    if name == "custom" and percentage is None:
        name = "default"  # KEDA falls back when customScalingRunningJobPercentage is not a float
    if name == "custom":
        deduction = strategy.queue_length_deduction or 0
        return min(maxscale - deduction - int(running * (percentage or 0.0)), cap), scale_to
    if name == "accurate":
        if maxscale + running - pending > cap:
            return cap - running, scale_to
        return maxscale - pending, scale_to
    if name == "eager":
        return min(cap - running - pending, maxscale), cap
    return maxscale - running, scale_to


def decide(
    strategy: ScalingStrategy,
    queue_length: int,
    list_length: float,
    running: int,
    pending: int,
    activation_list_length: float = 0,
) -> Decision:
    """How many new Jobs KEDA creates for this poll of a list of `queue_length` messages."""
    if running < 0 or pending < 0 or pending > running:
        raise ValueError(f"need 0 <= pending <= running (pending Jobs are unfinished), got {pending}/{running}")
    active = queue_length > activation_list_length or strategy.min_replica_count > 0
    scale_to = math.ceil(queue_length)
    maxscale = max_scale(queue_length, list_length, strategy.max_replica_count)
    if running < strategy.min_replica_count:
        scale_to = effective = strategy.min_replica_count - running
    else:
        effective, scale_to = effective_max_scale(
            strategy, maxscale, running - strategy.min_replica_count, pending, scale_to
        )
    effective = max(effective, 0)
    create = min(scale_to, effective) if active and effective > 0 else 0
    return Decision(active=active, scale_to=scale_to, max_scale=maxscale, effective_max_scale=effective, create=create)
