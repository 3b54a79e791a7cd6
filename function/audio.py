"""Decode untrusted audio by its content into a model-ready tensor, and encode stems to mp3/wav/flac."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import lameenc
import numpy as np
import soundfile
import sphn
import torch
from demucs.audio import convert_audio

from function.errors import UnprocessableInput

MIN_SAMPLES = 1
# Frames per chunk fed to the MP3 encoder (about 6 s at 44.1 kHz).
MP3_CHUNK_FRAMES = 1 << 18


def _quiet(err: BaseException) -> None:
    """Re-raise what must never be swallowed; a panic in the Rust decoder is a BaseException."""
    if isinstance(err, KeyboardInterrupt | SystemExit):
        raise err


def _libsndfile_reason(err: Exception) -> str:
    # The message of a LibsndfileError starts with the temp file's path; only the library's reason is kept.
    return str(getattr(err, "error_string", None) or type(err).__name__)


def probe_duration_s(path: Path) -> float:
    """Duration from the container headers, without decoding the samples.

    symphonia (sphn) is asked first; libsndfile is the fallback, since symphonia finds no frames in MP3s
    shorter than about 0.4 s and libsndfile reads those."""
    try:
        (duration,) = sphn.durations([str(path)])
    except BaseException as err:
        _quiet(err)
        duration = None
    if duration is not None:
        return float(duration)
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError) as err:
        raise UnprocessableInput(
            f"input is not decodable audio (no audio stream found: {_libsndfile_reason(err)})"
        ) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise UnprocessableInput("input is not decodable audio (no audio stream found)")
    return float(info.frames / info.samplerate)


def _read(path: Path, max_duration_s: float) -> tuple[np.ndarray, int]:
    """Samples [channels, frames] and their rate: symphonia first, libsndfile for what it cannot read."""
    try:
        data, rate = sphn.read(str(path))
        return data, int(rate)
    except BaseException as err:
        _quiet(err)
    try:
        rate = soundfile.info(str(path)).samplerate
        # Read at most one frame past the limit, so a lying header can not make us allocate more.
        frames = int(max_duration_s * rate) + 1
        data, rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as err:
        raise UnprocessableInput(f"input audio cannot be decoded: {_libsndfile_reason(err)}") from None
    return data.T, int(rate)


def decode(path: Path, samplerate: int, channels: int, max_duration_s: float) -> torch.Tensor:
    """Decode `path` (mp3, wav, flac or ogg, recognised by content) to float32 [channels, samples]
    at `samplerate`: mono is duplicated, extra channels dropped, other rates resampled."""
    duration = probe_duration_s(path)
    if duration > max_duration_s:
        raise UnprocessableInput(f"input is {duration:.1f} s long, over MAX_DURATION_S={max_duration_s:g}")
    data, source_rate = _read(path, max_duration_s)
    if data.ndim != 2 or data.shape[1] < MIN_SAMPLES or data.shape[0] < 1:
        raise UnprocessableInput(f"input audio has no samples (decoded shape {tuple(data.shape)})")
    if data.shape[1] / source_rate > max_duration_s:
        raise UnprocessableInput(f"input decodes to over MAX_DURATION_S={max_duration_s:g}")
    if not np.isfinite(data).all():
        raise UnprocessableInput("input audio contains NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    converted: torch.Tensor = convert_audio(wav, int(source_rate), samplerate, channels)
    return converted


def _rescale(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor | int:
    """demucs' `prevent_clip(mode="rescale")` divisor from a stem's min and max: `max(1.01 * |wav|.max(), 1)`
    (max(-min, max) is |wav|.max() exactly, so no |wav| copy is needed)."""
    # The builtin max of a 0-d tensor and an int returns one of the two, as demucs computes it.
    return cast("torch.Tensor | int", max(1.01 * torch.maximum(-low, high), 1))


def _lame_encoder(samplerate: int, channels: int, bitrate: int, preset: int) -> lameenc.Encoder:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(channels)
    encoder.set_quality(preset)
    encoder.silence()
    return encoder


def _write_mp3(chunks: Iterator[torch.Tensor], scale: torch.Tensor | int, path: Path, samplerate: int,
               channels: int, bitrate: int, preset: int) -> None:
    # LAME's output does not depend on how the input is split (tests compare against demucs' one-shot encode).
    encoder = _lame_encoder(samplerate, channels, bitrate, preset)
    with path.open("wb") as out:
        for chunk in chunks:
            part = (chunk / scale).clamp_(-1, 1).mul_(2**15 - 1).short()
            out.write(encoder.encode(part.t().contiguous().cpu().numpy().tobytes()))
        out.write(encoder.flush())


def _write_wav(chunks: Iterator[torch.Tensor], scale: torch.Tensor | int, path: Path, samplerate: int,
               channels: int, frames: int) -> None:
    """demucs' `encode_wav` (16-bit PCM, its exact header and float-to-int16 truncation), one chunk at a time."""
    data_size = frames * channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, samplerate, samplerate * channels * 2, channels * 2, 16)
    with path.open("wb") as out:
        out.write(b"RIFF" + struct.pack("<I", 4 + (8 + len(fmt)) + (8 + data_size)) + b"WAVE")
        out.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        out.write(b"data" + struct.pack("<I", data_size))
        for chunk in chunks:
            pcm = (chunk / scale).clamp(-1, 1).t().contiguous().cpu().numpy()
            out.write((pcm * (2**15 - 1)).astype("<i2").tobytes())


def _write_flac(chunks: Iterator[torch.Tensor], scale: torch.Tensor | int, path: Path, samplerate: int,
                channels: int) -> None:
    """FLAC through libsndfile (PCM_16; demucs would shell out to ffmpeg), one chunk at a time."""
    with soundfile.SoundFile(str(path), "w", samplerate, channels, format="FLAC", subtype="PCM_16") as out:
        for chunk in chunks:
            out.write((chunk / scale).clamp(-1, 1).t().contiguous().cpu().numpy())


@dataclass
class StemFile:
    """One stem as raw interleaved float32 frames on disk, with what encoding needs: its shape and its peak.

    Append spans with `append` (each [channels, n]) and `close` it; `encode_file` then writes the stem
    without ever holding it whole in memory."""

    path: Path
    channels: int
    frames: int = 0
    low: torch.Tensor = field(default_factory=lambda: torch.tensor(float("inf")))
    high: torch.Tensor = field(default_factory=lambda: torch.tensor(float("-inf")))
    _file: BinaryIO | None = None

    def append(self, span: torch.Tensor) -> None:
        if span.shape[-1] == 0:
            return
        if self._file is None:
            self._file = self.path.open("wb")
        low, high = torch.aminmax(span)
        # min and max are exact, so tracking them span by span gives the same peak as over the whole stem.
        self.low, self.high = torch.minimum(self.low, low.cpu()), torch.maximum(self.high, high.cpu())
        self._file.write(span.float().t().contiguous().cpu().numpy().tobytes())
        self.frames += span.shape[-1]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def chunks(self, chunk_frames: int = MP3_CHUNK_FRAMES) -> Iterator[torch.Tensor]:
        """The stem back, [channels, <= chunk_frames] at a time."""
        with self.path.open("rb") as raw:
            for start in range(0, self.frames, chunk_frames):
                count = min(chunk_frames, self.frames - start)
                data = np.fromfile(raw, dtype=np.float32, count=count * self.channels)
                yield torch.from_numpy(data.reshape(count, self.channels)).t()

    def unlink(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def encode_file(stem: StemFile, path: Path, samplerate: int, mp3_bitrate: int, mp3_preset: int) -> None:
    """Write `stem` (a closed StemFile) to `path`, the format following its suffix, read and converted one chunk
    at a time: for .mp3 and .wav the same bytes as demucs' `save_audio(..., clip="rescale")` of the whole stem;
    .flac is 16-bit PCM rescaled the same way."""
    if stem.frames == 0:
        raise UnprocessableInput("stem has no samples")
    scale = _rescale(stem.low, stem.high)
    suffix = path.suffix.lower()
    if suffix == ".mp3":
        _write_mp3(stem.chunks(), scale, path, samplerate, stem.channels, mp3_bitrate, mp3_preset)
    elif suffix == ".wav":
        _write_wav(stem.chunks(), scale, path, samplerate, stem.channels, stem.frames)
    elif suffix == ".flac":
        _write_flac(stem.chunks(), scale, path, samplerate, stem.channels)
    else:
        raise ValueError(f"Invalid suffix for path: {suffix}")
