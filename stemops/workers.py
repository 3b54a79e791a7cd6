"""`stemworker workers`: the live runners, by pod, with what each holds (from function/claims.py's holders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from function.config import Settings
from stemops.leases import RunningJob, running_now

UNKNOWN_POD = "(unrecorded)"


@dataclass(frozen=True)
class WorkerRow:
    """One pod holding at least one live claim (a runner holds one at a time; a pod may show more while a lease it
    let go of without an ack has not expired yet)."""

    pod: str
    jobs: tuple[RunningJob, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "jobs": [job.as_dict() for job in self.jobs]}


def live_workers(client: redis.Redis, settings: Settings) -> list[WorkerRow]:
    """The pods holding live claims, the one running longest first. A runner waiting for a message holds no lease
    and is not listed: with one pod per message (KEDA's ScaledJob) every live runner holds one."""
    by_pod: dict[str, list[RunningJob]] = {}
    for job in running_now(client, settings):
        by_pod.setdefault(job.pod or UNKNOWN_POD, []).append(job)
    return [WorkerRow(pod, tuple(jobs)) for pod, jobs in by_pod.items()]
