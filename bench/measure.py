"""Measuring one run: wall seconds, CPU seconds and peak resident memory, for a child process tree or for
a stretch of code inside the current process.

A child is started with `Popen` and reaped with `os.wait4`, whose rusage counts the CPU time of the child
and of every descendant it waited for. Its peak RSS is the larger of two readings, both taken by a poll every
few milliseconds: the summed RSS of the whole tree (what the node sees, several processes at once) and the
largest `VmHWM` of one process of the tree (/proc/PID/status: the kernel's high-water mark of that process's
memory since its exec, so exact per process even between polls). `ru_maxrss` is not used: Python starts a
child with vfork, and at exec the kernel carries the parent's high-water mark into the child's `ru_maxrss`,
so a bench process that generated a long song in memory made every child read as large as itself.

Inside a process, `/proc/self/clear_refs` (writing "5") resets the kernel's high-water mark `VmHWM`, so each
in-process run gets its own peak even when the model stays loaded between runs.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

POLL_INTERVAL_S = 0.1


@dataclass
class Sample:
    """One timed run of one scenario."""

    scenario: str
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    ok: bool = True
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def vm_hwm_bytes(pid: int) -> int:
    """The RSS high-water mark (`VmHWM`) of process `pid`; 0 when it is gone or the kernel does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreePeak:
    """Polls the summed RSS of a process and all its descendants in a background thread."""

    def __init__(self, pid: int, interval_s: float = POLL_INTERVAL_S) -> None:
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_bytes = 0
        self.largest_hwm_bytes = 0  # the largest VmHWM of one process of the tree
        self._thread = threading.Thread(target=self._loop, name=f"tree-peak-{pid}", daemon=True)

    def _total(self) -> int:
        total = 0
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return 0
        for proc in procs:
            with suppress(psutil.Error):
                total += proc.memory_info().rss
            self.largest_hwm_bytes = max(self.largest_hwm_bytes, vm_hwm_bytes(proc.pid))
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._total())
            self._stop.wait(self._interval_s)

    def start(self) -> TreePeak:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes


def run_tree(
    scenario: str,
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 3600.0,
    log: Path | None = None,
) -> Sample:
    """Run `argv` to completion and measure its whole process tree; a non-zero exit gives `ok=False`."""
    out = log.open("ab") if log else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    sampler = TreePeak(proc.pid).start()
    deadline = started + timeout_s
    status, usage = 0, None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
    finally:
        wall = time.perf_counter() - started
        polled = sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if log:
            out.close()  # type: ignore[union-attr]
    assert usage is not None
    cpu = usage.ru_utime + usage.ru_stime
    peak = max(polled, sampler.largest_hwm_bytes)
    return Sample(
        scenario,
        wall,
        cpu,
        peak,
        ok=proc.returncode == 0,
        detail={
            "returncode": proc.returncode,
            "polled_tree_peak_bytes": polled,
            "max_single_process_rss_bytes": sampler.largest_hwm_bytes,
            "ru_maxrss_bytes_includes_parent": usage.ru_maxrss * 1024,
        },
    )


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark (VmHWM) since start or the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process().memory_info().rss


@contextmanager
def in_process(scenario: str) -> Iterator[Sample]:
    """Time the body inside this process; the yielded Sample is filled in when the body ends."""
    sample = Sample(scenario, 0.0, 0.0, 0)
    reset_peak_rss()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        yield sample
    finally:
        sample.wall_s = time.perf_counter() - wall0
        sample.cpu_s = time.process_time() - cpu0
        sample.peak_rss_bytes = peak_rss_bytes()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call and its result."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result
