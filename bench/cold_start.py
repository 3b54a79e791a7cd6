"""Cold-start breakdown: where the seconds of a cold job (`python -m function.runner --max-messages 1`, one pod's
life) go beyond the separation a warm worker does too.

    python -m bench.cold_start [--seconds 30] [--repeat 2] [--model htdemucs] [--out bench/out/cold-start]

Per repeat, against real Redis and S3 on loopback (the same song and model repo as bench.run):
- `python -c pass`: the bare interpreter;
- `python -X importtime -c "import function.runner"`: what the runner's imports cost, by top-level package;
- the cold job itself, whose runner logs its `timeline` line at INFO (logs.Timeline): process
  start -> runner imports done -> settings -> clients -> message handled (claim, download, model wait, decode,
  separate, encode+upload, as `handle` times them) -> exit (the last mark to the process's end, seen from here);
- a probe process (`--probe`): model load on its own, then the same streaming separation twice in one process,
  each chunk timed: the first pass's extra cost over the second is what a fresh process pays that a warm one
  does not. With `--warmup-seconds S` the probe first runs one forward pass on S seconds of silence and reports
  whether that shrinks the first pass by more than it costs.
Output: the breakdown table (stdout and OUT/cold_start.md) and every raw figure (OUT/cold_start.json).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import report, run
from bench.measure import run_tree

ROOT = Path(__file__).resolve().parents[1]

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")


def import_costs(stderr: str) -> dict[str, float]:
    """Seconds spent importing each top-level package (its modules' own import times summed, whoever imported
    them) in `python -X importtime` output."""
    costs: dict[str, float] = {}
    for match in IMPORT_LINE.finditer(stderr):
        top = match.group(3).split(".")[0]
        costs[top] = costs.get(top, 0.0) + int(match.group(1)) / 1e6
    return costs


def probe(args: argparse.Namespace) -> int:
    """In this fresh process: imports, model load, then the worker's streaming separation twice, chunks timed."""
    started = time.perf_counter()
    import torch

    from function import audio, separation
    from function.config import load_settings

    imports_s = time.perf_counter() - started
    settings = load_settings(
        demucs_model=args.model, demucs_repo=args.repo, demucs_device="cpu", demucs_precision=args.precision
    )
    tick = time.perf_counter()
    separator = separation.get_separator(args.model, settings)
    load_s = time.perf_counter() - tick
    tick = time.perf_counter()
    wav = audio.decode(Path(args.probe), separator.samplerate, separator.audio_channels, 1e9)
    decode_s = time.perf_counter() - tick
    warmup_s = None
    if args.warmup_seconds:
        silence = torch.zeros(separator.audio_channels, int(args.warmup_seconds * separator.samplerate))
        tick = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            separation.separate_to_files(separator, silence, 0, lambda p: None, Path(tmp))
        warmup_s = time.perf_counter() - tick
    passes = []
    for _ in range(2):
        ends: list[float] = []
        tick = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            separation.separate_to_files(
                separator,
                wav,
                settings.demucs_shifts,
                lambda p, ends=ends: ends.append(time.perf_counter()),
                Path(tmp),
                precision=settings.demucs_precision,
            )
        total = time.perf_counter() - tick
        chunks = [b - a for a, b in zip([tick, *ends[:-1]], ends, strict=True)]
        passes.append({"seconds": total, "chunks": chunks})
    print(
        "PROBE "
        + json.dumps(
            {
                "imports_s": imports_s,
                "load_s": load_s,
                "decode_s": decode_s,
                "warmup_s": warmup_s,
                "passes": passes,
                "threads": torch.get_num_threads(),
            }
        )
    )
    return 0


def cold_job(bench: run.Bench, index: int) -> dict[str, Any]:
    """One cold job with the runner's timeline logged; its phases in seconds."""
    job_id = f"cold-start-{index}-{uuid.uuid4().hex[:6]}"
    bench.upload(job_id)
    bench.push(job_id)
    log = bench.work / f"cold-{index}.log"
    env = bench.env()  # LOG_LEVEL INFO: the runner logs its timeline line
    sample = run_tree(
        "stemworker_cold", [sys.executable, "-m", "function.runner", "--max-messages", "1"], env=env, cwd=ROOT, log=log
    )
    ended = time.time()
    phases = report.cold_phases(log.read_text(errors="replace"), sample.wall_s, ended)
    if not sample.ok or phases is None or not bench.stems_uploaded(job_id):
        raise RuntimeError(f"cold job {job_id} failed (exit {sample.detail.get('returncode')}); see {log}")
    return {"wall_s": sample.wall_s, "cpu_s": sample.cpu_s, "peak_rss_bytes": sample.peak_rss_bytes, **phases}


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--repo", type=Path, default=ROOT / ".models")
    parser.add_argument("--precision", default="fp32", help="DEMUCS_PRECISION for the probe")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=0.0,
        help="probe: one forward pass on this much silence before the timed passes",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cold-start")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe(args)
    bench = run.Bench(
        run.parse_args(
            [
                "--seconds",
                f"{args.seconds:g}",
                "--repeat",
                "1",
                "--model",
                args.model,
                "--repo",
                str(args.repo),
                "--device",
                "cpu",
                "--out",
                str(args.out),
                "--scenarios",
                "stemworker_cold",
            ]
        )
    )
    rows: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    interpreter: list[float] = []
    imports: list[dict[str, float]] = []
    completed = False
    try:
        bench.prepare()
        env = bench.env()
        for index in range(args.repeat):
            interpreter.append(run_tree("python -c pass", [sys.executable, "-c", "pass"], env=env, cwd=ROOT).wall_s)
            timed = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", "import function.runner"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            imports.append(import_costs(timed.stderr))
            rows.append(cold_job(bench, index))
            command = [
                sys.executable,
                "-m",
                "bench.cold_start",
                "--probe",
                str(bench.song),
                "--model",
                args.model,
                "--repo",
                str(args.repo.resolve()),
                "--precision",
                args.precision,
                "--warmup-seconds",
                str(args.warmup_seconds),
            ]
            output = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            probes.append(json.loads(next(x for x in output.splitlines() if x.startswith("PROBE "))[6:]))
            print(
                f"[{index + 1}/{args.repeat}] cold job {rows[-1]['wall_s']:.2f} s, probe passes "
                f"{probes[-1]['passes'][0]['seconds']:.2f} / {probes[-1]['passes'][1]['seconds']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        text = breakdown(args, rows, probes, interpreter, imports)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cold_start.md").write_text(text)
        (args.out / "cold_start.json").write_text(
            json.dumps({"jobs": rows, "probes": probes, "interpreter_s": interpreter, "imports": imports}, indent=2)
        )
        print(text)
        completed = True
    finally:
        bench.close(keep_logs=not completed)
    return 0


def breakdown(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    probes: list[dict[str, Any]],
    interpreter: list[float],
    imports: list[dict[str, float]],
) -> str:
    first = statistics.median(p["passes"][0]["seconds"] for p in probes)
    second = statistics.median(p["passes"][1]["seconds"] for p in probes)
    first_chunk = statistics.median(p["passes"][0]["chunks"][0] for p in probes)
    second_chunk = statistics.median(p["passes"][1]["chunks"][0] for p in probes)
    load = statistics.median(p["load_s"] for p in probes)
    bare = statistics.median(interpreter)
    started = median_of(rows, "interpreter_and_imports")
    top = {name: statistics.median(i.get(name, 0.0) for i in imports) for name in imports[0]}
    heavy = sorted(top.items(), key=lambda item: -item[1])[:8]
    lines = [
        f"Cold job on a {args.seconds:g} s song, {args.model}, {len(rows)} runs (medians); "
        f"{probes[0]['threads']} torch threads.",
        "",
        "| phase | seconds | how it is measured |",
        "|---|---|---|",
        f"| interpreter start | {bare:.2f} | `python -c pass` |",
        f"| imports (runner and everything it imports) | {started - bare:.2f} | process start to the runner's "
        f"`imports` mark, less the bare interpreter |",
        f"| settings and logging | {median_of(rows, 'settings_and_logging'):.2f} | timeline |",
        f"| Redis and S3 clients, worker | {median_of(rows, 'clients'):.2f} | timeline |",
        f"| reap, claim, status, ack | {median_of(rows, 'claim_and_bookkeeping'):.2f} | message phase less the job |",
        f"| download | {median_of(rows, 'download'):.2f} | `handle`'s own timing |",
        f"| model load (on a thread during the download; probe: {load:.2f} s alone) | "
        f"{median_of(rows, 'model_wait'):.2f} | what the job waited for it after the download |",
        f"| decode | {median_of(rows, 'decode'):.2f} | `handle` |",
        f"| separate | {median_of(rows, 'separate'):.2f} | `handle` |",
        f"| of which: first pass's extra over a second pass in the same process | {first - second:.2f} | probe: "
        f"{first:.2f} s then {second:.2f} s; first chunk {first_chunk:.2f} s then {second_chunk:.2f} s |",
        f"| encode and upload | {median_of(rows, 'encode_upload'):.2f} | `handle` |",
        f"| status, log lines, rest of the job | {median_of(rows, 'job_other'):.2f} | `handle` total less the above |",
        f"| exit | {median_of(rows, 'exit'):.2f} | last mark to the process's end |",
        f"| **cold job, wall** | **{median_of(rows, 'wall_s'):.2f}** | outside |",
        "",
        "Import time of `function.runner` by package (`python -X importtime`, own time of its modules, s): "
        + ", ".join(f"{name} {seconds:.3f}" for name, seconds in heavy)
        + ".",
    ]
    if probes[0]["warmup_s"] is not None:
        warmup = statistics.median(p["warmup_s"] for p in probes)
        lines += [
            "",
            f"Warm-up forward pass on {args.warmup_seconds:g} s of silence: {warmup:.2f} s; first pass "
            f"after it {first:.2f} s, second {second:.2f} s.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
