"""`audio.decode_to_file` writes the song to the work dir chunk by chunk: the frames it writes must be exactly those
of `audio.decode` (the whole-file decode), for every format and layout the worker takes, including the ones it
decodes whole (another sample rate, Ogg), and its refusals must be those of `decode`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from function import audio
from function.errors import UnprocessableInput
from workbench import sample_song

SAMPLERATE = 44100
CHUNK = audio.DECODE_CHUNK_S * SAMPLERATE


def _write(path: Path, wav: np.ndarray, rate: int = SAMPLERATE) -> Path:
    if path.suffix == ".mp3":
        path.write_bytes(sample_song.mp3_bytes(wav, samplerate=rate))
    elif path.suffix == ".ogg":
        soundfile.write(str(path), wav.T, rate, format="OGG")
    else:
        soundfile.write(str(path), wav.T, rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_16")
    return path


@pytest.mark.parametrize(
    ("name", "seconds", "rate", "channels", "whole"),
    [
        ("song.mp3", 25.3, SAMPLERATE, 2, False),  # three chunks, each after the first from a preroll
        ("mono.mp3", 12.0, SAMPLERATE, 1, False),  # mono, duplicated chunk by chunk
        ("song.wav", 20.0, SAMPLERATE, 2, False),  # ends exactly on a chunk boundary
        ("song.flac", 10.5, SAMPLERATE, 2, False),
        ("song48k.mp3", 12.0, 48000, 2, True),  # another rate: decoded whole, resampled, written
        ("song.ogg", 12.0, SAMPLERATE, 2, True),  # Ogg: decoded whole (Vorbis seeks are not sample-exact)
        ("short.mp3", 0.2, SAMPLERATE, 2, True),  # shorter than symphonia reads: libsndfile, whole
    ],
)
def test_the_file_holds_exactly_what_decode_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, seconds: float, rate: int, channels: int, whole: bool
) -> None:
    wav = sample_song.generate(seconds, samplerate=rate, seed=3)[:channels] * 0.8
    source = _write(tmp_path / name, wav, rate)
    expected = audio.decode(source, SAMPLERATE, 2, 1e9)
    if not whole:  # these are decoded chunk by chunk: the whole-file decode must not be used
        monkeypatch.setattr(audio, "decode", None)
    mix = audio.decode_to_file(source, tmp_path / "mix.f32", SAMPLERATE, 2, 1e9)
    assert (mix.channels, mix.frames, mix.samplerate) == (2, expected.shape[-1], SAMPLERATE)
    assert (tmp_path / "mix.f32").stat().st_size == 4 * 2 * mix.frames
    assert torch.equal(mix.read(0, mix.frames), expected)
    # Reads of any span, across chunk boundaries and past either end, are slices of the whole.
    for start, stop in [(0, 1), (CHUNK - 7, CHUNK + 9), (mix.frames - 3, mix.frames + 50), (-5, 4)]:
        assert torch.equal(mix.read(start, stop), expected[:, max(0, start) : stop])


def test_a_long_mp3_is_decoded_in_chunks_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many chunk boundaries (1 s chunks), so any seam where the seeking decoder differs would show."""
    monkeypatch.setattr(audio, "DECODE_CHUNK_S", 1)
    source = tmp_path / "song.mp3"
    source.write_bytes(sample_song.song_mp3(15.7, seed=2))
    expected = audio.decode(source, SAMPLERATE, 2, 1e9)
    mix = audio.decode_to_file(source, tmp_path / "mix.f32", SAMPLERATE, 2, 1e9)
    assert torch.equal(mix.read(0, mix.frames), expected)


def test_a_seam_that_does_not_match_falls_back_to_the_whole_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder whose seeks land elsewhere (simulated: every seeked decode is off by one frame) is caught by
    the guard, and the file is then written from the whole-file decode."""
    source = _write(tmp_path / "song.wav", sample_song.generate(23.0, seed=4))
    real = audio.sphn.FileReader

    class Shifted:
        def __init__(self, path: str) -> None:
            self._reader = real(path)
            self.sample_rate = self._reader.sample_rate

        def decode(self, start: float, duration: float) -> np.ndarray:
            data = self._reader.decode(start, duration)
            return data if start == 0 else data[:, 1:]

    monkeypatch.setattr(audio.sphn, "FileReader", Shifted)
    mix = audio.decode_to_file(source, tmp_path / "mix.f32", SAMPLERATE, 2, 1e9)
    assert torch.equal(mix.read(0, mix.frames), audio.decode(source, SAMPLERATE, 2, 1e9))


def test_refusals_are_those_of_decode_and_leave_no_file(tmp_path: Path) -> None:
    wav = sample_song.generate(14.0, seed=5)
    wav[1, 12 * SAMPLERATE] = np.nan  # in the second chunk
    source = _write(tmp_path / "nan.wav", wav)
    with pytest.raises(UnprocessableInput, match="NaN"):
        audio.decode_to_file(source, tmp_path / "mix.f32", SAMPLERATE, 2, 1e9)
    assert not (tmp_path / "mix.f32").exists()
    long = _write(tmp_path / "long.wav", sample_song.generate(12.0, seed=5))
    with pytest.raises(UnprocessableInput, match="over MAX_DURATION_S=11"):
        audio.decode_to_file(long, tmp_path / "mix.f32", SAMPLERATE, 2, 11)
    assert not (tmp_path / "mix.f32").exists()
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"\x00not audio" * 100)
    with pytest.raises(UnprocessableInput):
        audio.decode_to_file(garbage, tmp_path / "mix.f32", SAMPLERATE, 2, 1e9)
    assert not (tmp_path / "mix.f32").exists()
