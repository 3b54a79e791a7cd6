"""Check the simulator against a measured flood: replay its pushes through the model, compare drain and p95.

The measured file (`bench/flood_measure.py collect` writes it) is JSON:

    {
      "format": "stemworker-flood/1",
      "t0": "2026-01-01T12:00:00.000Z",          # the first push; every *_s below is seconds after it
      "fleet": {"strategy": "accurate", "max_replica_count": 4, "polling_interval_s": 30, "list_length": 1,
                "activation_list_length": 0, "pending_until": "claim", "claim_wait_s": 30, "max_messages": 1},
      "poll_offset_s": -2.1,                      # the scaler's first poll (optional, default 0)
      "jobs": [{"id": "song-1", "push_s": 0.0, "start_s": 33.9, "end_s": 101.4}],
      "pods": [{"name": "stemworker-0000-0", "start_s": 27.9, "jobs": ["song-1"]}]
    }

`start_s` is when a pod claimed the job (its status hash's `received_at`), `end_s` when it was done
(`done_at`); a pod's `start_s` is the poll that created it (null when unknown, e.g. a retry).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.planning.fleet import FleetSpec, ScalingStrategy
from bench.planning.metrics import summarize
from bench.planning.profiles import CostProfile
from bench.planning.simulator import Simulation
from bench.planning.workload import Workload

FORMAT = "stemworker-flood/1"
TOLERANCE = 0.15


@dataclass(frozen=True)
class Comparison:
    measured_drain_s: float
    predicted_drain_s: float
    measured_p95_s: float
    predicted_p95_s: float
    measured_pods: int
    predicted_pods: int
    cold_start_s: float
    tolerance: float

    @staticmethod
    def _within(predicted: float, measured: float, tolerance: float) -> bool:
        return abs(predicted - measured) <= tolerance * abs(measured)

    @property
    def passed(self) -> bool:
        return self._within(self.predicted_drain_s, self.measured_drain_s, self.tolerance) and self._within(
            self.predicted_p95_s, self.measured_p95_s, self.tolerance
        )

    def report(self) -> str:
        def row(name: str, measured: float, predicted: float) -> str:
            error = (predicted - measured) / measured if measured else float("nan")
            return f"{name:<22} measured {measured:9.1f}  predicted {predicted:9.1f}  ({error:+.1%})"

        verdict = "PASS" if self.passed else "FAIL"
        return "\n".join(
            [
                row("drain time (s)", self.measured_drain_s, self.predicted_drain_s),
                row("p95 push->done (s)", self.measured_p95_s, self.predicted_p95_s),
                f"{'pods started':<22} measured {self.measured_pods:9d}  predicted {self.predicted_pods:9d}",
                f"start-to-claim used: {self.cold_start_s:.2f} s",
                f"{verdict}: drain time and p95 latency within {self.tolerance:.0%} of the measurement",
            ]
        )


def fleet_of(raw: dict[str, Any]) -> FleetSpec:
    pending_until = raw.get("pending_until", "claim")
    return FleetSpec(
        strategy=ScalingStrategy(
            name=raw.get("strategy", "accurate"),
            max_replica_count=int(raw.get("max_replica_count", 100)),
            min_replica_count=int(raw.get("min_replica_count", 0)),
            queue_length_deduction=raw.get("queue_length_deduction"),
            running_job_percentage=raw.get("running_job_percentage"),
            pending_pod_conditions=("Ready",) if pending_until == "claim" else (),
        ),
        polling_interval_s=float(raw.get("polling_interval_s", 30)),
        list_length=float(raw.get("list_length", 1)),
        activation_list_length=float(raw.get("activation_list_length", 0)),
        claim_wait_s=float(raw.get("claim_wait_s", 30)),
        max_messages=int(raw.get("max_messages", 1)),
        pending_until=pending_until,
    )


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    data["jobs"] = [job for job in data["jobs"] if job.get("end_s") is not None and job.get("start_s") is not None]
    if not data["jobs"]:
        raise ValueError(f"{path}: no job with both start_s and end_s")
    return data


def measured_start_to_claim(data: dict[str, Any]) -> float:
    """Median seconds from a pod's creation to its first claim: what a pod is pending for in the emulator."""
    starts = {job["id"]: job["start_s"] for job in data["jobs"]}
    gaps = [
        starts[pod["jobs"][0]] - pod["start_s"]
        for pod in data.get("pods", [])
        if pod.get("start_s") is not None and pod.get("jobs") and pod["jobs"][0] in starts
    ]
    return max(0.0, statistics.median(gaps)) if gaps else 0.0


def compare(data: dict[str, Any], tolerance: float = TOLERANCE, start_to_claim_s: float | None = None) -> Comparison:
    """Simulate the measured pushes with the measured service time of each job (push order, as the FIFO list
    hands them out), the measured start-to-claim delay and the flood's fleet settings; no nodes."""
    jobs = sorted(data["jobs"], key=lambda job: job["push_s"])
    pushes = np.array([job["push_s"] for job in jobs])
    service = np.array([job["end_s"] - job["start_s"] for job in jobs])
    claim_delay = measured_start_to_claim(data) if start_to_claim_s is None else start_to_claim_s
    # The measured service already holds each pod's model load, so the profile adds none after the claim.
    profile = CostProfile(
        "measured",
        cold_start_s=claim_delay,
        seconds_per_audio_s=1.0,
        memory_mib=0,
        threads=0,
        source="measured flood",
        start_to_claim_s=claim_delay,
    )
    workload = Workload(arrivals=pushes, work_s=service, needs_model=np.zeros(len(jobs), dtype=bool), audio_s=service)
    result = Simulation(
        workload, fleet_of(data["fleet"]), profile, None, poll_offset_s=float(data.get("poll_offset_s", 0.0))
    ).run()
    summary = summarize(result, profile, None)
    first = float(pushes.min())
    measured_latency = np.array([job["end_s"] - job["push_s"] for job in jobs])
    return Comparison(
        measured_drain_s=max(job["end_s"] for job in jobs) - first,
        predicted_drain_s=summary.drain_s,
        measured_p95_s=float(np.percentile(measured_latency, 95)),
        predicted_p95_s=summary.p95_s,
        measured_pods=len(data.get("pods", [])),
        predicted_pods=summary.pods_started,
        cold_start_s=claim_delay,
        tolerance=tolerance,
    )
