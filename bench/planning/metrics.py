"""Figures from one simulation: latency percentiles, fleet size, pod time by kind, cost."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.planning.profiles import CostProfile, NodeKind
from bench.planning.simulator import SimResult


@dataclass(frozen=True)
class Summary:
    """What a plan reports. Latencies, fleet sizes and the cost per song leave out the first `warmup_s`: a fleet
    that starts empty under full load overshoots once, and its extra nodes take a while to empty. Peaks are
    taken at the polls (the only instants pods and nodes are added); means are pod- and node-seconds from the
    warm-up to the last push over that time. Pod-hours, node-hours and `cost` cover the whole run."""

    songs: int
    unserved: int
    warmup_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    drain_s: float
    peak_queue: int
    peak_pods: int
    mean_pods: float
    peak_nodes: int
    mean_nodes: float
    peak_pod_memory_gib: float
    pods_started: int
    pod_hours: float
    cold_start_pod_seconds: float
    cold_start_pod_hours: float
    idle_pod_hours: float
    busy_pod_hours: float
    node_hours: float
    cost: float | None
    cost_per_1000_songs: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: np.ndarray) -> list[float]:
    """p50, p95, p99; with unserved (infinite) values present, the nearest higher rank, as interpolating
    between two infinities is undefined."""
    if not len(values):
        return [math.nan] * 3
    method = "higher" if np.isinf(values).any() else "linear"
    return np.percentile(values, [50, 95, 99], method=method).tolist()


def _overlap(spans: list[tuple[float, float]], start: float, end: float = math.inf) -> float:
    """Seconds of the spans that fall inside [start, end]."""
    return sum(max(0.0, min(gone, end) - max(begun, start)) for begun, gone in spans)


def summarize(result: SimResult, profile: CostProfile, node: NodeKind | None, warmup_s: float = 0.0) -> Summary:
    """Reduce a run; `cost` is None without nodes (pods_per_node 0), where there is nothing to bill."""
    after = result.arrivals >= warmup_s
    # A message never served has an infinite latency, so it lands in the top percentiles instead of vanishing.
    all_latencies = np.nan_to_num(result.latencies, nan=np.inf)
    latencies = all_latencies[after] if after.any() else all_latencies
    p50, p95, p99 = _percentiles(latencies)
    tl = result.timeline
    t = np.asarray(tl.t)
    rows = t >= warmup_s if (t >= warmup_s).any() else np.ones(len(t), dtype=bool)
    pods, nodes, queue = (np.asarray(x)[rows] for x in (tl.pods, tl.nodes, tl.queue))
    node_hours = result.node_seconds / 3600
    billed = node is not None and node.pods_per_node > 0
    cost = node_hours * node.price_per_hour if billed and node is not None else None
    songs = len(result.arrivals)
    window_s = result.window[1] - result.window[0]
    window_songs = int(after.sum()) if after.any() else songs
    window_start = warmup_s if after.any() else float("-inf")
    window_cost = (
        _overlap(result.node_spans, window_start) / 3600 * node.price_per_hour if billed and node is not None else None
    )
    first = float(result.arrivals[0]) if songs else 0.0
    return Summary(
        songs=songs,
        unserved=int(np.isnan(result.done_at).sum()),
        warmup_s=warmup_s,
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        drain_s=float(np.max(np.nan_to_num(result.done_at, nan=np.inf))) - first if songs else 0.0,
        peak_queue=int(queue.max()) if len(queue) else 0,
        peak_pods=int(pods.max()) if len(pods) else 0,
        mean_pods=result.window_pod_seconds / window_s if window_s > 0 else 0.0,
        peak_nodes=int(nodes.max()) if len(nodes) else 0,
        mean_nodes=_overlap(result.node_spans, *result.window) / window_s if window_s > 0 else 0.0,
        peak_pod_memory_gib=(int(pods.max()) if len(pods) else 0) * profile.memory_mib / 1024,
        pods_started=result.pods_started,
        pod_hours=result.pod_seconds / 3600,
        cold_start_pod_seconds=result.cold_pod_seconds,
        cold_start_pod_hours=result.cold_pod_seconds / 3600,
        idle_pod_hours=result.idle_pod_seconds / 3600,
        busy_pod_hours=result.busy_pod_seconds / 3600,
        node_hours=node_hours,
        cost=cost,
        cost_per_1000_songs=window_cost / window_songs * 1000 if window_cost is not None and window_songs else None,
    )


def timeline_dict(result: SimResult) -> dict[str, list[float] | list[int]]:
    tl = result.timeline
    return {"t_s": tl.t, "queue": tl.queue, "pods": tl.pods, "pending": tl.pending, "nodes": tl.nodes}
