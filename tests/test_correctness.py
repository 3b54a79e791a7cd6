"""The stems `handle` writes equal, sample for sample, what the demucs CLI writes for the same model and file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

from function.core import Worker
from function.messages import event_from_message


def test_wav_stems_match_the_demucs_cli_exactly(make_settings, redis_client, upload, song, s3, tmp_path: Path):
    # fp32 explicitly: the CLI runs fp32 whatever DEMUCS_PRECISION defaults to.
    settings = make_settings(demucs_shifts=0, demucs_threads=1, demucs_precision="fp32")
    upload("same", song)
    track = tmp_path / "same.mp3"
    track.write_bytes(song)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "demucs.separate",
            "--repo",
            str(settings.demucs_repo),
            "-n",
            "tiny",
            "--shifts",
            "0",
            "-d",
            "cpu",
            "-o",
            str(tmp_path / "cli"),
            str(track),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Worker(settings).handle(
            event_from_message('{"id": "same", "format": "wav"}', settings.max_message_bytes)
        )
    finally:
        torch.set_num_threads(threads)
    assert set(result["stems"]) == {"drums", "bass", "other", "vocals"}
    for stem, where in result["stems"].items():
        ours, our_rate = soundfile.read(io.BytesIO(s3.get_object(where["bucket"], where["key"]).read()), dtype="int16")
        theirs, their_rate = soundfile.read(tmp_path / "cli" / "tiny" / "same" / f"{stem}.wav", dtype="int16")
        assert our_rate == their_rate == 44100
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, theirs), f"{stem}: {np.abs(ours.astype(int) - theirs).max()} max difference"
