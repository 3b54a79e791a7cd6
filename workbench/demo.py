"""The main job on an embedded default: separate one song end to end on this machine.

    python -m workbench.demo [SONG] [--out stems/] [--model htdemucs] [--seconds 30]

Starts a real Redis and a real S3 (SeaweedFS) on loopback, uploads the song (a generated clip when none is
given), pushes a job message on `toWorker` as the REST tier does, runs it through the job runner and
`handle`, shows progress from the job's status hash, and downloads the stems into `--out`.
The model is the real pretrained one (downloaded on first use); `DEMUCS_REPO` points at a local model folder
instead. Where the weights can be neither found in the download cache nor downloaded (a 3 s connection probe
decides, so an offline machine does not wait on retries), it says so in one line and falls back to the same
architecture with random weights, so the whole path still runs; the stems are then meaningless.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from function.runner import Runner

# demucs 4.1 downloads pretrained weights from here (after trying the HuggingFace hub).
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/demucs/"
PROBE_TIMEOUT_S = 3.0
DEAD_LETTER_WORDS = (
    "failed for good: the message was moved to the dead-letter list {dead} with its error "
    "(`python -m function.replay --from-dead-letter` runs it again)"
)


def follow(runner: Runner, job_id: str, done: threading.Event) -> None:
    """Print the job's state and progress whenever they change."""
    from function.errors import StemworkerError

    last = None
    while not done.wait(0.25):
        try:
            record = runner.worker.status_for(job_id).read()
        except StemworkerError:
            continue
        shown = (record.get("state"), record.get("progress"))
        if shown != last and shown[0]:
            last = shown
            bar = "#" * (int(shown[1] or 0) // 5)
            print(f"  {shown[0]:<12} [{bar:<20}] {shown[1] or 0:>3}%", flush=True)


def weights_reachable(url: str = WEIGHTS_URL, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the weights' host answers a TCP connection within `timeout_s` (DNS failures answer at once)."""
    host = urlsplit(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def pretrained_available(model: str) -> bool:
    """Load the pretrained model if its weights are cached or can be downloaded; one line when they cannot."""
    if not weights_reachable():
        # Skip demucs' hub retries: offline they cost ~25 s before failing.
        print(
            f"pretrained {model} weights cannot be downloaded here ({urlsplit(WEIGHTS_URL).hostname} is unreachable)",
            flush=True,
        )
        os.environ["HF_HUB_OFFLINE"] = "1"
        return cached_pretrained(model)
    from demucs.pretrained import get_model

    try:
        get_model(model)
    except Exception as err:  # any failure to fetch means "not available here"
        print(f"pretrained {model} weights could not be loaded ({type(err).__name__}: {err})", flush=True)
        return False
    return True


def cached_pretrained(model: str) -> bool:
    """Whether every weight file of `model` is already in torch's hub cache (then demucs needs no download)."""
    import torch
    import yaml
    from demucs.pretrained import REMOTE_ROOT, _parse_remote_files

    bag = REMOTE_ROOT / f"{model}.yaml"
    if not bag.exists():
        return False
    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    signatures = yaml.safe_load(bag.read_text()).get("models", [])
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if not signatures or not all(sig in urls and (cache / Path(urls[sig]).name).exists() for sig in signatures):
        return False
    from demucs.pretrained import get_model

    get_model(model)
    return True


def check_song(song: Path | None) -> str | None:
    """Why the song argument cannot be used, or None."""
    if song is None:
        return None
    if not song.exists():
        return f"no such file: {song}"
    if not song.is_file():
        return f"not a file: {song}"
    if not os.access(song, os.R_OK):
        return f"cannot read {song}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("song", nargs="?", type=Path, help="an audio file (default: a generated clip)")
    parser.add_argument("--out", type=Path, default=Path("stems"), help="where to put the stems (default stems/)")
    parser.add_argument("--model", default=os.environ.get("DEMUCS_MODEL", "htdemucs"))
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="length of the generated clip (default 30: several chunks, so progress moves)",
    )
    parser.add_argument("--format", default="mp3", choices=["mp3", "wav", "flac"])
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="stop with an error instead of falling back to random weights when the pretrained model cannot be had",
    )
    args = parser.parse_args(argv)
    problem = check_song(args.song)
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        return 2

    # Imported after the arguments are checked: these load torch and demucs (seconds).
    from function.clients import s3_client
    from function.config import load_settings
    from function.runner import Outcome, Runner
    from workbench import sample_song
    from workbench.local_services import LocalServices
    from workbench.model_repo import MODELS, write_model

    repo = os.environ.get("DEMUCS_REPO")
    if repo is None and not pretrained_available(args.model):
        if args.no_fallback or args.model not in MODELS:
            print("no model available: set DEMUCS_REPO to a local demucs model folder", file=sys.stderr)
            return 2
        repo = str(Path(".models").resolve())
        write_model(Path(repo), args.model)
        print(
            f"falling back to {args.model} with RANDOM weights from {repo}: the stems will be noise-like. "
            "Set DEMUCS_REPO to a folder with real weights for real stems.",
            flush=True,
        )

    song = args.song.read_bytes() if args.song else sample_song.song_mp3(seconds=args.seconds)
    job_id = f"demo-{int(time.time())}"
    print("starting Redis and S3 (SeaweedFS) on loopback ...", flush=True)
    with LocalServices() as services:
        settings = load_settings(
            **{k.lower(): v for k, v in services.env().items()},
            demucs_model=args.model,
            demucs_repo=repo,
            claim_wait_s=5,
        )
        client = s3_client(settings)
        if not client.bucket_exists(settings.input_bucket):
            client.make_bucket(settings.input_bucket)
        key = settings.input_key.format(id=job_id)
        client.put_object(settings.input_bucket, key, io.BytesIO(song), len(song))
        print(f"uploaded {len(song)} bytes to {settings.input_bucket}/{key}", flush=True)
        runner = Runner(settings)
        runner.worker.redis.lpush(settings.queue_key, json.dumps({"songhash": job_id, "format": args.format}))
        print(f"pushed job {job_id} on {settings.queue_key}; separating with {args.model} ...", flush=True)
        done = threading.Event()
        watcher = threading.Thread(target=follow, args=(runner, job_id, done), daemon=True)
        watcher.start()
        started = time.monotonic()
        result = runner.run_once(wait_s=5)
        done.set()
        watcher.join()
        if result.outcome is not Outcome.DONE:
            dead = result.outcome is Outcome.DEAD
            words = DEAD_LETTER_WORDS.format(dead=f"{settings.queue_key}:dead") if dead else ""
            print(f"job {job_id} {result.outcome}{f' ({words})' if words else ''}: {result.error}", file=sys.stderr)
            return 1
        outputs = json.loads(runner.worker.status_for(job_id).read()["outputs"])
        target = args.out / job_id
        target.mkdir(parents=True, exist_ok=True)
        for stem, where in outputs.items():
            path = target / Path(where["key"]).name
            client.fget_object(where["bucket"], where["key"], str(path))
            print(f"  {stem:<8} -> {path} ({path.stat().st_size} bytes)")
        logs = [line.decode() for line in reversed(runner.worker.redis.lrange(settings.log_key, 0, -1))]
        print("log list:\n  " + "\n  ".join(logs))
        print(f"done in {time.monotonic() - started:.1f} s; stems in {target}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
