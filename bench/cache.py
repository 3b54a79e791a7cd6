"""Benchmark of the result cache: a repeated song against its first separation, the stems' bytes, and what a
miss costs with the cache on against the cache off; in one run, on one runner process, side by side.

    python -m bench.cache [--seconds 30] [--repeat 3] [--model htdemucs] [--device auto] [--shifts 1]
                          [--out bench/out]

One process holds two in-process job runners (`function.runner.Runner`) sharing one loaded model: one with the
result cache on (the default), one with RESULT_CACHE=off. Each repeat takes a new generated song (its own
seed, so no repeat hits an earlier one) and times three whole jobs, push to done, against real Redis and S3 on
loopback, the first two in an order that alternates between repeats:
- miss: cache on, first sight of the song: download + SHA-256, lookup, lock, separate, encode, upload, record;
- off:  cache off, the same song: the baseline the miss is compared with;
- hit:  cache on, the same song under another job id: lookup, stat of the recorded stems, server-side copies.
The cache's own work inside each miss (lookup and lock, record, release, and hashing the input) is timed too.

Targets, each printed PASS or FAIL:
- a repeated song completes in <= 0.05x the time of its first separation (median hit / median miss);
- its stems are byte-identical to the first run's, and so are the stems of the second, cache-off separation
  of the same song (the separation is seeded from the input's digest);
- a miss costs <= 1% more than with the cache off: end to end, and as the cache's own measured work over the
  miss's time. End to end, the second of two back-to-back separations of a song runs a few percent slower
  whichever runner it is, so the ratio is order-balanced: the median miss/off ratio of the songs run off-first
  and that of the songs run miss-first, combined by their geometric mean (the order effect, the square root
  of their quotient, cancels and is printed beside it). Use an even `--repeat`.
The model is the full MODEL architecture with seeded random weights (workbench/model_repo.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.run import machine, resolve_device
from workbench import model_repo, sample_song
from workbench.local_services import LocalServices

ROOT = Path(__file__).resolve().parents[1]

HIT_RATIO_MAX = 0.05
MISS_OVERHEAD_MAX = 0.01


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(env("BENCH_SECONDS", "30")),
        help="length of the generated song (env BENCH_SECONDS)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(env("BENCH_REPEAT", "4")),
        help="songs, each run 3 ways; even, so half run off-first and half miss-first",
    )
    parser.add_argument("--model", default=env("BENCH_MODEL", "htdemucs"), choices=sorted(model_repo.MODELS))
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path(env("BENCH_REPO", str(ROOT / ".models"))),
        help="local DEMUCS repo; the model is generated there once",
    )
    parser.add_argument("--device", default=env("BENCH_DEVICE", "auto"), help="auto, cpu or cuda")
    parser.add_argument("--shifts", type=int, default=1, help="DEMUCS shifts (the worker's default, 1)")
    parser.add_argument("--out", type=Path, default=Path(env("BENCH_OUT", str(ROOT / "bench" / "out"))))
    parser.add_argument(
        "--report",
        type=Path,
        help="print the report of a saved cache.json again, with that run's own flags; nothing is run",
    )
    return parser.parse_args(argv)


class CacheClock:
    """Adds up the seconds the cache-on worker spends in the cache's own calls, per job."""

    def __init__(self, worker: Any) -> None:
        from function.cache import Flight

        self.seconds = 0.0
        cache = worker.cache
        begin, record = cache.begin, cache.record

        def timed(call: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                tick = time.perf_counter()
                try:
                    return call(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - tick

            return wrapper

        cache.begin, cache.record = timed(begin), timed(record)
        close = Flight.close
        clock = self

        def timed_close(flight: Flight) -> None:
            tick = time.perf_counter()
            try:
                close(flight)
            finally:
                if flight.key is not None:
                    clock.seconds += time.perf_counter() - tick

        Flight.close = timed_close  # type: ignore[method-assign]

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class CacheBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = resolve_device(args.device)
        self.out: Path = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.services: LocalServices | None = None
        self.rows: list[dict[str, Any]] = []
        self.identical: list[dict[str, bool]] = []

    def start(self) -> None:
        model_repo.write_model(self.args.repo, self.args.model)
        self.services = LocalServices(workdir=Path(tempfile.mkdtemp(prefix="bench-cache-")))
        self.services.start()
        env = {k.lower(): v for k, v in self.services.env().items()}
        from function.config import load_settings
        from function.runner import Runner

        common = dict(
            env,
            input_bucket="cache-in",
            output_bucket="cache-out",
            demucs_model=self.args.model,
            demucs_repo=str(self.args.repo.resolve()),
            demucs_device=self.device,
            demucs_shifts=self.args.shifts,
            log_level="WARNING",
        )
        self.on = Runner(load_settings(**common))
        self.off = Runner(load_settings(**common, result_cache=False))
        self.clock = CacheClock(self.on.worker)
        self.s3 = self.on.worker.store
        self.s3.ensure_bucket("cache-in")
        from function.separation import get_separator

        tick = time.perf_counter()
        get_separator(self.args.model, self.on.settings)
        print(f"model {self.args.model} loaded in {time.perf_counter() - tick:.1f} s", file=sys.stderr, flush=True)
        # An untimed job on each runner first: clients connected, the model's file digests taken, buckets made.
        warmup = sample_song.song_mp3(8.0, seed=99)
        for runner in (self.on, self.off):
            self.job(runner, f"warmup-{uuid.uuid4().hex[:6]}", warmup)
        self.clock.take()

    def job(self, runner: Any, job_id: str, song: bytes) -> dict[str, Any]:
        from function.runner import Outcome

        self.s3.put_bytes("cache-in", f"{job_id}.mp3", song, "audio/mpeg")
        wall, cpu = time.perf_counter(), time.process_time()
        runner.queue.client.rpush(runner.settings.queue_key, json.dumps({"songhash": job_id}))
        result = runner.run_once(wait_s=5)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if result.outcome != Outcome.DONE:
            raise RuntimeError(f"job {job_id}: {result.outcome} {result.error}")
        status = runner.worker.status_for(job_id).read()
        return {
            "id": job_id,
            "wall_s": wall,
            "cpu_s": cpu,
            "cached": status.get("cached") == "1",
            "outputs": json.loads(status["outputs"]),
        }

    def stems(self, outputs: dict[str, dict[str, str]]) -> dict[str, bytes]:
        client = self.s3._client
        return {stem: client.get_object(w["bucket"], w["key"]).read() for stem, w in sorted(outputs.items())}

    def run(self) -> None:
        for index in range(self.args.repeat):
            song = sample_song.song_mp3(self.args.seconds, seed=1000 + index)
            tag = uuid.uuid4().hex[:6]
            order = ["off", "miss"] if index % 2 == 0 else ["miss", "off"]
            jobs: dict[str, dict[str, Any]] = {}
            for name in [*order, "hit"]:
                runner = self.off if name == "off" else self.on
                self.clock.take()
                jobs[name] = self.job(runner, f"{name}-{index}-{tag}", song)
                jobs[name]["cache_s"] = self.clock.take()
                print(
                    f"[{index + 1}/{self.args.repeat}] {name:<5} {jobs[name]['wall_s']:8.2f} s  "
                    f"cpu {jobs[name]['cpu_s']:7.1f} s  cached={jobs[name]['cached']}",
                    file=sys.stderr,
                    flush=True,
                )
            tick = time.perf_counter()
            for _ in range(5):
                hashlib.sha256(song).digest()
            sha_s = (time.perf_counter() - tick) / 5
            miss, off, hit = jobs["miss"], jobs["off"], jobs["hit"]
            first = self.stems(miss["outputs"])
            self.identical.append(
                {"hit": self.stems(hit["outputs"]) == first, "off": self.stems(off["outputs"]) == first}
            )
            self.rows.append(
                {
                    "repeat": index + 1,
                    "order": order,
                    "song_bytes": len(song),
                    "miss_s": miss["wall_s"],
                    "off_s": off["wall_s"],
                    "hit_s": hit["wall_s"],
                    "miss_cpu_s": miss["cpu_s"],
                    "off_cpu_s": off["cpu_s"],
                    "hit_cpu_s": hit["cpu_s"],
                    "hit_cached": hit["cached"],
                    "miss_cached": miss["cached"],
                    "cache_work_s": miss["cache_s"] + sha_s,
                    "sha256_s": sha_s,
                }
            )

    def report(self) -> tuple[str, bool]:
        rows = self.rows
        med = {
            name: statistics.median(r[name] for r in rows)
            for name in ("miss_s", "off_s", "hit_s", "miss_cpu_s", "off_cpu_s", "cache_work_s")
        }
        hit_ratio = med["hit_s"] / med["miss_s"]
        pair_ratio, order_effect = balanced_ratio(rows, "miss_s", "off_s")
        cpu_ratio, _ = balanced_ratio(rows, "miss_cpu_s", "off_cpu_s")
        work_share = statistics.median(r["cache_work_s"] / r["miss_s"] for r in rows)
        identical = all(i["hit"] and i["off"] for i in self.identical)
        flags_ok = all(r["hit_cached"] and not r["miss_cached"] for r in rows)
        checks = [
            (
                f"repeated song <= {HIT_RATIO_MAX:g}x its first separation (median hit / median miss)",
                f"{hit_ratio:.4f}x",
                hit_ratio <= HIT_RATIO_MAX and flags_ok,
            ),
            (
                "stems byte-identical: hit = first run, and a second separation (cache off) = first run",
                f"{sum(i['hit'] for i in self.identical)}/{len(rows)} and {sum(i['off'] for i in self.identical)}/"
                f"{len(rows)}",
                identical,
            ),
            (
                f"miss <= {1 + MISS_OVERHEAD_MAX:g}x cache off, end to end (order-balanced miss/off, wall)",
                f"{pair_ratio:.4f}x (cpu {cpu_ratio:.4f}x; second run of a pair {order_effect:.3f}x the first)",
                pair_ratio <= 1 + MISS_OVERHEAD_MAX,
            ),
            (
                f"cache work inside a miss <= {MISS_OVERHEAD_MAX:.0%} of it (sha256 + lookup/lock + record + release)",
                f"{med['cache_work_s'] * 1000:.1f} ms = {work_share:.4%}",
                work_share <= MISS_OVERHEAD_MAX,
            ),
        ]
        lines = [
            f"result cache: {self.args.model} (full architecture, seeded random weights), "
            f"{self.args.seconds:g} s generated song, shifts {self.args.shifts}, {self.device}, "
            f"{len(rows)} songs; {machine(self.device)}",
            "",
            "| song | order | miss s | off s | hit s | hit/miss | miss/off | miss cpu/off cpu | cache work ms |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['repeat']} | {', '.join(r['order'])}, hit | {r['miss_s']:.2f} | {r['off_s']:.2f} | "
                f"{r['hit_s']:.3f} | {r['hit_s'] / r['miss_s']:.4f} | {r['miss_s'] / r['off_s']:.4f} | "
                f"{r['miss_cpu_s'] / r['off_cpu_s']:.4f} | {r['cache_work_s'] * 1000:.1f} |"
            )
        lines.append(
            f"| median (miss/off: order-balanced) | | {med['miss_s']:.2f} | {med['off_s']:.2f} | "
            f"{med['hit_s']:.3f} | {hit_ratio:.4f} | {pair_ratio:.4f} | {cpu_ratio:.4f} | "
            f"{med['cache_work_s'] * 1000:.1f} |"
        )
        lines += ["", "| target | measured | result |", "|---|---:|---|"]
        lines += [f"| {what} | {value} | {'PASS' if ok else 'FAIL'} |" for what, value, ok in checks]
        return "\n".join(lines) + "\n", all(ok for _, _, ok in checks)

    def close(self) -> None:
        if self.services is not None:
            self.services.stop()


def balanced_ratio(rows: list[dict[str, Any]], top: str, bottom: str) -> tuple[float, float]:
    """(order-balanced median of top/bottom, order effect): the geometric mean of the median ratio among the
    songs run off-first and among those run miss-first, and how much slower the second run of a pair was."""
    groups = [[r[top] / r[bottom] for r in rows if r["order"][0] == first] for first in ("off", "miss")]
    if not all(groups):
        ratio = statistics.median(r[top] / r[bottom] for r in rows)
        return ratio, 1.0
    off_first, miss_first = (statistics.median(group) for group in groups)
    return math.sqrt(off_first * miss_first), math.sqrt(off_first / miss_first)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        bench = CacheBench(parse_args(saved["command"].split()[2:]))
        bench.rows, bench.identical = saved["rows"], saved["identical"]
        text, passed = bench.report()
        print(text)
        return 0 if passed else 1
    bench = CacheBench(args)
    try:
        bench.start()
        bench.run()
        text, passed = bench.report()
    finally:
        bench.close()
    print(text)
    command = " ".join(["python -m bench.cache", *sys.argv[1:]])
    (bench.out / "cache.md").write_text(f"`{command}`\n\n{text}")
    (bench.out / "cache.json").write_text(
        json.dumps({"command": command, "rows": bench.rows, "identical": bench.identical}, indent=2)
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
