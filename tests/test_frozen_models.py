"""Frozen models (function/frozen_models.py): built from the weights, used only while they match, same stems."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from demucs.api import Separator
from support import REPO_ROOT

from function import frozen_models, separation
from function.config import load_settings
from workbench import model_repo as models
from workbench import sample_song


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo of its own: the tests change its files' stamps."""
    folder = tmp_path / "repo"
    models.write_model(folder, "tiny")
    models.write_model(folder, "tiny2", seed=1, signature="7e57a12d", kwargs=models.TINY_KWARGS)
    return folder


@pytest.fixture(autouse=True)
def fresh_models() -> None:
    separation._models.clear()  # every test loads its model anew


def separated(separator: Separator) -> dict[str, torch.Tensor]:
    wav = torch.from_numpy(sample_song.generate(3.0, separator.samplerate))
    return separation.separate(separator, wav, 1, lambda percent: None, seed=7)


def settings_for(repo: Path, **extra: object):
    return load_settings(demucs_model="tiny", demucs_repo=str(repo), demucs_device="cpu", **extra)


def test_frozen_model_separates_bit_for_bit_as_the_weights(repo: Path) -> None:
    frozen_models.freeze("tiny", repo)
    loaded = separation.get_separator("tiny", settings_for(repo))
    assert isinstance(loaded, separation.FrozenSeparator)
    from_weights = Separator(model="tiny", repo=repo, progress=False)
    assert type(from_weights) is Separator
    ours, theirs = separated(loaded), separated(from_weights)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    # the parameters are mapped from the file, not copied
    assert loaded.samplerate == from_weights.samplerate and loaded.audio_channels == from_weights.audio_channels


def test_off_or_absent_loads_the_weights(repo: Path) -> None:
    assert type(separation.get_separator("tiny", settings_for(repo))) is Separator  # nothing frozen yet
    separation._models.clear()
    frozen_models.freeze("tiny", repo)
    off = separation.get_separator("tiny", settings_for(repo, frozen_models=False))
    assert type(off) is Separator


def test_a_frozen_model_is_per_model(repo: Path) -> None:
    frozen_models.freeze("tiny", repo)
    assert frozen_models.is_current("tiny", repo)
    assert not frozen_models.is_current("tiny2", repo)
    assert type(separation.get_separator("tiny2", settings_for(repo))) is Separator


def test_changed_weights_make_it_stale(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    frozen_models.freeze("tiny", repo)
    (package,) = [path for path in repo.glob("*.th") if path.stem == models.MODELS["tiny"][0]]
    info = package.stat()
    os.utime(package, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # replaced weights: new mtime
    assert not frozen_models.is_current("tiny", repo)
    with caplog.at_level(logging.INFO, logger="stemworker.frozen"):
        assert type(separation.get_separator("tiny", settings_for(repo))) is Separator
    assert "stale" in caplog.text


def test_other_library_versions_make_it_stale(repo: Path) -> None:
    frozen_models.freeze("tiny", repo)
    _, stamp_path = frozen_models.paths(repo, "tiny")
    stamp = json.loads(stamp_path.read_text())
    stamp["versions"]["demucs"] = "0.0.1"
    stamp_path.write_text(json.dumps(stamp))
    assert frozen_models.load("tiny", repo) is None


def test_a_broken_file_falls_back_to_the_weights(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    frozen_models.freeze("tiny", repo)
    target, _ = frozen_models.paths(repo, "tiny")
    with target.open("r+b") as file:
        file.truncate(target.stat().st_size // 2)
    # the stamp describes the weights, which did not change: only loading can tell
    with caplog.at_level(logging.WARNING, logger="stemworker.frozen"):
        separator = separation.get_separator("tiny", settings_for(repo))
    assert type(separator) is Separator
    assert "does not load" in caplog.text


def test_freezing_a_model_the_repo_does_not_have_fails(repo: Path) -> None:
    with pytest.raises(ValueError, match="no model 'nosuch'"):
        frozen_models.freeze("nosuch", repo)
    assert not (repo / frozen_models.FROZEN_DIR / "nosuch.pt").exists()


def freeze_command(repo: Path, models: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "function.frozen_models", "--repo", str(repo), "--models", models],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_freezes_each_model(repo: Path, tmp_path: Path) -> None:
    done = freeze_command(repo, "tiny,tiny2")
    assert done.returncode == 0, done.stderr
    assert frozen_models.is_current("tiny", repo) and frozen_models.is_current("tiny2", repo)
    # a copy of the repo elsewhere (another image layer, another mount) keeps the files' stamps only if copied
    # with them; a copy without them is stale and is not used
    moved = tmp_path / "moved"
    shutil.copytree(repo, moved, copy_function=shutil.copy)
    assert not frozen_models.is_current("tiny", moved)
    failed = freeze_command(repo, "nosuch")
    assert failed.returncode == 1 and "cannot freeze nosuch" in failed.stderr


def test_a_broken_bag_file_is_the_weights_loaders_error(repo: Path) -> None:
    """A frozen model whose bag no longer parses is not used, and the load fails as it would without it."""
    frozen_models.freeze("tiny", repo)
    (repo / "tiny.yaml").write_text("models: [unclosed\n")
    assert not frozen_models.is_current("tiny", repo)
    with pytest.raises(separation.Transient, match="cannot load model 'tiny'"):
        separation.get_separator("tiny", settings_for(repo))
