"""The fleet over time as a PNG: queue length, pods (pending shaded) and nodes, one panel each."""

from __future__ import annotations

from pathlib import Path

from bench.planning.simulator import Timeline


def write_png(path: Path, timeline: Timeline, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    hours = [t / 3600 for t in timeline.t]
    fig, (queue, pods, nodes) = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    queue.plot(hours, timeline.queue, color="#4c72b0", linewidth=0.8)
    queue.set_ylabel("queued messages")
    pods.plot(hours, timeline.pods, color="#dd8452", linewidth=0.8, label="running (unfinished Jobs), after each poll")
    pods.fill_between(hours, timeline.pending, color="#dd8452", alpha=0.3, linewidth=0, label="pending")
    pods.set_ylabel("pods")
    pods.legend(loc="upper right", fontsize="small")
    nodes.plot(hours, timeline.nodes, color="#55a868", linewidth=0.8)
    nodes.set_ylabel("nodes")
    nodes.set_xlabel("hours (one sample per KEDA poll)")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
