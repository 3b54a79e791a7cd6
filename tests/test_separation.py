"""Separation settings: reduced precision runs only when asked for, and fp32 is exact run to run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demucs.api import Separator

from function import separation
from workbench import sample_song


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
