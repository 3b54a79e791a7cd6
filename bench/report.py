"""Summaries, ratios, PASS/FAIL targets, and the Markdown, JSON and PNG outputs of a benchmark run."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Summary:
    """Every repeat of one scenario, reduced."""

    scenario: str
    runs: int
    failed: int
    wall_min_s: float
    wall_median_s: float
    cpu_median_s: float
    peak_rss_median_bytes: int
    peak_rss_max_bytes: int
    audio_s: float

    @property
    def rtf(self) -> float:
        """Real-time factor: median wall seconds per second of audio (below 1 is faster than real time)."""
        return self.wall_median_s / self.audio_s if self.audio_s else float("nan")


def summarize(samples: list[dict[str, Any]], audio_s: float) -> dict[str, Summary]:
    """Group the samples by scenario; failed runs are counted but not timed."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by_name.setdefault(sample["scenario"], []).append(sample)
    summaries = {}
    for name, runs in by_name.items():
        good = [run for run in runs if run.get("ok")] or runs
        walls = [run["wall_s"] for run in good]
        peaks = [run["peak_rss_bytes"] for run in good]
        summaries[name] = Summary(
            scenario=name,
            runs=len(runs),
            failed=sum(not run.get("ok") for run in runs),
            wall_min_s=min(walls),
            wall_median_s=statistics.median(walls),
            cpu_median_s=statistics.median(run["cpu_s"] for run in good),
            peak_rss_median_bytes=int(statistics.median(peaks)),
            peak_rss_max_bytes=max(peaks),
            audio_s=audio_s,
        )
    return summaries


def _ratio(summaries: dict[str, Summary], top: str, bottom: str, field: str) -> float | None:
    """top/bottom; NaN when every run of either failed (so its target reads FAIL), None when one was not run."""
    if top not in summaries or bottom not in summaries:
        return None
    if any(summaries[name].failed == summaries[name].runs for name in (top, bottom)):
        return float("nan")
    return getattr(summaries[top], field) / getattr(summaries[bottom], field)


# Targets (issue "Performance, round two"). CPU: ratios to baselines measured in the same run. GPU (`--device cuda`):
# the warm job within 1.5x the floor and a cold job of at most 4 s, on a 30 s song.
WARM_VS_FLOOR = 0.60
COLD_VS_SEED = 0.60
COLD_MINUS_WARM_S = 2.0
GPU_WARM_VS_FLOOR = 1.5
GPU_COLD_S = 4.0
# Issue 23: the cold job's peak RSS at the longest song of a run within this factor of its peak at the shortest.
RSS_LONGEST_VS_SHORTEST = 1.25


def _difference(summaries: dict[str, Summary], top: str, bottom: str) -> float | None:
    """top - bottom median wall seconds; NaN when every run of either failed, None when one was not run."""
    if top not in summaries or bottom not in summaries:
        return None
    if any(summaries[name].failed == summaries[name].runs for name in (top, bottom)):
        return float("nan")
    return summaries[top].wall_median_s - summaries[bottom].wall_median_s


def ratios(summaries: dict[str, Summary], suffix: str = "") -> dict[str, float | None]:
    """The ratios the targets are about, from medians measured side by side in one run."""
    warm, cold = f"stemworker_warm{suffix}", f"stemworker_cold{suffix}"
    return {
        f"{warm} / inference (wall)": _ratio(summaries, warm, "inference", "wall_median_s"),
        f"{cold} / cli (wall)": _ratio(summaries, cold, "cli", "wall_median_s"),
        f"{cold} / seed_style (wall)": _ratio(summaries, cold, "seed_style", "wall_median_s"),
        f"peak_rss({cold}) / peak_rss(cli)": _ratio(summaries, cold, "cli", "peak_rss_median_bytes"),
    }


def differences(summaries: dict[str, Summary], suffix: str = "") -> dict[str, float | None]:
    warm, cold = f"stemworker_warm{suffix}", f"stemworker_cold{suffix}"
    return {f"{cold} - {warm} (wall, s)": _difference(summaries, cold, warm)}


def gpu_songs_per_hour(summaries: dict[str, Summary], suffix: str = "") -> float | None:
    """Songs of this length one GPU finishes per hour with a warm worker (3600 / warm job wall)."""
    warm = summaries.get(f"stemworker_warm{suffix}")
    if warm is None or warm.failed == warm.runs:
        return None
    return 3600 / warm.wall_median_s


def targets(
    summaries: dict[str, Summary], latencies: list[float], suffix: str = "", device: str = "cpu"
) -> list[tuple[str, bool | None]]:
    """PASS/FAIL lines; None when a scenario needed for a target was not run."""
    r = ratios(summaries, suffix)
    warm, cold = f"stemworker_warm{suffix}", f"stemworker_cold{suffix}"
    gap = differences(summaries, suffix)[f"{cold} - {warm} (wall, s)"]
    audio_s = next(iter(summaries.values())).audio_s if summaries else 0.0

    def check(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit  # NaN (all runs failed) compares False: FAIL

    if device.startswith("cuda"):
        cold_s = (
            summaries[cold].wall_median_s
            if cold in summaries and summaries[cold].failed < summaries[cold].runs
            else (float("nan") if cold in summaries else None)
        )
        lines = [
            (
                f"GPU: warm job end to end <= {GPU_WARM_VS_FLOOR} x inference floor: "
                f"{_fmt(r[f'{warm} / inference (wall)'])}",
                check(r[f"{warm} / inference (wall)"], GPU_WARM_VS_FLOOR),
            ),
            (
                f"GPU: cold job <= {GPU_COLD_S:g} s ({audio_s:.0f} s song): {_fmt(cold_s, 's')}",
                check(cold_s, GPU_COLD_S),
            ),
        ]
    else:
        lines = [
            (
                f"warm job end to end <= {WARM_VS_FLOOR} x fp32 inference floor: "
                f"{_fmt(r[f'{warm} / inference (wall)'])}",
                check(r[f"{warm} / inference (wall)"], WARM_VS_FLOOR),
            ),
            (
                f"cold job <= {COLD_VS_SEED} x seed-style worker: {_fmt(r[f'{cold} / seed_style (wall)'])}",
                check(r[f"{cold} / seed_style (wall)"], COLD_VS_SEED),
            ),
        ]
    lines += [
        (
            f"cold - warm <= {COLD_MINUS_WARM_S:g} s ({audio_s:.0f} s song): {_fmt(gap, 's')}",
            check(gap, COLD_MINUS_WARM_S),
        ),
        (
            f"peak RSS of cold job <= CLI peak RSS ({audio_s:.0f} s song): "
            f"{_fmt(r[f'peak_rss({cold}) / peak_rss(cli)'])}",
            check(r[f"peak_rss({cold}) / peak_rss(cli)"], 1.0),
        ),
    ]
    if not suffix:
        worst = max(latencies) if latencies else None
        lines.append(
            (
                f"message on an empty queue -> separating in a warm runner <= 1 s: "
                f"max {_fmt(worst, 's')} over {len(latencies)} runs",
                check(worst, 1.0),
            )
        )
    return lines


def _fmt(value: float | None, unit: str = "x") -> str:
    if value is None:
        return "n/a"
    if value != value:  # NaN
        return "every run failed"
    return f"{value:.3f} {unit}" if unit == "s" else f"{value:.3f}{unit}"


def markdown(summaries: dict[str, Summary], meta: dict[str, Any], latencies: list[float], suffixes: list[str]) -> str:
    """The results as a Markdown table, ratios and PASS/FAIL lines."""
    lines = [
        f"Song: {meta['audio_s']:.1f} s generated stereo 44.1 kHz MP3; model {meta['model']} "
        f"({meta['weights']}); device {meta['device']}; {meta['threads']} torch threads; "
        f"{meta['repeat']} repeats in alternating order; machine: {meta['machine']}.",
        "",
        "| scenario | runs | wall min s | wall median s | CPU median s | peak RSS median MiB | "
        "peak RSS max MiB | wall / audio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        failed = f" ({s.failed} failed)" if s.failed else ""
        lines.append(
            f"| {s.scenario} | {s.runs}{failed} | {s.wall_min_s:.2f} | {s.wall_median_s:.2f} | {s.cpu_median_s:.1f} | "
            f"{s.peak_rss_median_bytes / MIB:.0f} | {s.peak_rss_max_bytes / MIB:.0f} | {s.rtf:.3f} |"
        )
    lines += ["", "| ratio (medians) | value |", "|---|---|"]
    for suffix in suffixes:
        for name, value in ratios(summaries, suffix).items():
            lines.append(f"| {name} | {_fmt(value)} |")
        for name, value in differences(summaries, suffix).items():
            lines.append(f"| {name} | {_fmt(value, 's')} |")
        if meta["device"].startswith("cuda"):
            songs = gpu_songs_per_hour(summaries, suffix)
            lines.append(
                f"| songs per GPU-hour, warm worker{suffix}, {meta['audio_s']:.0f} s songs | "
                f"{'n/a' if songs is None else f'{songs:.0f}'} |"
            )
    if latencies:
        lines.append(
            f"| message -> `separating`, warm runner blocked in BLMOVE (s) | "
            f"min {min(latencies):.3f}, max {max(latencies):.3f} |"
        )
    lines += ["", "```"]
    for suffix in suffixes:
        for text, ok in targets(summaries, latencies, suffix, meta["device"]):
            verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
            lines.append(f"{verdict}{' [' + suffix.lstrip('@') + ']' if suffix else ''}: {text}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def write_json(
    path: Path,
    samples: list[dict[str, Any]],
    summaries: dict[str, Summary],
    meta: dict[str, Any],
    latencies: list[dict[str, Any]],
    suffixes: list[str],
) -> None:
    payload = {
        "meta": meta,
        "samples": samples,
        "summaries": {name: vars(s) | {"rtf": s.rtf} for name, s in summaries.items()},
        "ratios": {suffix or "base": ratios(summaries, suffix) for suffix in suffixes},
        "latency": latencies,
        "differences": {suffix or "base": differences(summaries, suffix) for suffix in suffixes},
        "targets": {
            suffix or "base": [
                {"target": text, "pass": ok}
                for text, ok in targets(
                    summaries,
                    [x["latency_s"] for x in latencies if x.get("latency_s") is not None],
                    suffix,
                    meta["device"],
                )
            ]
            for suffix in suffixes
        },
    }
    path.write_text(json.dumps(payload, indent=2, default=str))


def write_png(path: Path, summaries: dict[str, Summary], meta: dict[str, Any]) -> None:
    """Two bar charts side by side: median wall seconds (min as a tick) and median peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    walls = [summaries[n].wall_median_s for n in names]
    mins = [summaries[n].wall_min_s for n in names]
    rss = [summaries[n].peak_rss_median_bytes / MIB for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, walls, color="#4c72b0")
    left.scatter(mins, names, color="black", marker="|", s=200, label="min")
    left.set_xlabel("wall seconds (median; tick = min)")
    left.legend(loc="lower right")
    right.barh(names, rss, color="#dd8452")
    right.set_xlabel("peak RSS of the process tree, MiB (median)")
    right.set_yticklabels([])
    fig.suptitle(f"{meta['audio_s']:.0f} s song, {meta['model']} on {meta['device']} ({meta['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rss_by_length(runs: list[tuple[float, dict[str, Summary]]], cold: str = "stemworker_cold") -> str:
    """Peak RSS (median, MiB) of every scenario at every song length of one run, its growth per second of audio
    between the shortest and the longest, and the PASS/FAIL line of the target: the cold job's peak RSS at the
    longest length <= RSS_LONGEST_VS_SHORTEST x its peak at the shortest (both measured in this run)."""
    runs = sorted(runs, key=lambda run: run[0])
    names = list(dict.fromkeys(name for _, summaries in runs for name in summaries))
    (short_s, short), (long_s, long) = runs[0], runs[-1]
    lines = [
        "| scenario | "
        + " | ".join(f"{seconds:g} s song, MiB" for seconds, _ in runs)
        + f" | MiB per s of audio ({short_s:g} s -> {long_s:g} s) |",
        "|---|" + "---|" * (len(runs) + 1),
    ]

    def peak(summaries: dict[str, Summary], name: str) -> float | None:
        summary = summaries.get(name)
        if summary is None or summary.failed == summary.runs:
            return None
        return summary.peak_rss_median_bytes / MIB

    for name in names:
        peaks = [peak(summaries, name) for _, summaries in runs]
        first, last = peaks[0], peaks[-1]
        slope = (
            (last - first) / (long_s - short_s) if first is not None and last is not None and long_s > short_s else None
        )
        lines.append(
            f"| {name} | "
            + " | ".join("failed" if x is None else f"{x:.0f}" for x in peaks)
            + f" | {'n/a' if slope is None else f'{slope:.3f}'} |"
        )
    first, last = peak(short, cold), peak(long, cold)
    ratio = last / first if first and last is not None else None
    verdict = "n/a" if ratio is None or long_s <= short_s else ("PASS" if ratio <= RSS_LONGEST_VS_SHORTEST else "FAIL")
    lines += [
        "",
        f"{verdict} cold job peak RSS at {long_s:g} s <= {RSS_LONGEST_VS_SHORTEST:g}x at {short_s:g} s: "
        + ("n/a" if ratio is None else f"{ratio:.3f}x ({last:.0f} MiB / {first:.0f} MiB)"),
    ]
    return "\n".join(lines)


JOB_STAGES = ("download", "model_wait", "decode", "separate", "encode_upload")


def cold_phases(log_text: str, wall_s: float, ended: float) -> dict[str, float] | None:
    """A cold runner's seconds per phase, from the `timeline {json}` line it logs as it exits (function/logs.py):
    interpreter start and imports, settings and logging, clients, claim and bookkeeping, the job's own stages, and
    exit (its last mark to `ended`, the epoch at which it was seen to end). None when the log has no such line."""
    line = next((raw for raw in reversed(log_text.splitlines()) if "timeline {" in raw), None)
    if line is None:
        return None
    timeline = json.loads(line.split("timeline ", 1)[1])
    marks = dict(timeline["marks"])
    if not timeline["jobs"] or not {"imports", "settings", "clients", "message"} <= set(marks):
        return None
    job = timeline["jobs"][0]
    start = timeline["process_start"] or (ended - wall_s)
    phases = {
        "interpreter_and_imports": marks["imports"] - start,
        "settings_and_logging": marks["settings"] - marks["imports"],
        "clients": marks["clients"] - marks["settings"],
        "claim_and_bookkeeping": marks["message"] - marks["clients"] - job["total"],
    }
    phases |= {stage: job.get(stage, 0.0) for stage in JOB_STAGES}
    phases["job_other"] = job["total"] - sum(job.get(stage, 0.0) for stage in JOB_STAGES)
    phases["exit"] = ended - marks["message"]
    return phases


def warm_phases(sample: dict[str, Any]) -> dict[str, float] | None:
    """A warm job's seconds per phase: its stages as `handle` timed them, the rest of the wall time as claim and
    bookkeeping."""
    stages = (sample.get("detail") or {}).get("stages")
    if not stages:
        return None
    phases = {stage: stages.get(stage, 0.0) for stage in JOB_STAGES}
    phases["job_other"] = stages["total"] - sum(phases.values())
    phases["claim_and_bookkeeping"] = sample["wall_s"] - stages["total"]
    return phases


def cold_gap(samples: list[dict[str, Any]], suffix: str = "") -> str:
    """Where the cold job's extra seconds over the warm job go: the median of each phase in both, side by side."""
    cold = [
        s["detail"]["phases"]
        for s in samples
        if s["scenario"] == f"stemworker_cold{suffix}" and s.get("ok") and (s.get("detail") or {}).get("phases")
    ]
    warm = [
        phases
        for s in samples
        if s["scenario"] == f"stemworker_warm{suffix}" and s.get("ok") and (phases := warm_phases(s)) is not None
    ]
    if not cold or not warm:
        return ""
    lines = [
        f"Cold - warm by phase{' [' + suffix.lstrip('@') + ']' if suffix else ''} (medians of {len(cold)} cold and "
        f"{len(warm)} warm runs; the cold runner's `timeline` line, the warm job's own stage timings):",
        "",
        "| phase | cold s | warm s | cold - warm s |",
        "|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*cold[0], *warm[0]]))
    for name in names:
        c = statistics.median(p.get(name, 0.0) for p in cold)
        w = statistics.median(p.get(name, 0.0) for p in warm)
        lines.append(f"| {name} | {c:.2f} | {w:.2f} | {c - w:+.2f} |")
    return "\n".join(lines) + "\n"
