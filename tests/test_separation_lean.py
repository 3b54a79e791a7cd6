"""`separation.separate` takes a leaner path than `Separator.separate_tensor`; it must give the same stems,
bit for bit, and the same progress callbacks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from demucs.api import Separator

from function import sample_song, separation


@pytest.mark.parametrize("shifts", [0, 1])
def test_lean_separation_is_bit_identical_to_demucs(model_repo: Path, shifts: int) -> None:
    separator = Separator(model="tiny", repo=model_repo, device="cpu", shifts=shifts, progress=False)
    wav = torch.from_numpy(sample_song.generate(9.0, seed=3))
    demucs_calls: list[dict] = []
    separator.update_parameter(callback=demucs_calls.append, callback_arg={})
    random.seed(7)
    with torch.inference_mode():
        _, expected = separator.separate_tensor(wav)
    ours: list[int] = []
    random.seed(7)
    stems = separation.separate(separator, wav, shifts, ours.append)
    assert list(stems) == list(expected)
    assert all(torch.equal(stems[name], expected[name]) for name in expected)
    theirs: list[int] = []
    replay = separation._Progress(theirs.append, shifts)
    for call in demucs_calls:
        replay(call)
    assert ours == theirs and len(ours) > 1
