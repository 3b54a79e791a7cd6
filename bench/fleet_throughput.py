"""Fleet throughput: a burst of songs pushed at once, run by KEDA-style pods (the local ScaledJob emulator) against
the seed-style worker processing the same songs one after another; and drain mode (MAX_MESSAGES) for deep queues.

    python bench/fleet_throughput.py [--songs 8] [--seconds 60] [--max-replicas 2] [--pod-threads 1]
                                     [--seed-threads 2] [--polling-interval 1] [--out bench/out/fleet]
    python bench/fleet_throughput.py --drain [--songs 6] [--seconds 30]

Fleet (the default): SONGS songs of SECONDS s are uploaded and pushed on `toWorker` at once, then
- stemworker: `python -m workbench.emulator --max-replicas N` with the manifests in keda/ (one Job per message,
  `python -m function.runner` per pod, MAX_MESSAGES 1 as deployed), DEMUCS_THREADS=POD_THREADS in every pod;
- seed-style: the same songs pushed again, `bench/seed_worker.py --max-messages SONGS` (the CLI per song),
  its torch using SEED_THREADS threads.
Each side is one process tree measured from outside (wall from the push to the end, CPU seconds of every process
it waited for: pods, reaper runs, CLI runs). Songs per core-hour = 3600 / CPU seconds per song. The target:
stemworker >= 1.5 x the seed-style worker in songs per core-hour.

Drain (`--drain`): SONGS songs through the emulator with one replica, once with MAX_MESSAGES=1 (a cold pod per
song) and once with MAX_MESSAGES=SONGS (one pod takes them all).

The emulator's pollingInterval is POLLING_INTERVAL (default 1 s, not the manifest's 30 s) so that pod turnover
measures the worker, not the poll; each Job still waits for the next poll.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from bench.measure import Sample, run_tree  # noqa: E402

TARGET_RATIO = 1.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drain", action="store_true", help="compare MAX_MESSAGES=1 with MAX_MESSAGES=SONGS")
    parser.add_argument("--songs", type=int, default=None, help="songs in the burst (8; --drain: 6)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each song (60; --drain: 30)")
    parser.add_argument("--max-replicas", type=int, default=2, help="the ScaledJob's maxReplicaCount (fleet)")
    parser.add_argument("--pod-threads", type=int, default=1, help="DEMUCS_THREADS in every pod (fleet)")
    parser.add_argument("--seed-threads", type=int, default=2, help="torch threads of the seed-style worker's CLI")
    parser.add_argument("--polling-interval", type=float, default=1.0, help="the emulator's pollingInterval, s")
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--repo", type=Path, default=ROOT / ".models")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for the pods")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fleet")
    args = parser.parse_args(argv)
    args.songs = args.songs or (6 if args.drain else 8)
    args.seconds = args.seconds or (30.0 if args.drain else 60.0)
    return args


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bench = run.Bench(run.parse_args([
            "--seconds", f"{args.seconds:g}", "--repeat", "1", "--model", args.model, "--repo", str(args.repo),
            "--device", "cpu", "--out", str(args.out), "--scenarios", "stemworker_cold"]))

    def burst(self, label: str) -> list[str]:
        """Upload SONGS copies of the song and push their messages, all at once; returns the job ids."""
        ids = [f"{label}-{index}-{uuid.uuid4().hex[:6]}" for index in range(self.args.songs)]
        for job_id in ids:
            self.bench.upload(job_id)
        for job_id in ids:
            self.bench.push(job_id)
        return ids

    def emulator(self, label: str, extra: dict[str, str], max_replicas: int) -> Sample:
        """Push a burst and run it through the ScaledJob emulator until the queue is drained."""
        workdir = self.bench.work / label
        env = self.bench.env({"LOG_LEVEL": "INFO"})  # the emulator sees a claim in the pod's INFO line
        argv = [sys.executable, "-m", "workbench.emulator", "--manifests", str(ROOT / "keda"),
                "--max-replicas", str(max_replicas), "--polling-interval", f"{self.args.polling_interval:g}",
                "--workdir", str(workdir), "--summary-json", str(self.bench.work / f"{label}.json"),
                "--max-seconds", "7200"]
        for key, value in {**extra, **run.parse_pairs(",".join(self.args.env))}.items():
            argv += ["--env", f"{key}={value}"]
        ids = self.burst(label)
        sample = run_tree(label, argv, env=env, cwd=ROOT, log=self.bench.work / f"{label}.log")
        return self.checked(sample, ids, self.bench.work / f"{label}.json")

    def seed_style(self) -> Sample:
        ids = self.burst("seed")
        threads = str(self.args.seed_threads)
        env = self.bench.env({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        argv = [sys.executable, str(ROOT / "bench" / "seed_worker.py"), "--max-messages", str(self.args.songs)]
        sample = run_tree("seed", argv, env=env, cwd=ROOT, log=self.bench.work / "seed.log")
        return self.checked(sample, ids)

    def checked(self, sample: Sample, ids: list[str], summary: Path | None = None) -> Sample:
        done = sum(self.bench.stems_uploaded(job_id) for job_id in ids)
        sample.ok = sample.ok and done == len(ids)
        sample.detail["songs_done"] = done
        if summary is not None and summary.exists():
            sample.detail["emulator"] = json.loads(summary.read_text())
        print(f"{sample.scenario}: {sample.wall_s:.1f} s wall, {sample.cpu_s:.1f} CPU s, {done}/{len(ids)} songs, "
              f"peak {sample.peak_rss_bytes / 2**20:.0f} MiB", file=sys.stderr, flush=True)
        return sample


def figures(sample: Sample, songs: int) -> dict[str, float]:
    cpu_per_song = sample.cpu_s / songs
    return {"wall_s": sample.wall_s, "cpu_s": sample.cpu_s, "cpu_s_per_song": cpu_per_song,
            "songs_per_core_hour": 3600 / cpu_per_song, "songs_per_hour": 3600 * songs / sample.wall_s,
            "peak_rss_mib": sample.peak_rss_bytes / 2**20, "ok": sample.ok}


def table(rows: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| run | wall s | CPU s | CPU s per song | songs per core-hour | songs per hour (wall) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for name, f in rows.items():
        failed = "" if f["ok"] else " (FAILED)"
        lines.append(f"| {name}{failed} | {f['wall_s']:.1f} | {f['cpu_s']:.1f} | {f['cpu_s_per_song']:.1f} | "
                     f"{f['songs_per_core_hour']:.1f} | {f['songs_per_hour']:.1f} | {f['peak_rss_mib']:.0f} |")
    return lines


def fleet_target(rows: dict[str, dict[str, float]]) -> tuple[str, bool]:
    ours, seed = rows["stemworker"], rows["seed_style"]
    ratio = ours["songs_per_core_hour"] / seed["songs_per_core_hour"]
    ok = ours["ok"] and seed["ok"] and ratio >= TARGET_RATIO
    return (f"fleet: stemworker songs per core-hour >= {TARGET_RATIO} x seed-style worker: {ratio:.3f}x "
            f"({ours['songs_per_core_hour']:.1f} vs {seed['songs_per_core_hour']:.1f})", ok)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fleet = Fleet(args)
    completed = False
    rows: dict[str, dict[str, float]] = {}
    try:
        fleet.bench.prepare()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if args.drain:
            rows["MAX_MESSAGES=1, a cold pod per song"] = figures(
                fleet.emulator("drain-1", {"MAX_MESSAGES": "1"}, 1), args.songs)
            rows[f"MAX_MESSAGES={args.songs}, one pod"] = figures(
                fleet.emulator("drain-all", {"MAX_MESSAGES": str(args.songs)}, 1), args.songs)
            head = (f"Drain mode: {args.songs} songs of {args.seconds:g} s queued at once, one replica, "
                    f"{args.model}, pollingInterval {args.polling_interval:g} s, started {started}.")
            verdict: list[str] = []
        else:
            rows["stemworker"] = figures(fleet.emulator(
                "fleet", {"DEMUCS_THREADS": str(args.pod_threads)}, args.max_replicas), args.songs)
            rows["seed_style"] = figures(fleet.seed_style(), args.songs)
            head = (f"Fleet: {args.songs} songs of {args.seconds:g} s pushed at once, {args.model}; stemworker: "
                    f"ScaledJob emulator, maxReplicaCount {args.max_replicas}, DEMUCS_THREADS={args.pod_threads} "
                    f"per pod, pollingInterval {args.polling_interval:g} s; seed-style: serial, "
                    f"{args.seed_threads} threads; {len(os.sched_getaffinity(0))} CPUs; started {started}.")
            text, ok = fleet_target(rows)
            verdict = ["", "```", f"{'PASS' if ok else 'FAIL'}: {text}", "```"]
        output = "\n".join([head, "", *table(rows), *verdict]) + "\n"
        args.out.mkdir(parents=True, exist_ok=True)
        name = "drain" if args.drain else "fleet"
        (args.out / f"{name}.md").write_text(output)
        (args.out / f"{name}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                           "rows": rows}, indent=2))
        print(output)
        completed = all(row["ok"] for row in rows.values())
    finally:
        fleet.bench.close(keep_logs=not completed)
    return 0 if completed else 1


def result_lines(out: Path) -> list[tuple[str, bool]]:
    """The fleet target as run.py prints it, from a finished run's fleet.json."""
    data: dict[str, Any] = json.loads((out / "fleet.json").read_text())
    return [fleet_target(data["rows"])]


if __name__ == "__main__":
    raise SystemExit(main())
