"""What an operator sees during a small flood through the local ScaledJob emulator, captured as text.

    python -m bench.ops_capture --out ops-capture.txt [--count 12] [--seconds 2.5] [--max-replicas 2]

It starts a real redis-server and SeaweedFS S3 on loopback and a tiny model repo, pushes `--count` jobs with
`stemworker flood`, runs `python -m workbench.emulator --manifests keda` (pods are `python -m function.runner`
subprocesses, at most `--max-replicas` at once), and meanwhile shows `stemworker stats --watch` and
`stemworker watch <one of the jobs>` in tmux windows, capturing their screens every `--frame-s` seconds (a
frame is kept when a count, a state or a progress changed). Once the emulator has drained the queue it runs
`stemworker exporter`, scrapes /metrics, and checks the counts against the flood and the emulator's summary
(exit 1 when they differ). Needs tmux.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from workbench.local_services import LocalServices, free_port
from workbench.model_repo import write_model

ROOT = Path(__file__).resolve().parents[1]

SESSION = "stemops-capture"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SESSION, *args], check=True, capture_output=True, text=True).stdout


def screen(window: str) -> str:
    """The visible text of a tmux window, without trailing blank lines."""
    return tmux("capture-pane", "-p", "-t", f"{SESSION}:{window}").rstrip() + "\n"


def significant(text: str) -> str:
    """A screen without what changes every second (clock, elapsed time, the oldest-waiting age), so that only
    frames where a count, a state or a progress moved are kept."""
    text = re.sub(r"\b\d{1,2}:\d{2}:\d{2}\b", "", text)
    return re.sub(r"(oldest waiting\s+)[\d.]+ s", r"\1", text)


def shell_line(env_file: Path, command: str) -> str:
    return f"set -a; . {env_file}; set +a; cd {ROOT}; {command}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=2.5, help="length of each generated song")
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--frame-s", type=float, default=1.0, help="seconds between screen captures")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("ops_capture: tmux is not installed", file=sys.stderr)
        return 2
    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="stemops-capture-"))
    repo = work / "models"
    write_model(repo, "tiny")
    frames: list[str] = []
    with LocalServices() as services:
        env = {
            **services.env(),
            "PYTHONPATH": str(ROOT),
            "DEMUCS_MODEL": "tiny",
            "DEMUCS_MODELS": "tiny",
            "DEMUCS_REPO": str(repo),
            "DEMUCS_DEVICE": "cpu",
            "DEMUCS_THREADS": "1",
            "DEMUCS_SHIFTS": "0",
            "SCALEDJOB_MAX_REPLICAS": str(args.max_replicas),
            "CLAIM_WAIT_S": "2",
            "RESULT_CACHE": "off",
        }
        env_file = work / "env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
        run_env = {**os.environ, **env}
        stemworker = f"{python} -m stemops"
        pushed = json.loads(
            subprocess.run(
                [
                    python,
                    "-m",
                    "stemops",
                    "flood",
                    "--count",
                    str(args.count),
                    "--id",
                    "capture",
                    "--seconds",
                    str(args.seconds),
                    "--json",
                ],
                env=run_env,
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        watched = pushed["ids"][len(pushed["ids"]) // 2]
        summary = work / "summary.json"
        tmux(
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            "110",
            "-y",
            "16",
            "-n",
            "stats",
            shell_line(env_file, f"{stemworker} stats --watch --interval 1; sleep 3600"),
        )
        tmux(
            "new-window",
            "-t",
            SESSION,
            "-n",
            "watch",
            shell_line(env_file, f'{stemworker} watch {watched} --interval 0.5; echo "exit code $?"; sleep 3600'),
        )
        tmux(
            "new-window",
            "-t",
            SESSION,
            "-n",
            "emulator",
            shell_line(
                env_file,
                f"{python} -m workbench.emulator --manifests keda --max-replicas {args.max_replicas} "
                f"--polling-interval 1 --workdir {work / 'pods'} --summary-json {summary} "
                f"--max-seconds {args.max_seconds:.0f}; sleep 3600",
            ),
        )
        started = time.monotonic()
        last = {"stats": "", "watch": ""}
        try:
            while time.monotonic() - started < args.max_seconds + 30:
                for window, title in (
                    ("stats", "stemworker stats --watch --interval 1"),
                    ("watch", f"stemworker watch {watched}"),
                ):
                    text = screen(window)
                    if text.strip() and significant(text) != last[window]:
                        last[window] = significant(text)
                        frames.append(f"---- t={time.monotonic() - started:6.1f} s  $ {title}\n{text}")
                if summary.exists():
                    time.sleep(args.frame_s)  # one more frame of each after the drain
                    for window in ("stats", "watch"):
                        frames.append(
                            f"---- t={time.monotonic() - started:6.1f} s  after the drain: {window}\n{screen(window)}"
                        )
                    break
                time.sleep(args.frame_s)
            emulator_tail = "\n".join(screen("emulator").splitlines()[-8:])
        finally:
            subprocess.run(["tmux", "-L", SESSION, "kill-session", "-t", SESSION], check=False)
        result = json.loads(summary.read_text()) if summary.exists() else {}

        port = free_port()
        exporter = subprocess.Popen(
            [python, "-m", "stemops", "exporter", "--port", str(port), "--address", "127.0.0.1"],
            env=run_env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            exporter.stdout.readline()
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        finally:
            exporter.terminate()
            exporter.wait(30)
        jobs_text = subprocess.run(
            [python, "-m", "stemops", "jobs", "--limit", str(args.count)],
            env=run_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout

    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    done = values.get(("stemworker_jobs_total", (("model", "tiny"), ("outcome", "done"))), -1)
    stage_count = values.get(("stemworker_job_duration_seconds_count", (("model", "tiny"), ("stage", "total"))), -1)
    checks = {
        f"jobs_total done == flood count {args.count}": done == args.count,
        f"job_duration_seconds_count{{stage=total}} == {args.count}": stage_count == args.count,
        "emulator outcomes all done": result.get("outcomes") == {"done": args.count},
        "queue, processing and dead all 0": all(
            values.get((name, ()), -1) == 0
            for name in ("stemworker_queue_waiting", "stemworker_queue_processing", "stemworker_queue_dead")
        ),
        f"scaledjob_max_replicas == {args.max_replicas}": values.get(("stemworker_scaledjob_max_replicas", ()), -1)
        == args.max_replicas,
    }
    wanted = (
        "stemworker_queue",
        "stemworker_jobs",
        "stemworker_audio",
        "stemworker_callbacks",
        "stemworker_redis",
        "stemworker_exporter",
        "stemworker_scaledjob",
        "stemworker_realtime_factor_count",
        "stemworker_realtime_factor_sum",
        "stemworker_job_duration_seconds_count",
        "stemworker_job_duration_seconds_sum",
        'stemworker_job_duration_seconds_bucket{le="+Inf"',
    )
    shown = [
        line
        for line in metrics.splitlines()
        if line.startswith(wanted)
        or (line.startswith("stemworker_job_duration_seconds_bucket") and 'stage="total"' in line)
    ]
    with args.out.open("w") as out:
        out.write(
            f"# {args.count} jobs of {args.seconds} s (tiny model) pushed with `stemworker flood --count "
            f"{args.count}`, run by `python -m workbench.emulator --manifests keda --max-replicas "
            f"{args.max_replicas}`\n# produced by: python -m bench.ops_capture --out {args.out.name} "
            f"--count {args.count} --seconds {args.seconds} --max-replicas {args.max_replicas}\n\n"
        )
        out.write("\n".join(frames))
        out.write(f"\n---- emulator (last lines)\n{emulator_tail}\n")
        out.write(f"\n---- emulator summary\n{json.dumps(result, indent=2)}\n")
        out.write(f"\n---- $ stemworker jobs --limit {args.count}  (after the drain)\n{jobs_text}")
        out.write(
            "\n---- $ curl /metrics of `stemworker exporter` after the drain (stemworker_* samples; duration "
            "buckets of stage total only)\n"
        )
        out.write("\n".join(shown) + "\n")
        out.write("\n---- checks\n" + "".join(f"{'PASS' if ok else 'FAIL'}  {name}\n" for name, ok in checks.items()))
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"wrote {args.out}: {len(frames)} frames; "
        + ", ".join(f"{n}: {'PASS' if ok else 'FAIL'}" for n, ok in checks.items())
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
