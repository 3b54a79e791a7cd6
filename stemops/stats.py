"""`stemworker stats`: the queue at a glance, as rq info shows it."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from function.config import Settings
from function.queue import WorkQueue
from function.status import State
from stemops.leases import RunningJob, running_jobs, running_now
from stemops.persistence import read_persistence
from stemops.recent import ended_since
from stemops.waiting import oldest_waiting_age_s

WINDOW_S = 3600


@dataclass(frozen=True)
class Stats:
    queue: str
    waiting: int
    processing: int
    dead: int
    running: int
    oldest_waiting_s: float | None
    done_last_hour: int
    cached_last_hour: int
    failed_last_hour: int
    median_job_s_last_hour: float | None
    at: float
    redis_persistence: str = ""  # AOF/RDB as Redis reports them (stemops/persistence.py)
    redis_persistence_none: bool = False  # a restart would lose every queued job
    running_jobs: tuple[RunningJob, ...] = ()  # each live claim: job, pod, age

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(client: redis.Redis, settings: Settings) -> Stats:
    """Read the queue's lists and leases, the oldest waiting message's age, and the jobs of the last hour.

    The running jobs are the live claims with the pod running each and its age (stemops.leases.running_now).
    The last hour is the jobs whose latest start or end (their score in the recent-jobs index) is within
    WINDOW_S, counted by the state their status hash has now; the median is over those done, of their total
    seconds (the status hash's `seconds`); `cached_last_hour` counts those done from the result cache."""
    waiting, processing, dead = WorkQueue(client, settings.queue_key).lengths()
    running = running_jobs(client, settings.queue_key)
    running_list = tuple(running_now(client, settings))
    oldest = oldest_waiting_age_s(client, settings)
    now = time.time()
    recent = ended_since(client, settings, now - WINDOW_S)
    done = [job for job in recent if job["state"] == State.DONE.value]
    times = [float(job["seconds"]) for job in done if job["seconds"]]
    failed = sum(1 for job in recent if job["state"] == State.FAILED.value)
    persistence = read_persistence(client)
    return Stats(
        redis_persistence=persistence.describe(),
        redis_persistence_none=persistence.none,
        queue=settings.queue_key,
        waiting=waiting,
        processing=processing,
        dead=dead,
        running=running,
        oldest_waiting_s=oldest,
        done_last_hour=len(done),
        cached_last_hour=sum(1 for job in done if job["cached"] == "1"),
        failed_last_hour=failed,
        median_job_s_last_hour=statistics.median(times) if times else None,
        at=now,
        running_jobs=running_list,
    )
