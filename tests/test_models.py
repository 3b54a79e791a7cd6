"""Every pretrained DEMUCS model the demucs 4.1 CLI accepts separates in the worker exactly as the CLI does.

A tiny stand-in is written under each name (workbench/model_repo.py `write_standin`: demucs' own bag file for the
name, tiny members of the real kinds: HTDemucs, the 4-model weighted `htdemucs_ft`, the six-source `htdemucs_6s`,
HDemucs, time-domain Demucs mixed with HDemucs in the MDX bags, and DiffQ-quantized checkpoints for `mdx_q` and
`mdx_extra_q`, loaded through demucs' own loader). For each, the WAV stems of a job (`format: wav`, shifts 0) are
byte-for-byte the files `python -m demucs.separate --repo REPO -n NAME --shifts 0` writes for the same song.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from demucs import pretrained
from demucs.apply import BagOfModels

from function.core import Worker
from function.errors import UnprocessableInput
from function.messages import event_from_message
from workbench import sample_song
from workbench.model_repo import PRETRAINED_NAMES, SIX_SOURCES

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_second_song() -> bytes:
    return sample_song.song_mp3(seconds=2.0)


def cli_stems(repo: Path, name: str, song: Path, out: Path, *extra: str) -> dict[str, bytes]:
    """The WAV files `python -m demucs.separate` writes for `song`, by stem."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # the thread count the worker's settings give torch
    command = [
        sys.executable,
        "-m",
        "demucs.separate",
        "--repo",
        str(repo),
        "-n",
        name,
        "--shifts",
        "0",
        "-d",
        "cpu",
        "-o",
        str(out),
        *extra,
        str(song),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / name / song.stem
    return {path.stem: path.read_bytes() for path in sorted(folder.glob("*.wav"))}


def worker_stems(worker: Worker, s3, job: dict) -> dict[str, bytes]:
    result = worker.handle(event_from_message(json.dumps({**job, "format": "wav"}), 65536))
    return {stem: s3.get_object(where["bucket"], where["key"]).read() for stem, where in result["stems"].items()}


def test_the_standins_have_the_kinds_of_the_pretrained_models(standin_repo: Path) -> None:
    kinds = {}
    for name in PRETRAINED_NAMES:
        model = pretrained.get_model(name, repo=standin_repo)
        members = list(model.models) if isinstance(model, BagOfModels) else [model]
        kinds[name] = ([type(member).__name__ for member in members], list(model.sources))
    assert kinds["htdemucs"][0] == ["HTDemucs"] and kinds["hdemucs_mmi"][0] == ["HDemucs"]
    assert kinds["htdemucs_ft"][0] == ["HTDemucs"] * 4
    assert kinds["htdemucs_6s"] == (["HTDemucs"], SIX_SOURCES)
    for name in ("mdx", "mdx_extra", "mdx_q", "mdx_extra_q"):
        assert kinds[name][0] == ["Demucs", "Demucs", "HDemucs", "HDemucs"], name
    # The quantized checkpoints are DiffQ states, named with their checksum as demucs publishes them.
    for signature in pretrained.REMOTE_ROOT.joinpath("mdx_extra_q.yaml").read_text().split("'")[1::2]:
        (package,) = standin_repo.glob(f"{signature}-*.th")
        assert torch.load(package, weights_only=False)["state"]["__quantized"] is True


@pytest.mark.parametrize("name", PRETRAINED_NAMES)
def test_every_pretrained_name_separates_as_the_cli_does(
    make_settings, redis_client, upload, s3, standin_repo, two_second_song, tmp_path, name
):
    settings = make_settings(demucs_model=name, demucs_repo=str(standin_repo), demucs_shifts=0, demucs_precision="fp32")
    upload("cli1", two_second_song)
    ours = worker_stems(Worker(settings), s3, {"id": "cli1"})
    song = tmp_path / "cli1.mp3"
    song.write_bytes(two_second_song)
    theirs = cli_stems(standin_repo, name, song, tmp_path / "separated")
    assert sorted(ours) == sorted(theirs) == sorted(pretrained.get_model(name, repo=standin_repo).sources)
    for stem in theirs:
        assert ours[stem] == theirs[stem], f"{name} {stem}: the worker's WAV differs from the CLI's"


def test_six_stems_two_stems_aliases_and_templates(
    make_settings, redis_client, upload, s3, standin_repo, two_second_song, tmp_path
):
    settings = make_settings(
        demucs_model="htdemucs_6s",
        demucs_repo=str(standin_repo),
        demucs_shifts=0,
        demucs_precision="fp32",
        output_key="{model}/{id}/{stem}.{ext}",
        stem_aliases="guitar:gtr+guitar",
    )
    worker = Worker(settings)
    upload("six1", two_second_song)
    picked = worker.handle(event_from_message('{"id": "six1", "stems": ["piano", "guitar"]}', 65536))
    assert picked["stems"] == {
        "piano": {"bucket": settings.output_bucket, "key": "htdemucs_6s/six1/piano.mp3"},
        "guitar": {
            "bucket": settings.output_bucket,
            "key": "htdemucs_6s/six1/gtr.mp3",
            "keys": ["htdemucs_6s/six1/gtr.mp3", "htdemucs_6s/six1/guitar.mp3"],
        },
    }
    # two_stems on a six-stem model: the stem and the sum of the other five, as the CLI's --two-stems writes them.
    ours = worker_stems(worker, s3, {"id": "six1", "two_stems": "piano"})
    song = tmp_path / "six1.mp3"
    song.write_bytes(two_second_song)
    theirs = cli_stems(standin_repo, "htdemucs_6s", song, tmp_path / "separated", "--two-stems", "piano")
    assert sorted(ours) == sorted(theirs) == ["no_piano", "piano"]
    assert ours == theirs


def test_a_stem_the_model_lacks_fails_for_good_naming_the_stems_it_has(
    make_settings, redis_client, upload, s3, standin_repo, two_second_song
):
    worker = Worker(make_settings(demucs_model="htdemucs", demucs_repo=str(standin_repo), demucs_shifts=0))
    upload("four1", two_second_song)
    with pytest.raises(UnprocessableInput) as failed:
        worker.handle(event_from_message('{"id": "four1", "stems": ["vocals", "guitar"]}', 65536))
    assert str(failed.value) == (
        "model htdemucs has no stems ['guitar']; its stems are ['drums', 'bass', 'other', 'vocals']"
    )
    record = {k.decode(): v.decode() for k, v in redis_client.hgetall("status:four1").items()}
    assert record["state"] == "failed" and "its stems are" in record["error"]
