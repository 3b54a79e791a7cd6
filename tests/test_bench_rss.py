"""The benchmark's memory readings: a child's peak RSS is its own, not the bench process's, and the per-length
table ends with the right PASS/FAIL line for issue 23's target."""

from __future__ import annotations

import sys

import numpy as np

from bench import report
from bench.measure import run_tree

MIB = 1024 * 1024


def test_a_small_child_of_a_large_bench_process_reads_small() -> None:
    """Python spawns with vfork, and the kernel carries the parent's high-water mark into the child's ru_maxrss:
    a peak taken from ru_maxrss made every child at least as large as the bench process (which had just generated
    a long song). The reading now comes from the child's own VmHWM and the polled tree."""
    ballast = np.ones(400 * MIB // 8)  # this process is now over 400 MiB
    sample = run_tree("small", [sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert ballast.sum() > 0 and sample.ok
    assert sample.detail["ru_maxrss_bytes_includes_parent"] > 400 * MIB  # what the old reading would have said
    assert 0 < sample.peak_rss_bytes < 100 * MIB, sample.detail


def test_a_large_child_reads_large() -> None:
    code = "import numpy as np, time; x = np.ones(300 * 2**20 // 8); time.sleep(0.3)"
    sample = run_tree("large", [sys.executable, "-c", code])
    assert sample.ok and sample.peak_rss_bytes > 300 * MIB, sample.detail


def summary(name: str, peak_mib: float, failed: int = 0) -> report.Summary:
    return report.summarize(
        [
            {
                "scenario": name,
                "wall_s": 1.0,
                "cpu_s": 1.0,
                "peak_rss_bytes": int(peak_mib * MIB),
                "ok": not failed,
                "audio_s": 30.0,
            }
        ],
        30.0,
    )[name]


def test_the_rss_table_passes_within_the_factor_and_fails_beyond() -> None:
    cold = "stemworker_cold"
    within = report.rss_by_length(
        [
            (300.0, {cold: summary(cold, 1100)}),
            (30.0, {cold: summary(cold, 1000)}),
            (1200.0, {cold: summary(cold, 1250)}),
        ]
    )
    assert "| stemworker_cold | 1000 | 1100 | 1250 | 0.214 |" in within  # sorted by length; (1250-1000)/1170
    assert within.splitlines()[-1].startswith("PASS cold job peak RSS at 1200 s <= 1.25x at 30 s: 1.250x")
    beyond = report.rss_by_length([(30.0, {cold: summary(cold, 1000)}), (1200.0, {cold: summary(cold, 1260)})])
    assert beyond.splitlines()[-1].startswith("FAIL")
    failed = report.rss_by_length([(30.0, {cold: summary(cold, 1000)}), (1200.0, {cold: summary(cold, 1, 1)})])
    assert "| stemworker_cold | 1000 | failed | n/a |" in failed and failed.splitlines()[-1].startswith("n/a")
