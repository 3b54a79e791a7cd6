"""The node pool under the pods: bin-packing onto ready nodes, a node per overflow, scale-down of empty nodes.

Pods go to the fullest ready node with room (like a MostAllocated scheduler score), ties to the node that
held a pod most recently, so load concentrates and idle nodes stay idle long enough to be removed (the
kube-scheduler breaks ties at random, which spreads pods over idle nodes and keeps more of them alive).
Pods that fit nowhere wait, and a node is requested when the waiting pods outgrow what the booting nodes
will hold, as cluster-autoscaler does for unschedulable pods. Only empty nodes are removed: a running
separation is never evicted to consolidate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from bench.planning.profiles import NodeKind

# (time, node id) -> schedules the check of an empty node for removal.
ScheduleIdle = Callable[[float, int], None]
ScheduleReady = Callable[[float, int], None]
StartPod = Callable[[int, int, float], None]  # (pod, node, now)


class NodePool:
    """Nodes of one kind; the simulation calls `place`, `release`, `node_ready` and `idle_check`."""

    def __init__(
        self, kind: NodeKind, start_pod: StartPod, schedule_ready: ScheduleReady, schedule_idle: ScheduleIdle
    ) -> None:
        self.kind = kind
        self.capacity = kind.pods_per_node
        self._start_pod = start_pod
        self._schedule_ready = schedule_ready
        self._schedule_idle = schedule_idle
        self.pods: list[int] = []
        self.created: list[float] = []
        self.removed: list[float | None] = []
        self.empty_since: list[float] = []
        # At most one removal check is queued per node: a busy node gets its next one when it empties again.
        self.check_queued: list[bool] = []
        # Ready nodes that still have room, by how many pods they hold; each an insertion-ordered dict, so
        # popitem() hands out the node filed last.
        self._room: list[dict[int, None]] = [{} for _ in range(self.capacity)]
        self.waiting: deque[int] = deque()
        self.booting = 0
        self.alive = 0
        self.peak_alive = 0
        self.node_seconds = 0.0

    def _bind(self, pod: int, node: int, now: float) -> None:
        self.pods[node] += 1
        self.empty_since[node] = float("inf")
        self._start_pod(pod, node, now)

    def _take_room(self) -> int | None:
        for count in range(self.capacity - 1, -1, -1):
            if self._room[count]:
                return self._room[count].popitem()[0]
        return None

    def _file(self, node: int, now: float) -> None:
        """Put a ready node back among those with room, and start its idle clock when it is empty."""
        count = self.pods[node]
        if count < self.capacity:
            self._room[count][node] = None
        if count == 0:
            self.empty_since[node] = now
            if not self.check_queued[node]:
                self.check_queued[node] = True
                self._schedule_idle(now + self.kind.scale_down_s, node)

    def place(self, pod: int, now: float) -> None:
        node = self._take_room()
        if node is not None:
            self._bind(pod, node, now)
            self._file(node, now)
            return
        self.waiting.append(pod)
        if len(self.waiting) > self.booting * self.capacity:
            self._request(now)

    def _request(self, now: float) -> None:
        node = len(self.pods)
        self.pods.append(0)
        self.created.append(now)
        self.removed.append(None)
        self.empty_since.append(float("inf"))
        self.check_queued.append(False)
        self.booting += 1
        self.alive += 1
        self.peak_alive = max(self.peak_alive, self.alive)
        self._schedule_ready(now + self.kind.start_s, node)

    def node_ready(self, node: int, now: float) -> None:
        self.booting -= 1
        while self.waiting and self.pods[node] < self.capacity:
            self._bind(self.waiting.popleft(), node, now)
        self._file(node, now)

    def release(self, node: int, now: float) -> None:
        """A pod on `node` ended: a waiting pod takes its place, or the node gets the room back."""
        count = self.pods[node]
        if count < self.capacity:
            self._room[count].pop(node, None)
        self.pods[node] -= 1
        if self.waiting:
            self._bind(self.waiting.popleft(), node, now)
        self._file(node, now)

    def idle_check(self, node: int, now: float) -> None:
        """Remove the node once it has been empty for scale_down_s; if it emptied again later, check again then."""
        self.check_queued[node] = False
        if self.removed[node] is not None or self.pods[node]:
            return
        due = self.empty_since[node] + self.kind.scale_down_s
        if due > now:
            self.check_queued[node] = True
            self._schedule_idle(due, node)
            return
        self._room[0].pop(node, None)
        self.removed[node] = now
        self.alive -= 1
        self.node_seconds += now - self.created[node]

    def spans(self, end: float) -> list[tuple[float, float]]:
        """(requested, removed) of every node; one still there at `end` counts until then."""
        return [(start, end if gone is None else gone) for start, gone in zip(self.created, self.removed, strict=True)]
