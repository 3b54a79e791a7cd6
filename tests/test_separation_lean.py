"""`audio.encode`'s chunked MP3 gives the same bytes as demucs' `save_audio`; reduced precision only when asked.
(The streamed separation's bit-identity with demucs is in tests/test_streaming.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demucs.api import Separator
from demucs.audio import save_audio

from function import audio, sample_song, separation


@pytest.mark.parametrize(("seconds", "gain"), [(13.3, 0.5), (7.0, 2.5), (0.01, 1.0)])
def test_chunked_mp3_is_byte_identical_to_demucs(tmp_path: Path, seconds: float, gain: float) -> None:
    wav = torch.from_numpy(sample_song.generate(seconds, seed=4)) * gain  # gain 2.5 exercises the rescale
    save_audio(wav, str(tmp_path / "demucs.mp3"), 44100, bitrate=320, preset=2)
    audio.encode(wav, tmp_path / "ours.mp3", 44100, 320, 2)
    assert (tmp_path / "ours.mp3").read_bytes() == (tmp_path / "demucs.mp3").read_bytes()


def test_reduced_precision_only_when_asked(model_repo: Path) -> None:
    separator = Separator(model="tiny", repo=model_repo, device="cpu", shifts=0, progress=False)
    wav = torch.from_numpy(sample_song.generate(5.0, seed=1))
    full = separation.separate(separator, wav, 0, lambda p: None)
    again = separation.separate(separator, wav, 0, lambda p: None, precision="fp32")
    bf16 = separation.separate(separator, wav, 0, lambda p: None, precision="bf16")
    assert all(torch.equal(full[name], again[name]) for name in full)
    assert all(stem.dtype == torch.float32 for stem in bf16.values())
    assert not all(torch.equal(full[name], bf16[name]) for name in full)
    with pytest.raises(ValueError, match="DEMUCS_PRECISION"):
        separation.separate(separator, wav, 0, lambda p: None, precision="int8")
