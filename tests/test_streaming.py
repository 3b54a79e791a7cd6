"""The streaming separator (`function/streaming.py`, through `separation.separate_to_files`, and
`audio.encode_file`) must give exactly what demucs gives: the same stems bit for bit, the same progress, the
same encoded bytes; and it must never hold a tensor with a stem axis longer than a chunk, whatever the song's
length. It mirrors one demucs release: a different installed demucs fails here loudly."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import demucs
import pytest
import soundfile
import torch
from demucs.api import Separator
from demucs.audio import prevent_clip, save_audio
from torch.utils._python_dispatch import TorchDispatchMode

from function import audio, separation, streaming
from function.core import pick_stems
from function.messages import Job
from workbench import sample_song

SAMPLERATE = 44100


def test_installed_demucs_is_the_release_streaming_mirrors() -> None:
    assert demucs.__version__ == streaming.DEMUCS_VERSION, (
        f"function/streaming.py mirrors demucs {streaming.DEMUCS_VERSION}'s apply_model, but demucs "
        f"{demucs.__version__} is installed: re-check stream_apply_model against the new apply_model, then "
        "update DEMUCS_VERSION and the pin in pyproject.toml"
    )


def read_back(stem: audio.StemFile) -> torch.Tensor:
    return torch.cat(list(stem.chunks(50_000)), -1)


def tiny(model_repo: Path, shifts: int) -> Separator:
    return Separator(model="tiny", repo=model_repo, device="cpu", shifts=shifts, progress=False)


@pytest.mark.parametrize("shifts", [0, 1])
def test_streamed_stems_are_bit_identical_to_demucs(model_repo: Path, tmp_path: Path, shifts: int) -> None:
    separator = tiny(model_repo, shifts)
    wav = torch.from_numpy(sample_song.generate(13.0, seed=5))  # 3 chunks of the 7.8 s grid, 5.85 s stride
    random.seed(11)
    with torch.inference_mode():
        _, expected = separator.separate_tensor(wav)
    in_memory: list[int] = []
    random.seed(11)
    separation.separate(separator, wav, shifts, in_memory.append)
    streamed: list[int] = []
    random.seed(11)
    files = separation.separate_to_files(separator, wav, shifts, streamed.append, tmp_path)
    assert list(files) == list(expected)
    for name, stem in files.items():
        assert stem.frames == wav.shape[-1]
        assert torch.equal(read_back(stem), expected[name]), (
            f"stem {name} streamed differs from demucs {demucs.__version__}'s separate_tensor; "
            f"function/streaming.py mirrors demucs {streaming.DEMUCS_VERSION}"
        )
    assert streamed == in_memory and len(streamed) > 1


@pytest.mark.parametrize(
    "job", [Job(id="a", model="tiny", two_stems="vocals"), Job(id="b", model="tiny", stems=("bass", "drums"))]
)
def test_stem_choices_stream_the_same_samples(model_repo: Path, tmp_path: Path, job: Job) -> None:
    separator = tiny(model_repo, 0)
    wav = torch.from_numpy(sample_song.generate(9.0, seed=6))
    expected = pick_stems(separation.separate(separator, wav, 0, lambda p: None), job)
    files = separation.separate_to_files(
        separator, wav, 0, lambda p: None, tmp_path, pick=lambda stems: pick_stems(stems, job)
    )
    assert list(files) == list(expected)
    assert all(torch.equal(read_back(files[name]), expected[name]) for name in expected)


def test_split_false_falls_back_to_the_same_stems(model_repo: Path, tmp_path: Path) -> None:
    separator = Separator(model="tiny", repo=model_repo, device="cpu", shifts=1, split=False, progress=False)
    assert not streaming.streamable(separator)
    wav = torch.from_numpy(sample_song.generate(3.0, seed=2))
    random.seed(3)
    expected = separation.separate(separator, wav, 1, lambda p: None)
    random.seed(3)
    files = separation.separate_to_files(separator, wav, 1, lambda p: None, tmp_path)
    assert all(torch.equal(read_back(files[name]), expected[name]) for name in expected)


def mix_file(wav: torch.Tensor, path: Path) -> audio.MixFile:
    """`wav` as the worker's decode leaves it in the work dir (`audio.decode_to_file`)."""
    path.write_bytes(wav.t().contiguous().numpy().tobytes())
    return audio.MixFile(path, wav.shape[0], wav.shape[-1], SAMPLERATE)


@pytest.mark.parametrize("shifts", [0, 1])
@pytest.mark.parametrize("seconds", [0.3, 13.0, 20.1])  # under one chunk, 3 chunks, 4 chunks and a bit
def test_stems_from_the_work_dir_file_are_bit_identical_to_demucs(
    model_repo: Path, tmp_path: Path, shifts: int, seconds: float
) -> None:
    """The input side streamed too: the song read from its raw file a chunk at a time, the normalisation computed
    span by span, the normalised and padded mix cut chunk by chunk, and still demucs' stems bit for bit."""
    separator = tiny(model_repo, shifts)
    wav = torch.from_numpy(sample_song.generate(seconds, seed=7))
    random.seed(5)
    with torch.inference_mode():
        _, expected = separator.separate_tensor(wav)
    state_after = random.getstate()
    random.seed(5)
    streamed: list[int] = []
    files = separation.separate_to_files(
        separator, mix_file(wav, tmp_path / "mix.f32"), shifts, streamed.append, tmp_path
    )
    assert list(files) == list(expected)
    for name, stem in files.items():
        assert stem.frames == wav.shape[-1]
        assert torch.equal(read_back(stem), expected[name]), f"stem {name} from the file differs from demucs'"
    assert random.getstate() == state_after
    assert streamed == sorted(streamed)


@pytest.mark.parametrize(("name", "shifts", "segment"), [("htdemucs_ft", 1, None), ("mdx_q", 2, 2)])
def test_bags_from_the_work_dir_file_are_bit_identical_to_demucs(
    standin_repo: Path, tmp_path: Path, name: str, shifts: int, segment: int | None
) -> None:
    separator = Separator(model=name, repo=standin_repo, device="cpu", shifts=shifts, segment=segment, progress=False)
    wav = torch.from_numpy(sample_song.generate(4.5, seed=10))
    random.seed(22)
    with torch.inference_mode():
        _, expected = separator.separate_tensor(wav)
    random.seed(22)
    files = separation.separate_to_files(
        separator, mix_file(wav, tmp_path / "mix.f32"), shifts, lambda p: None, tmp_path
    )
    assert all(torch.equal(read_back(files[stem]), expected[stem]) for stem in expected)


@pytest.mark.parametrize(
    ("name", "shifts", "segment"),
    [
        ("htdemucs_ft", 1, None),  # 4 HTDemucs with one-hot weights; HTDemucs draws from `random` in every forward
        ("mdx", 0, 2),  # Demucs + HDemucs members, a weights matrix, a 2 s chunk grid
        ("mdx_q", 2, 2),  # the same bag DiffQ-quantized, two shifted passes per member
        ("hdemucs_mmi", 3, 2),  # one model, three shifted passes
    ],
)
def test_bags_and_shifts_stream_bit_identical_to_demucs(
    standin_repo: Path, tmp_path: Path, name: str, shifts: int, segment: int | None
) -> None:
    separator = Separator(model=name, repo=standin_repo, device="cpu", shifts=shifts, segment=segment, progress=False)
    assert streaming.streamable(separator)
    wav = torch.from_numpy(sample_song.generate(4.5, seed=9))  # two or more chunks for every model here
    random.seed(21)
    with torch.inference_mode():
        _, expected = separator.separate_tensor(wav)
    state_after = random.getstate()
    random.seed(21)
    progress: list[int] = []
    files = separation.separate_to_files(separator, wav, shifts, progress.append, tmp_path)
    assert list(files) == list(expected)
    for stem, file in files.items():
        assert torch.equal(read_back(file), expected[stem]), (
            f"{name} shifts={shifts}: stem {stem} streamed differs from demucs {demucs.__version__}'s "
            f"separate_tensor; function/streaming.py mirrors demucs {streaming.DEMUCS_VERSION}"
        )
    assert random.getstate() == state_after, "the global random state must end where apply_model leaves it"
    assert progress == sorted(progress) and progress[-1] == 99


def test_a_bag_holds_no_tensor_with_stems_at_full_length(standin_repo: Path, tmp_path: Path) -> None:
    """The same bound for a bag of four models with a weights matrix: apply_model holds two full-length copies
    (the bag's sum and the current model's output), the streamed bag none. The bound is three chunks here: the
    time-domain Demucs members work at twice the sample rate inside a chunk."""
    separator = Separator(model="mdx", repo=standin_repo, device="cpu", shifts=1, segment=2, progress=False)
    segment_length = 2 * 44100
    wav = torch.from_numpy(sample_song.generate(12.0, seed=8))
    with _LargestPerSample(3 * segment_length) as streamed:
        separation.separate_to_files(separator, wav, 1, lambda p: None, tmp_path)
    assert max(rows for rows, _ in streamed.rows) <= wav.shape[0], streamed.rows
    with _LargestPerSample(3 * segment_length) as in_memory:
        separation.separate(separator, wav, 1, lambda p: None)
    assert max(rows for rows, _ in in_memory.rows) >= len(separator.model.sources) * wav.shape[0]


def spans(wav: torch.Tensor, sizes: Iterator[int]) -> Iterator[torch.Tensor]:
    start = 0
    while start < wav.shape[-1]:
        size = next(sizes)
        yield wav[:, start : start + size]
        start += size


@pytest.mark.parametrize("suffix", ["mp3", "wav", "flac"])
@pytest.mark.parametrize(("seconds", "gain"), [(13.3, 0.5), (7.0, 2.5), (0.01, 1.0)])
def test_encoded_files_are_byte_identical(tmp_path: Path, suffix: str, seconds: float, gain: float) -> None:
    wav = torch.from_numpy(sample_song.generate(seconds, seed=4)) * gain  # gain 2.5 exercises the rescale
    stem = audio.StemFile(tmp_path / "stem.f32", wav.shape[0])
    for span in spans(wav, iter([1, 4097, 100_000] * 100)):  # uneven spans, across the encoders' chunks
        stem.append(span)
    stem.close()
    expected = tmp_path / f"whole.{suffix}"
    if suffix == "flac":  # demucs shells out to ffmpeg for flac; the reference is libsndfile on the whole stem
        frames = prevent_clip(wav, mode="rescale").clamp(-1, 1).t().contiguous().numpy()
        soundfile.write(str(expected), frames, SAMPLERATE, format="FLAC", subtype="PCM_16")
    else:
        save_audio(wav, str(expected), SAMPLERATE, bitrate=320, preset=2)
    audio.encode_file(stem, tmp_path / f"streamed.{suffix}", SAMPLERATE, 320, 2)
    assert (tmp_path / f"streamed.{suffix}").read_bytes() == expected.read_bytes()


class _LargestPerSample(TorchDispatchMode):
    """Records, for every tensor an op returns that is longer than `longer_than` samples, how many values
    it holds per sample of its last axis (the stems x channels it carries at that length)."""

    def __init__(self, longer_than: int) -> None:
        super().__init__()
        self.longer_than = longer_than
        self.rows: list[tuple[int, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        result = func(*args, **(kwargs or {}))
        for out in result if isinstance(result, tuple | list) else (result,):
            if isinstance(out, torch.Tensor) and out.dim() and out.shape[-1] > self.longer_than:
                self.rows.append((out.numel() // out.shape[-1], tuple(out.shape)))
        return result


def test_no_tensor_with_stems_at_full_length(model_repo: Path, tmp_path: Path) -> None:
    """Deterministic memory bound: every tensor longer than two chunks (the song here is 4 chunks long) holds
    at most `channels` values per sample, i.e. it is the input mix or a view of it, never stems. The in-memory
    path is measured the same way to show that the check catches its 4-stem accumulator."""
    shifts = 1  # the shifted path also pads the whole input: the most full-length tensors
    separator = tiny(model_repo, shifts)
    model = separator.model
    segment_length = int(model.samplerate * model.max_allowed_segment)  # a bag of one HTDemucs
    wav = torch.from_numpy(sample_song.generate(24.0, seed=8))
    channels = wav.shape[0]
    with _LargestPerSample(2 * segment_length) as streaming:
        separation.separate_to_files(separator, wav, shifts, lambda p: None, tmp_path)
    assert streaming.rows, "the input itself is longer than two chunks and must be seen"
    assert max(rows for rows, _ in streaming.rows) <= channels, streaming.rows
    with _LargestPerSample(2 * segment_length) as in_memory:
        separation.separate(separator, wav, shifts, lambda p: None)
    assert max(rows for rows, _ in in_memory.rows) >= len(model.sources) * channels


def test_from_the_work_dir_file_no_tensor_holds_the_song(model_repo: Path, tmp_path: Path) -> None:
    """With the song in the work dir, no tensor longer than two chunks holds even the mix: the only one is the
    per-frame mean over channels that the normalisation reduces (one value per sample), freed before the first
    chunk. With the song in memory, the normalised mix and its padded copy are full length (`channels` rows)."""
    shifts = 1
    separator = tiny(model_repo, shifts)
    segment_length = int(separator.model.samplerate * separator.model.max_allowed_segment)
    wav = torch.from_numpy(sample_song.generate(24.0, seed=8))
    with _LargestPerSample(2 * segment_length) as from_file:
        separation.separate_to_files(separator, mix_file(wav, tmp_path / "mix.f32"), shifts, lambda p: None, tmp_path)
    assert from_file.rows and max(rows for rows, _ in from_file.rows) == 1, from_file.rows
    with _LargestPerSample(2 * segment_length) as from_memory, torch.inference_mode():
        separator.separate_tensor(wav)
    assert max(rows for rows, _ in from_memory.rows) >= wav.shape[0]
