"""How `stemworker` shows things on a terminal (rich); every command prints JSON instead with --json."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from function.status import State
from stemops.deadletters import DeadLetter
from stemops.leases import RunningJob
from stemops.recent import JobRow
from stemops.stats import Stats
from stemops.waiting import WaitingMessage
from stemops.workers import WorkerRow

STATE_STYLES = {
    State.DONE.value: "green",
    State.FAILED.value: "red",
    State.QUEUED.value: "dim",
    State.DOWNLOADING.value: "cyan",
    State.SEPARATING.value: "cyan",
    State.UPLOADING.value: "cyan",
}
ERROR_WIDTH = 60


def seconds(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def ago(at: float | None, now: float | None = None) -> str:
    """How long ago, in the largest sensible unit: `42s`, `17m`, `3.5h`, `2.0d`."""
    if at is None:
        return "-"
    delta = max(0.0, (now or time.time()) - at)
    if delta < 120:
        return f"{delta:.0f}s"
    if delta < 7200:
        return f"{delta / 60:.0f}m"
    if delta < 172800:
        return f"{delta / 3600:.1f}h"
    return f"{delta / 86400:.1f}d"


def clip(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, "yellow"))


def duration(value: float | None) -> str:
    """Seconds as `42s`, `17m`, `3.5h`, `2.0d` (`-` when unknown)."""
    return "-" if value is None else ago(0.0, value)


def stats_view(stats: Stats) -> Table | Group:
    stamp = time.strftime("%H:%M:%S", time.localtime(stats.at))
    table = Table(
        title=f"stemworker · queue {escape(stats.queue)} · {stamp}",
        show_header=False,
        box=None,
        title_justify="left",
        padding=(0, 2),
    )
    for _ in range(4):
        table.add_column()
    table.add_row("waiting", str(stats.waiting), "oldest waiting", seconds(stats.oldest_waiting_s, 1))
    table.add_row("processing", str(stats.processing), "running (leases)", str(stats.running))
    table.add_row("dead letters", Text(str(stats.dead), style="red" if stats.dead else ""), "", "")
    table.add_row(
        "last hour",
        f"done {stats.done_last_hour} ({stats.cached_last_hour} cached)",
        f"failed {stats.failed_last_hour}",
        f"median job {seconds(stats.median_job_s_last_hour)}",
    )
    if stats.redis_persistence:
        table.add_row(
            "redis persistence",
            Text(stats.redis_persistence, style="bold red" if stats.redis_persistence_none else ""),
            "",
            "",
        )
    if not stats.running_jobs:
        return table
    return Group(table, running_view(list(stats.running_jobs)))


def running_view(rows: list[RunningJob]) -> Table:
    """Running jobs: the pod running each and for how long."""
    table = Table(
        title=f"{len(rows)} running job(s), longest first", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for name, justify in (
        ("id", "left"),
        ("pod", "left"),
        ("state", "left"),
        ("%", "right"),
        ("running", "right"),
        ("lease left", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row.job_id or "-",
            row.pod or "-",
            state_text(row.state or "-"),
            "-" if row.progress is None else f"{row.progress}%",
            duration(row.age_s),
            duration(row.lease_left_s),
        )
    return table


def waiting_view(rows: list[WaitingMessage], total: int) -> Table:
    """Messages queued and not started, next to be claimed first."""
    shown = "all shown" if len(rows) >= total else f"next {len(rows)} shown"
    table = Table(
        title=f"{total} waiting message(s), next first ({shown})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for name, justify in (("#", "right"), ("id", "left"), ("waiting", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(str(row.position), row.job_id or "(no valid id)", duration(row.waiting_s))
    return table


def workers_view(rows: list[WorkerRow]) -> Table:
    """Live runners by pod, with the job each holds."""
    table = Table(
        title=f"{len(rows)} runner pod(s) holding a job", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for name, justify in (
        ("pod", "left"),
        ("job", "left"),
        ("state", "left"),
        ("%", "right"),
        ("running", "right"),
        ("lease left", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for worker in rows:
        for job in worker.jobs:
            table.add_row(
                worker.pod,
                job.job_id or "-",
                state_text(job.state or "-"),
                "-" if job.progress is None else f"{job.progress}%",
                duration(job.age_s),
                duration(job.lease_left_s),
            )
    return table


def _fitted(table: Table, header: list[tuple[str, str]], cells: list[list[str | Text]], width: int) -> Table:
    """Every column keeps its longest cell whole; the last one (an error) gets the width that is left
    (at least 8), ellipsized. `width` is the console's."""
    used = 0
    for index, (name, justify) in enumerate(header[:-1]):
        widest = max([len(name)] + [len(str(row[index])) for row in cells])
        table.add_column(name, justify=justify, no_wrap=True, width=widest)  # type: ignore[arg-type]
        used += widest + 3  # a space of padding on each side and a blank column divider
    table.add_column(header[-1][0], overflow="ellipsis", no_wrap=True, width=max(8, width - used - 2))
    for row in cells:
        table.add_row(*row)
    return table


def jobs_view(rows: list[JobRow], width: int) -> Table:
    now = time.time()
    cells: list[list[str | Text]]
    cells = [
        [
            row.id,
            state_text(row.state),
            "-" if row.progress is None else f"{row.progress}%",
            row.model or "-",
            seconds(row.audio_seconds, 1),
            seconds(row.seconds),
            "-" if row.attempts is None else str(row.attempts),
            ago(row.updated_at, now),
            clip(row.error),
        ]
        for row in rows
    ]
    header = [
        ("id", "left"),
        ("state", "left"),
        ("%", "right"),
        ("model", "left"),
        ("audio", "right"),
        ("time", "right"),
        ("try", "right"),
        ("ago", "right"),
        ("error", "left"),
    ]
    table = Table(
        title=f"{len(rows)} recent job(s), newest first", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    return _fitted(table, header, cells, width)


def dead_view(total: int, letters: list[DeadLetter], width: int) -> Table:
    shown = f"{len(letters)} shown" if len(letters) < total else "all shown"
    now = time.time()
    cells: list[list[str | Text]]
    cells = [
        [
            str(x.index),
            ago(x.failed_at, now),
            str(x.entry.get("job_id") or "-"),
            str(x.entry.get("error_type", "-")),
            str(x.entry.get("attempts", "-")),
            clip(x.entry.get("error")),
        ]
        for x in letters
    ]
    header = [
        ("#", "right"),
        ("ago", "right"),
        ("job", "left"),
        ("error type", "left"),
        ("try", "right"),
        ("error", "left"),
    ]
    table = Table(
        title=f"{total} dead letter(s), oldest first ({shown})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    return _fitted(table, header, cells, width)


def outputs_view(outputs: Mapping[str, Any]) -> Table:
    table = Table(title="stems", title_justify="left", box=None)
    table.add_column("stem")
    table.add_column("where")
    for stem, where in outputs.items():
        table.add_row(stem, f"{where.get('bucket')}/{where.get('key')}" if isinstance(where, dict) else str(where))
    return table


def group(*parts: Any) -> Group:
    return Group(*parts)
