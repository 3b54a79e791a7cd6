"""Benchmark: stemworker beside the bare DEMUCS CLI and a seed-style worker, in one run, on one song.

    python -m bench.run [--seconds 30[,120,300]] [--repeat 3] [--device auto|cpu|cuda] [--model htdemucs]
                        [--variant NAME:KEY=VALUE,...] [--json PATH] [--out bench/out]

Scenarios (each run --repeat times, in an order that rotates every repeat):
- inference:        `demucs.api.Separator.separate_tensor` on the already decoded song (the floor), in a process
                    of its own with stock settings (MALLOC_REUSE=off, FROZEN_MODELS=off): demucs as it comes
- stemworker_warm:  a whole job through the in-process job runner (`function.runner.Runner.run_once`) in a
                    process that already holds the model: push, claim, download, decode, separate, encode,
                    upload, status, log, against real Redis and S3 on loopback
- stemworker_cold:  `python -m function.runner --max-messages 1` in a new process: the same job plus the
                    interpreter start, imports and model load
- cli:              `python -m demucs.separate --mp3 --repo REPO -n MODEL` on the same file
- seed_style:       bench.seed_worker: pop, fget_object, the CLI through os.system, fput_object per stem
Then a warm runner blocked in BLMOVE on an empty queue gets a message; the seconds from the push to the
job's status `separating` are the claim latency.

The model is the full architecture of MODEL with seeded random weights (workbench/model_repo.py), cached in
--repo; the song is generated (workbench/sample_song.py). Redis and S3 are real servers started on loopback.
A `--variant` adds a warm and a cold stemworker scenario run with extra environment variables, so a lever
(e.g. `--variant bf16:DEMUCS_PRECISION=bf16`) is measured side by side with the default.
Outputs: a Markdown table (stdout and OUT/results.md), OUT/results.json (or --json), OUT/results.png.
Several `--seconds` (comma-separated) run the whole benchmark once per length, each in OUT/<S>s/, and end with
the peak RSS target at every length, a table of peak RSS per length (also OUT/rss_by_length.md) and the
PASS/FAIL line of issue 23's target: the cold job's peak RSS at the longest length <= 1.25x at the shortest
(`--scenarios stemworker_cold --repeat 1` measures just that).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import report
from bench.measure import Sample, run_tree
from function import frozen_models
from stemops import render
from workbench import model_repo, sample_song
from workbench.local_services import LocalServices

ROOT = Path(__file__).resolve().parents[1]

SCENARIOS = ("inference", "stemworker_warm", "stemworker_cold", "cli", "seed_style")
STEMS = ("bass", "drums", "other", "vocals")
QUEUE_KEY = "toWorker"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    parser.add_argument(
        "--seconds",
        default=env("BENCH_SECONDS", "30"),
        help="length of the generated song; a comma list runs once per length (env BENCH_SECONDS)",
    )
    parser.add_argument("--repeat", type=int, default=int(env("BENCH_REPEAT", "3")), help="runs per scenario")
    parser.add_argument("--model", default=env("BENCH_MODEL", "htdemucs"), choices=sorted(model_repo.MODELS))
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path(env("BENCH_REPO", str(ROOT / ".models"))),
        help="local DEMUCS repo; the model is generated there once",
    )
    parser.add_argument("--device", default=env("BENCH_DEVICE", "auto"), help="auto, cpu or cuda")
    parser.add_argument("--shifts", type=int, default=1, help="DEMUCS shifts for every scenario (CLI default 1)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list, from " + ", ".join(SCENARIOS))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="also run stemworker warm and cold with these extra environment variables",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every stemworker scenario",
    )
    parser.add_argument("--latency-runs", type=int, default=None, help="claim latency runs (default --repeat)")
    parser.add_argument("--out", type=Path, default=Path(env("BENCH_OUT", str(ROOT / "bench" / "out"))))
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default OUT/results.json)")
    parser.add_argument("--no-png", action="store_true", help="skip the matplotlib chart")
    parser.add_argument("--machine", default=env("BENCH_MACHINE"), help="machine description for the table")
    args = parser.parse_args(argv)
    try:
        args.lengths = [float(part) for part in str(args.seconds).split(",") if part.strip()]
    except ValueError:
        parser.error(f"--seconds takes seconds or a comma list of them, got {args.seconds!r}")
    if not args.lengths or min(args.lengths) <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds!r}")
    args.seconds = args.lengths[0]
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}")
    return args


def safe_id(text: str) -> str:
    """`text` with every character a job id may not hold replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)


def parse_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} CPUs"
    if device.startswith("cuda"):
        import torch

        text += f", {torch.cuda.get_device_name(0)}"
    return text


class WarmProcess:
    """bench.warm in a child process, spoken to over stdin/stdout."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.warm"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                return json.loads(line[6:])
        raise RuntimeError(f"warm process exited with {self.proc.wait()}; see {self._log.name}")

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"warm process: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError):
                self.ask(op="quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


class Bench:
    """One benchmark run: services, song, model repo, warm processes, and the samples collected."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.summaries: dict[str, report.Summary] = {}
        self.device = resolve_device(args.device)
        self.out: Path = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="bench-", dir=self.out))
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[dict[str, Any]] = []
        self.services = LocalServices(workdir=self.work / "services")
        self.services.workdir.mkdir()
        self.warm: dict[str, WarmProcess] = {}
        self.floor: WarmProcess | None = None
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.variants = {"": {}} | {
            f"@{name}": parse_pairs(pairs) for name, _, pairs in (v.partition(":") for v in args.variant)
        }

    # ----- setup
    def prepare(self) -> None:
        model_repo.write_model(self.args.repo, self.args.model)
        if not frozen_models.is_current(self.args.model, self.args.repo):
            frozen_models.freeze(self.args.model, self.args.repo)  # as the image build does (Dockerfile)
        self.song = self.out / f"song-{self.args.seconds:g}s.mp3"
        if not self.song.exists():
            self.song.write_bytes(sample_song.song_mp3(self.args.seconds))
        self.warmup_song = self.out / "song-8s.mp3"
        if not self.warmup_song.exists():
            self.warmup_song.write_bytes(sample_song.song_mp3(8.0))
        self.services.start()
        from minio import Minio

        env = self.services.env()
        self.s3 = Minio(
            env["MINIO_ENDPOINT"], access_key=env["MINIO_ACCESS_KEY"], secret_key=env["MINIO_SECRET_KEY"], secure=False
        )
        for bucket in ("bench-in", "bench-out"):
            if not self.s3.bucket_exists(bucket):
                self.s3.make_bucket(bucket)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            **os.environ,
            **self.services.env(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "QUEUE_KEY": QUEUE_KEY,
            "INPUT_BUCKET": "bench-in",
            "OUTPUT_BUCKET": "bench-out",
            "DEMUCS_MODEL": self.args.model,
            "DEMUCS_REPO": str(self.args.repo.resolve()),
            "DEMUCS_DEVICE": self.device,
            "DEMUCS_SHIFTS": str(self.args.shifts),
            "CLAIM_WAIT_S": "5",
            "LOG_LEVEL": "INFO",  # the default: the cold runner's `timeline` line gives its phases
            "RESULT_CACHE": "off",  # every job here uploads the same song: each must be separated, not served
        }
        base.update(parse_pairs(",".join(self.args.env)))
        base.update(extra or {})
        return base

    def upload(self, job_id: str, song: Path | None = None) -> None:
        data = (song or self.song).read_bytes()
        self.s3.put_object("bench-in", f"{job_id}.mp3", io.BytesIO(data), len(data), content_type="audio/mpeg")

    def stems_uploaded(self, job_id: str) -> bool:
        try:
            return all(self.s3.stat_object("bench-out", f"{job_id}-{stem}.mp3").size for stem in STEMS)
        except Exception:  # a missing stem is a failed run, whatever the client raises
            return False

    def push(self, job_id: str) -> None:
        import redis

        client = redis.Redis.from_url(self.services.env()["REDIS_URL"])
        client.rpush(QUEUE_KEY, json.dumps({"songhash": job_id}))
        client.close()

    def start_warm(self) -> None:
        if "inference" in self.args.scenarios:
            # The floor is stock demucs: the model built from its weights and glibc's default allocator, in a
            # process of its own, so that the worker's own levers (MALLOC_REUSE, frozen models) do not speed it up.
            self.floor = WarmProcess(self.env({"MALLOC_REUSE": "off", "FROZEN_MODELS": "off"}), self.work / "floor.log")
            self.floor.ask(op="inference", song=str(self.warmup_song))  # untimed: a process that has run it once
        for suffix, extra in self.variants.items():
            if suffix and "stemworker_warm" not in self.args.scenarios:
                continue
            if not suffix and "stemworker_warm" not in self.args.scenarios and not self.args.latency_runs:
                continue
            warm = WarmProcess(self.env(extra), self.work / f"warm{suffix}.log")
            # One untimed job and one untimed inference first: a worker that has served a job before.
            warmup_id = f"warmup{safe_id(suffix)}-{uuid.uuid4().hex[:6]}"
            self.upload(warmup_id, self.warmup_song)
            if not warm.ask(op="job", id=warmup_id)["ok"]:
                raise RuntimeError(f"the warm-up job of warm process{suffix} failed; see {warm.log_path}")
            warm.ask(op="inference", song=str(self.warmup_song))
            self.warm[suffix] = warm
            print(
                f"warm process{suffix or ''} ready: model load {warm.hello['load_s']:.2f} s, "
                f"{warm.hello['threads']} threads",
                file=sys.stderr,
            )

    # ----- scenarios
    def run_scenario(self, name: str, suffix: str, index: int) -> Sample | dict[str, Any]:
        label = name + suffix
        job_id = f"{safe_id(label)}-{index}-{uuid.uuid4().hex[:6]}"
        if name == "inference":
            assert self.floor is not None  # started by start_warm whenever the inference scenario runs
            return self.floor.ask(op="inference", song=str(self.song))
        if name == "stemworker_warm":
            self.upload(job_id)
            answer = self.warm[suffix].ask(op="job", id=job_id)
            answer["scenario"] = label
            answer["ok"] = answer["ok"] and self.stems_uploaded(job_id)
            return answer
        if name == "stemworker_cold":
            self.upload(job_id)
            self.push(job_id)
            argv = [sys.executable, "-m", "function.runner", "--max-messages", "1"]
            log = self.work / f"cold-{safe_id(label)}-{index}.log"
            sample = run_tree(label, argv, env=self.env(self.variants[suffix]), cwd=ROOT, log=log)
            sample.detail["phases"] = report.cold_phases(log.read_text(errors="replace"), sample.wall_s, time.time())
        elif name == "cli":
            dest = self.work / f"cli-{index}"
            argv = [
                sys.executable,
                "-m",
                "demucs.separate",
                "--mp3",
                "--repo",
                str(self.args.repo.resolve()),
                "-n",
                self.args.model,
                "-d",
                self.device,
                "--shifts",
                str(self.args.shifts),
                "--out",
                str(dest),
                str(self.song),
            ]
            sample = run_tree(label, argv, env=self.env(), cwd=ROOT, log=self.work / "cli.log")
            sample.ok = sample.ok and len(list(dest.rglob("*.mp3"))) == len(STEMS)
            shutil.rmtree(dest, ignore_errors=True)
            return sample
        else:  # seed_style
            self.upload(job_id)
            self.push(job_id)
            argv = [sys.executable, "-m", "bench.seed_worker", "--max-messages", "1"]
            sample = run_tree(label, argv, env=self.env(), cwd=ROOT, log=self.work / "seed.log")
        sample.ok = sample.ok and self.stems_uploaded(job_id)
        return sample

    def plan(self) -> list[tuple[str, str]]:
        plan = [(name, "") for name in self.args.scenarios]
        for suffix in self.variants:
            if suffix:
                plan += [
                    (name, suffix) for name in ("stemworker_warm", "stemworker_cold") if name in self.args.scenarios
                ]
        return plan

    def run(self) -> None:
        plan = self.plan()
        for index in range(self.args.repeat):
            shift = index % len(plan)
            for name, suffix in plan[shift:] + plan[:shift]:
                result = self.run_scenario(name, suffix, index)
                record = result.to_dict() if isinstance(result, Sample) else result
                record["repeat"] = index
                self.samples.append(record)
                print(
                    f"[{index + 1}/{self.args.repeat}] {record['scenario']:<24} {record['wall_s']:8.2f} s  "
                    f"cpu {record['cpu_s']:7.1f} s  peak {record['peak_rss_bytes'] / report.MIB:7.0f} MiB  "
                    f"{'ok' if record['ok'] else 'FAILED'}",
                    file=sys.stderr,
                    flush=True,
                )
        runs = self.args.repeat if self.args.latency_runs is None else self.args.latency_runs
        if "" in self.warm:
            for index in range(runs):
                job_id = f"latency-{index}-{uuid.uuid4().hex[:6]}"
                self.upload(job_id)
                answer = self.warm[""].ask(op="latency", id=job_id)
                self.latencies.append(answer)
                latency, polled = (render.seconds(answer[name], 3) for name in ("latency_s", "polled_latency_s"))
                print(f"claim latency: {latency} (polled {polled})", file=sys.stderr, flush=True)

    def finish(self) -> str:
        audio_s = self.args.seconds
        inference = [s for s in self.samples if s["scenario"] == "inference"]
        if inference:
            audio_s = inference[0]["audio_s"]
        if self.warm:
            threads = next(iter(self.warm.values())).hello["threads"]
        else:
            from function.separation import cpu_threads

            threads = cpu_threads()
        meta = {
            "audio_s": audio_s,
            "model": self.args.model,
            "weights": f"full {self.args.model} architecture, seeded random weights (not the pretrained ones)",
            "device": self.device,
            "threads": threads,
            "repeat": self.args.repeat,
            "shifts": self.args.shifts,
            "machine": self.args.machine or machine(self.device),
            "variants": {k: v for k, v in self.variants.items() if k},
            "env": parse_pairs(",".join(self.args.env)),
            "started_at": self.started_at,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }
        summaries = report.summarize(self.samples, audio_s)
        self.summaries = summaries
        latencies = [x["latency_s"] for x in self.latencies if x.get("latency_s") is not None]
        suffixes = list(self.variants)
        text = report.markdown(summaries, meta, latencies, suffixes)
        gaps = [table for suffix in suffixes if (table := report.cold_gap(self.samples, suffix))]
        text += "".join("\n" + table for table in gaps)
        (self.out / "results.md").write_text(text)
        report.write_json(
            self.args.json or self.out / "results.json", self.samples, summaries, meta, self.latencies, suffixes
        )
        if not self.args.no_png:
            report.write_png(self.out / "results.png", summaries, meta)
        return text

    def close(self, keep_logs: bool = False) -> None:
        for warm in [*self.warm.values(), *([self.floor] if self.floor else [])]:
            warm.close()
        self.services.stop()
        if keep_logs:
            print(f"logs kept in {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def run_one(args: argparse.Namespace) -> tuple[int, str, dict[str, report.Summary]]:
    """The whole benchmark at one song length; (exit code, its Markdown, its summaries)."""
    bench = Bench(args)
    completed = False
    text = ""
    try:
        bench.prepare()
        bench.start_warm()
        bench.run()
        text = bench.finish()
        print(text)
        completed = True
    finally:
        failed = [s for s in bench.samples if not s.get("ok")]
        bench.close(keep_logs=bool(failed) or not completed)
    return (1 if failed else 0), text, bench.summaries


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    codes, verdicts, by_length = [], [], []
    for seconds in args.lengths:
        one = argparse.Namespace(**vars(args))
        one.seconds = seconds
        if len(args.lengths) > 1:
            one.out = args.out / f"{seconds:g}s"
            one.json = None
        code, text, summaries = run_one(one)
        codes.append(code)
        by_length.append((seconds, summaries))
        verdicts += [line for line in text.splitlines() if line.startswith(("PASS", "FAIL")) and "peak RSS" in line]
    if len(args.lengths) > 1:
        print("Peak RSS at every length:\n```\n" + "\n".join(verdicts) + "\n```")
        table = report.rss_by_length(by_length)
        (args.out / "rss_by_length.md").write_text(table + "\n")
        print("\nPeak RSS per song length (median of the runs):\n\n" + table)
    return max(codes)


if __name__ == "__main__":
    raise SystemExit(main())
