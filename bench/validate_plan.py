"""Check the capacity planner against a real flood through the local ScaledJob emulator, in one command.

    python -m bench.validate_plan [--count 12] [--seconds 4] [--max-replicas 2] [--polling-interval 5]
                                  [--out bench/out/validate]

It starts a real redis-server and SeaweedFS S3 on loopback and a tiny model repo, uploads `--count` distinct
generated songs, pushes their jobs at once (`bench/flood_measure.py push`), runs `python -m workbench.emulator
--manifests keda` with the given maxReplicaCount and pollingInterval (pods are real `python -m function.runner`
processes doing real separations), then builds the measured flood file (`bench/flood_measure.py collect`) and
runs `bench/plan.py validate` on it: predicted against measured drain time and p95 latency, PASS within 15 %.
The exit code is validate's.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from function.clients import s3_client
from function.config import load_settings
from workbench import sample_song
from workbench.local_services import LocalServices
from workbench.model_repo import write_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each generated song")
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--polling-interval", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "validate")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    repo = out / "models"
    write_model(repo, "tiny")
    python = sys.executable
    with LocalServices() as services:
        env = {
            **os.environ,
            **services.env(),
            "PYTHONPATH": str(ROOT),
            "DEMUCS_REPO": str(repo),
            "DEMUCS_MODEL": "tiny",
            "DEMUCS_SHIFTS": "0",
            "DEMUCS_THREADS": "1",
            "RESULT_CACHE": "off",
            "CLAIM_WAIT_S": "2",
        }  # INFO: pods print `claimed job`
        settings = load_settings(**{k.lower(): v for k, v in services.env().items()})
        client = s3_client(settings)
        client.make_bucket(settings.input_bucket)
        ids = [f"plan-{n:02d}" for n in range(args.count)]
        for n, job_id in enumerate(ids):
            song = sample_song.song_mp3(seconds=args.seconds, seed=n)
            client.put_object(settings.input_bucket, f"{job_id}.mp3", io.BytesIO(song), len(song))
        (out / "ids.txt").write_text("\n".join(ids) + "\n")
        pushes = out / "pushes.jsonl"
        subprocess.run(
            [
                python,
                "-m",
                "bench.flood_measure",
                "push",
                "--ids",
                str(out / "ids.txt"),
                "--rate",
                "1000",
                "--pushes",
                str(pushes),
                "--redis-url",
                services.env()["REDIS_URL"],
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
        started_at = time.time()
        workdir = out / "pods"
        with (out / "scaler.log").open("w") as log:
            subprocess.run(
                [
                    python,
                    "-m",
                    "workbench.emulator",
                    "--manifests",
                    "keda",
                    "--workdir",
                    str(workdir),
                    "--max-replicas",
                    str(args.max_replicas),
                    "--polling-interval",
                    str(args.polling_interval),
                    "--max-seconds",
                    "1800",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        subprocess.run(
            [
                python,
                "-m",
                "bench.flood_measure",
                "collect",
                "--pushes",
                str(pushes),
                "--scaler-log",
                str(out / "scaler.log"),
                "--scaler-started-at",
                f"{started_at:.6f}",
                "--workdir",
                str(workdir),
                "--redis-url",
                services.env()["REDIS_URL"],
                "--out",
                str(out / "flood.json"),
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
    return subprocess.run(
        [python, "-m", "bench.plan", "validate", "--measured", str(out / "flood.json")], cwd=ROOT, env=env, check=False
    ).returncode


if __name__ == "__main__":
    raise SystemExit(main())
