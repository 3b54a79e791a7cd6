"""Page faults and kernel time per separation pass, with and without MALLOC_REUSE (function/allocator.py).

    python -m bench.page_faults [--seconds 30] [--passes 3] [--model htdemucs] [--repo .models]

For each setting, a fresh process loads the model, decodes the song to the job's raw mix file and runs the worker's
streaming separation `--passes` times, printing per pass the wall seconds, the user and system CPU seconds and the
minor page faults (getrusage). The first pass is what a cold job pays; the later ones what a warm worker pays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workbench import model_repo, sample_song

ROOT = Path(__file__).resolve().parents[1]


def passes(args: argparse.Namespace) -> list[dict[str, float]]:
    """In this process: tune (or not), load, decode, then time each pass."""
    from function import allocator, audio, separation
    from function.config import load_settings

    allocator.apply(args.reuse == "on")
    settings = load_settings(demucs_model=args.model, demucs_repo=str(args.repo), demucs_device="cpu")
    separator = separation.get_separator(args.model, settings)
    precision = separation.job_precision(settings, "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mix = audio.decode_to_file(
            args.song, Path(tmp) / "mix.f32", separator.samplerate, separator.audio_channels, 1e9
        )
        for _ in range(args.passes):
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                separation.separate_to_files(separator, mix, 1, lambda p: None, Path(out), precision=precision, seed=1)
            after = resource.getrusage(resource.RUSAGE_SELF)
            rows.append(
                {
                    "wall_s": time.perf_counter() - started,
                    "user_s": after.ru_utime - before.ru_utime,
                    "sys_s": after.ru_stime - before.ru_stime,
                    "minor_faults": after.ru_minflt - before.ru_minflt,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--model", default="htdemucs", choices=sorted(model_repo.MODELS))
    parser.add_argument("--repo", type=Path, default=ROOT / ".models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--reuse", choices=("on", "off"), help=argparse.SUPPRESS)  # the child's setting
    parser.add_argument("--song", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reuse:
        print("PASSES " + json.dumps(passes(args)))
        return 0
    model_repo.write_model(args.repo, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    song = args.out / f"song-{args.seconds:g}s.mp3"
    if not song.exists():
        song.write_bytes(sample_song.song_mp3(args.seconds))
    lines = [
        f"{args.model} (random weights), {args.seconds:g} s song, {args.passes} passes per fresh process",
        "",
        "| MALLOC_REUSE | pass | wall s | user s | sys s | minor page faults |",
        "|---|---|---|---|---|---|",
    ]
    for reuse in ("off", "on"):
        command = [sys.executable, "-m", "bench.page_faults", "--reuse", reuse, "--song", str(song)]
        command += ["--model", args.model, "--repo", str(args.repo), "--passes", str(args.passes)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        output = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        rows = json.loads(next(line for line in output.splitlines() if line.startswith("PASSES "))[7:])
        for index, row in enumerate(rows, 1):
            lines.append(
                f"| {reuse} | {index} | {row['wall_s']:.2f} | {row['user_s']:.2f} | {row['sys_s']:.2f} | "
                f"{row['minor_faults']} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
