"""A worker written the way the course seed describes it, as the baseline stemworker is compared against.

It pops a JSON message from the `toWorker` list, downloads the MP3 with `fget_object`, runs the DEMUCS CLI
as a separate program with `os.system(...)`, checks that it worked, uploads each stem with `fput_object`,
logs to the `logging` list and POSTs the callback. No model stays loaded: every job pays for a new Python,
a torch import and a model load inside the CLI.

    python -m bench.seed_worker [--max-messages N]

Settings come from the same environment variables the real worker reads (REDIS_URL, MINIO_ENDPOINT,
MINIO_ACCESS_KEY, MINIO_SECRET_KEY, INPUT_BUCKET, OUTPUT_BUCKET, DEMUCS_MODEL, DEMUCS_REPO, DEMUCS_DEVICE).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import tempfile
from pathlib import Path

import redis
import requests
from minio import Minio

STEMS = ("bass", "drums", "vocals", "other")


def log(client: redis.Redis, level: str, message: str) -> None:
    client.lpush("logging", f"{socket.gethostname()}.worker.{level}:{message}")


def handle(client: redis.Redis, store: Minio, raw: bytes, workdir: Path) -> None:
    """One job, seed style."""
    message = json.loads(raw)
    songhash = message["songhash"] if isinstance(message, dict) else str(message)
    model = os.environ.get("DEMUCS_MODEL", "htdemucs")
    log(client, "debug", f"received {songhash}")
    song = workdir / f"{songhash}.mp3"
    store.fget_object(os.environ.get("INPUT_BUCKET", "queue"), f"{songhash}.mp3", str(song))
    out = workdir / "output"
    repo = os.environ.get("DEMUCS_REPO")
    command = [
        sys.executable,
        "-m",
        "demucs.separate",
        "--mp3",
        "-n",
        model,
        "-d",
        os.environ.get("DEMUCS_DEVICE", "cpu"),
        "--out",
        str(out),
        str(song),
    ]
    if repo:
        command[4:4] = ["--repo", repo]
    status = os.system(shlex.join(command))
    if status != 0:
        log(client, "error", f"demucs failed for {songhash} with status {status}")
        raise SystemExit(1)
    bucket = os.environ.get("OUTPUT_BUCKET", "output")
    if not store.bucket_exists(bucket):
        store.make_bucket(bucket)
    for part in STEMS:
        store.fput_object(bucket, f"{songhash}-{part}.mp3", str(out / model / songhash / f"{part}.mp3"))
        log(client, "debug", f"uploaded {songhash}-{part}.mp3")
    callback = message.get("callback") if isinstance(message, dict) else None
    if callback:
        try:
            requests.post(callback["url"], json=callback.get("data"), timeout=10)
        except requests.RequestException as err:
            log(client, "error", f"callback failed: {err}")
    log(client, "info", f"done {songhash}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-messages", type=int, default=1)
    parser.add_argument("--queue", default=os.environ.get("QUEUE_KEY", "toWorker"))
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    store = Minio(
        os.environ.get("MINIO_ENDPOINT", "localhost:9000"),
        access_key=os.environ["MINIO_ACCESS_KEY"],
        secret_key=os.environ["MINIO_SECRET_KEY"],
        secure=False,
    )
    for _ in range(args.max_messages):
        popped = client.blpop([args.queue], timeout=30)
        if popped is None:
            return 1
        with tempfile.TemporaryDirectory(prefix="seed-worker-") as tmp:
            handle(client, store, popped[1], Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
