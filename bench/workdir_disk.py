"""Disk use of a job's work dir (its temp dir) per second of audio, measured on a real job.

    python -m bench.workdir_disk [--seconds 60] [--formats mp3,wav,flac] [--model tiny] [--repo DIR]

Each job runs in this process (`function.core.Worker.handle`, against Redis and S3 started on loopback) on a
generated stereo 44.1 kHz MP3, while a thread sums the sizes of every file under the job's temp dir every 5 ms.
Prints, per output format, the peak bytes, the bytes per second of audio and the files at the peak (the input
MP3, the decoded song `mix.f32`, the raw stems `*.f32`, the encoded stems). What is on disk depends on the song's
length, the stems (4) and channels (2) and the format, not on the model's weights or size, so the small `tiny`
model (4 stems) gives the figures of htdemucs quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import threading
import uuid
from pathlib import Path

from workbench import model_repo, sample_song
from workbench.local_services import LocalServices


class DiskPoller(threading.Thread):
    """Sums the file sizes under `root` every `interval_s`, keeping the peak and the files at the peak."""

    def __init__(self, root: Path, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s = root, interval_s
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._done = threading.Event()

    def sizes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    found[name] = os.stat(os.path.join(folder, name)).st_size
        return found

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            sizes = self.sizes()
            total = sum(sizes.values())
            if total > self.peak:
                self.peak, self.at_peak = total, sizes

    def stop(self) -> None:
        self._done.set()
        self.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated song")
    parser.add_argument("--formats", default="mp3,wav,flac", help="output formats, comma-separated")
    parser.add_argument("--model", default="tiny", choices=sorted(model_repo.MODELS))
    parser.add_argument("--repo", type=Path, default=None, help="DEMUCS repo (default: a temp dir)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="stemworker-disk-"))
    repo = args.repo or scratch / "models"
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / f"{model_repo.MODELS[args.model][0]}.th").exists():
        model_repo.write_model(repo, args.model)
    services = LocalServices().start()
    try:
        from function.config import load_settings
        from function.core import Worker
        from function.messages import event_from_message

        env = services.env()
        settings = load_settings(
            redis_url=env["REDIS_URL"],
            minio_endpoint=env["MINIO_ENDPOINT"],
            minio_access_key=env["MINIO_ACCESS_KEY"],
            minio_secret_key=env["MINIO_SECRET_KEY"],
            input_bucket="disk-in",
            output_bucket="disk-out",
            demucs_model=args.model,
            demucs_repo=str(repo),
            demucs_device="cpu",
            result_cache=False,
            max_duration_seconds=max(1200.0, args.seconds + 1),
        )
        worker = Worker(settings)
        song = sample_song.song_mp3(args.seconds)
        worker.store.ensure_bucket("disk-in")
        work_root = scratch / "tmp"
        work_root.mkdir()
        tempfile.tempdir = str(work_root)  # the job's TemporaryDirectory goes here, and nothing else does
        print(f"{args.seconds:g} s stereo 44.1 kHz MP3 ({len(song)} bytes), model {args.model}\n")
        print("| format | peak work dir, MB | MB per s of audio | files at the peak (MB) |")
        print("|---|---|---|---|")
        for fmt in filter(None, (part.strip() for part in args.formats.split(","))):
            job_id = f"disk-{fmt}-{uuid.uuid4().hex[:6]}"
            worker.store._client.put_object("disk-in", f"{job_id}.mp3", io.BytesIO(song), len(song))
            poller = DiskPoller(work_root)
            poller.start()
            try:
                result = worker.handle(event_from_message(f'{{"id": "{job_id}", "format": "{fmt}"}}', 65536))
            finally:
                poller.stop()
            audio_s = result["audio_seconds"]
            files = ", ".join(f"{name} {size / 1e6:.1f}" for name, size in sorted(poller.at_peak.items()))
            print(f"| {fmt} | {poller.peak / 1e6:.1f} | {poller.peak / 1e6 / audio_s:.3f} | {files} |")
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
