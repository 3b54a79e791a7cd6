"""A discrete-event simulation of the ScaledJob fleet: KEDA polls, Jobs and their pods, the FIFO list, nodes.

Messages are not events: the list is FIFO, so the k-th claim always takes the k-th push, and the queue is a
pointer into the sorted push times. A pod that finds the list empty blocks in BLMOVE for `claim_wait_s`; it
takes the next push if that comes in time (waiters are served in the order they blocked, as Redis does),
else it exits. Events per message are about two (a pod becoming ready, a job finishing), so a day of a
million songs is a few million heap operations.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from bench.planning.fleet import FleetSpec, decide
from bench.planning.nodes import NodePool
from bench.planning.profiles import CostProfile, NodeKind
from bench.planning.workload import Workload

# Event kinds, also the order of events at the same instant: work that ends frees pods and nodes before
# anything new is placed, and a poll sees everything that happened at its instant.
DONE, CLAIM, EXIT, NODE_READY, NODE_IDLE, READY, POLL = range(7)
# A run whose queue is not empty a month after the last push is not a plan; stop polling it.
GIVE_UP_AFTER_S = 30 * 86_400.0


@dataclass
class Timeline:
    """One row per poll."""

    t: list[float]
    queue: list[int]
    pods: list[int]
    pending: list[int]
    nodes: list[int]


@dataclass
class SimResult:
    """Per message (push order) and in total, what the fleet did."""

    arrivals: np.ndarray
    claimed_at: np.ndarray
    done_at: np.ndarray
    timeline: Timeline
    pods_started: int
    pod_seconds: float
    cold_pod_seconds: float
    busy_pod_seconds: float
    window: tuple[float, float]
    window_pod_seconds: float
    node_seconds: float
    node_spans: list[tuple[float, float]]
    nodes_started: int
    peak_pods: int
    peak_nodes: int
    end_s: float

    @property
    def latencies(self) -> np.ndarray:
        return self.done_at - self.arrivals

    @property
    def idle_pod_seconds(self) -> float:
        """Pod time spent blocked on an empty list (CLAIM_WAIT_S before giving up)."""
        # A difference of sums: clamp the float rounding that would print as -0 when no pod ever waited.
        return max(0.0, self.pod_seconds - self.cold_pod_seconds - self.busy_pod_seconds)


class Simulation:
    """One run; `run()` returns the SimResult. `nodes=None` or pods_per_node 0: pods start at once, no cost."""

    def __init__(
        self,
        workload: Workload,
        fleet: FleetSpec,
        profile: CostProfile,
        nodes: NodeKind | None,
        poll_offset_s: float = 0.0,
        window_start_s: float = 0.0,
    ) -> None:
        self.fleet = fleet
        self.arrivals: list[float] = workload.arrivals.tolist()
        self.work: list[float] = workload.work_s.tolist()
        self.needs_model: list[bool] = workload.needs_model.tolist()
        self.n = len(self.arrivals)
        self.pre_claim_s = profile.pre_claim_s
        self.model_load_s = profile.model_load_s
        self.pending_until_claim = fleet.pending_until == "claim"
        self.poll_offset_s = poll_offset_s
        self.claimed_at = [float("nan")] * self.n
        self.done_at = [float("nan")] * self.n
        self.head = 0
        self.finished = 0
        self.running = 0
        self.pending = 0
        self.peak_pods = 0
        self.pods_started = 0
        self.pod_seconds = 0.0
        # Pod time inside [window_start_s, last push], for the mean fleet size of a run past its warm-up.
        self.window = (window_start_s, max(window_start_s, self.arrivals[-1] if self.n else 0.0))
        self.window_pod_seconds = 0.0
        self.cold_pod_seconds = 0.0
        self.busy_pod_seconds = 0.0
        self.now = 0.0
        # Per pod slot: node (-1: none), container start, messages served, model loaded, still pending.
        self.pod_node: list[int] = []
        self.pod_start: list[float] = []
        self.pod_served: list[int] = []
        self.pod_loaded: list[bool] = []
        self.pod_pending: list[bool] = []
        self._free_slots: list[int] = []
        self.timeline = Timeline([], [], [], [], [])
        self._events: list[tuple[float, int, int, int, float]] = []
        self._seq = 0
        self.pool = None
        if nodes is not None and nodes.pods_per_node > 0:
            self.pool = NodePool(nodes, self._start_pod, self._schedule_node_ready, self._schedule_idle)

    # ----- the event queue
    def _push(self, at: float, kind: int, a: int, b: float = 0.0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, kind, self._seq, a, b))

    def _schedule_node_ready(self, at: float, node: int) -> None:
        self._push(at, NODE_READY, node)

    def _schedule_idle(self, at: float, node: int) -> None:
        self._push(at, NODE_IDLE, node)

    # ----- pods
    def _create_pod(self, now: float) -> None:
        # Pod slots are reused once their pod has exited: the lists stay as long as the peak fleet.
        if self._free_slots:
            pod = self._free_slots.pop()
            self.pod_node[pod] = -1
            self.pod_served[pod] = 0
            self.pod_loaded[pod] = False
            self.pod_pending[pod] = True
        else:
            pod = len(self.pod_node)
            self.pod_node.append(-1)
            self.pod_start.append(0.0)
            self.pod_served.append(0)
            self.pod_loaded.append(False)
            self.pod_pending.append(True)
        self.running += 1
        self.pending += 1
        if self.running > self.peak_pods:
            self.peak_pods = self.running
        if self.pool is None:
            self._start_pod(pod, -1, now)
        else:
            self.pool.place(pod, now)

    def _start_pod(self, pod: int, node: int, now: float) -> None:
        """The container starts (on `node`, -1 without nodes): start-up, then the first claim."""
        self.pod_node[pod] = node
        self.pod_start[pod] = now
        self.pods_started += 1
        self.cold_pod_seconds += self.pre_claim_s
        if not self.pending_until_claim:
            self._unpend(pod)
        self._push(now + self.pre_claim_s, READY, pod)

    def _unpend(self, pod: int) -> None:
        if self.pod_pending[pod]:
            self.pod_pending[pod] = False
            self.pending -= 1

    def _try_claim(self, pod: int, now: float) -> None:
        index = self.head
        if index < self.n and self.arrivals[index] <= now + self.fleet.claim_wait_s:
            self.head = index + 1
            at = self.arrivals[index]
            if at > now:
                self._push(at, CLAIM, pod, index)
            else:
                self._claim(pod, index, now)
        else:
            self._push(now + self.fleet.claim_wait_s, EXIT, pod)

    def _claim(self, pod: int, index: int, now: float) -> None:
        self.claimed_at[index] = now
        if self.pending_until_claim:
            self._unpend(pod)
        work = self.work[index]
        load = 0.0
        if self.needs_model[index] and not self.pod_loaded[pod]:
            self.pod_loaded[pod] = True
            load = self.model_load_s
            self.cold_pod_seconds += load
        self.busy_pod_seconds += work
        self._push(now + work + load, DONE, pod, index)

    def _done(self, pod: int, index: int, now: float) -> None:
        self.done_at[index] = now
        self.finished += 1
        self.pod_served[pod] += 1
        if self.pod_served[pod] < self.fleet.max_messages:
            self._try_claim(pod, now)
        else:
            self._exit(pod, now)

    def _exit(self, pod: int, now: float) -> None:
        self.running -= 1
        self._unpend(pod)
        started = self.pod_start[pod]
        self.pod_seconds += now - started
        self.window_pod_seconds += max(0.0, min(now, self.window[1]) - max(started, self.window[0]))
        if self.pool is not None:
            self.pool.release(self.pod_node[pod], now)
        self._free_slots.append(pod)

    # ----- KEDA
    def _poll(self, now: float) -> None:
        queue = max(0, bisect_right(self.arrivals, now) - self.head)
        fleet = self.fleet
        decision = decide(
            fleet.strategy, queue, fleet.list_length, self.running, self.pending, fleet.activation_list_length
        )
        for _ in range(decision.create):
            self._create_pod(now)
        row = self.timeline
        row.t.append(now)
        row.queue.append(queue)
        row.pods.append(self.running)
        row.pending.append(self.pending)
        row.nodes.append(self.pool.alive if self.pool is not None else 0)
        if self._keep_polling(now, decision.create):
            self._push(now + fleet.polling_interval_s, POLL, 0)

    def _keep_polling(self, now: float, created: int) -> bool:
        """Poll until every message is done, unless the fleet is stuck: pushes are over, no pod is left and KEDA
        creates none (e.g. `custom` deducting more than the queue holds), or a month has passed since."""
        if self.finished >= self.n:
            return False
        last_push = self.arrivals[-1] if self.n else 0.0
        stuck = now >= last_push and created == 0 and self.running == 0
        return not stuck and now < last_push + GIVE_UP_AFTER_S

    def run(self) -> SimResult:
        self._push(self.poll_offset_s, POLL, 0)
        events = self._events
        pool = self.pool
        now = 0.0
        while events:
            now, kind, _, a, b = heapq.heappop(events)
            if kind == DONE:
                self._done(a, int(b), now)
            elif kind == READY:
                self._try_claim(a, now)
            elif kind == POLL:
                self._poll(now)
            elif kind == CLAIM:
                self._claim(a, int(b), now)
            elif kind == EXIT:
                self._exit(a, now)
            elif kind == NODE_READY and pool is not None:
                pool.node_ready(a, now)
            elif kind == NODE_IDLE and pool is not None:
                pool.idle_check(a, now)
        return self._result(now)

    def _result(self, end: float) -> SimResult:
        pool = self.pool
        return SimResult(
            arrivals=np.asarray(self.arrivals),
            claimed_at=np.asarray(self.claimed_at),
            done_at=np.asarray(self.done_at),
            timeline=self.timeline,
            window=self.window,
            window_pod_seconds=self.window_pod_seconds,
            pods_started=self.pods_started,
            pod_seconds=self.pod_seconds,
            cold_pod_seconds=self.cold_pod_seconds,
            busy_pod_seconds=self.busy_pod_seconds,
            node_seconds=pool.node_seconds if pool is not None else 0.0,
            node_spans=pool.spans(end) if pool is not None else [],
            nodes_started=len(pool.pods) if pool is not None else 0,
            peak_pods=self.peak_pods,
            peak_nodes=pool.peak_alive if pool is not None else 0,
            end_s=end,
        )
