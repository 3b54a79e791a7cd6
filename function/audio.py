"""Decode untrusted audio by its content into a model-ready tensor or, chunk by chunk, into a raw file
(`decode_to_file`), and encode stems to mp3/wav/flac."""

from __future__ import annotations

import os
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

from function.errors import Transient, UnprocessableInput

MIN_SAMPLES = 1
# Frames per chunk fed to the MP3 encoder (about 6 s at 44.1 kHz).
MP3_CHUNK_FRAMES = 1 << 18
# `decode_to_file` decodes DECODE_CHUNK_S seconds at a time, each from DECODE_PREROLL_S seconds before its start
# (thrown away: a decoder that seeks into an MP3 needs a few frames to rebuild its state), and checks that the
# last DECODE_GUARD_S seconds of the preroll equal the end of the chunk before; whole seconds, so every boundary
# is a whole sample at any rate.
DECODE_CHUNK_S = 10
DECODE_PREROLL_S = 1
DECODE_GUARD_S = 0.5


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


def _check_duration(path: Path, max_duration_s: float) -> None:
    duration = probe_duration_s(path)
    if duration > max_duration_s:
        raise UnprocessableInput(f"input is {duration:.1f} s long, over MAX_DURATION_S={max_duration_s:g}")


def _checked(data: np.ndarray, source_rate: int, max_duration_s: float, frames_before: int = 0) -> torch.Tensor:
    """`data` ([channels, samples], following `frames_before` already decoded) as a float32 tensor, refused when it
    is empty, takes the song past `max_duration_s` or holds NaN or infinite samples."""
    if data.ndim != 2 or (frames_before == 0 and data.shape[1] < MIN_SAMPLES) or data.shape[0] < 1:
        raise UnprocessableInput(f"input audio has no samples (decoded shape {tuple(data.shape)})")
    if (frames_before + data.shape[1]) / source_rate > max_duration_s:
        raise UnprocessableInput(f"input decodes to over MAX_DURATION_S={max_duration_s:g}")
    if not np.isfinite(data).all():
        raise UnprocessableInput("input audio contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def decode(path: Path, samplerate: int, channels: int, max_duration_s: float) -> torch.Tensor:
    """Decode `path` (mp3, wav, flac or ogg, recognised by content) to float32 [channels, samples]
    at `samplerate`: mono is duplicated, extra channels dropped, other rates resampled."""
    _check_duration(path, max_duration_s)
    data, source_rate = _read(path, max_duration_s)
    wav = _checked(data, source_rate, max_duration_s)
    converted: torch.Tensor = convert_audio(wav, int(source_rate), samplerate, channels)
    return converted


@dataclass
class MixFile:
    """The decoded song as raw interleaved float32 frames on disk ([frames, channels]), read back a span at a time
    with positioned reads (no memory map, whose pages would stay resident as the song is read through)."""

    path: Path
    channels: int
    frames: int
    samplerate: int

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) as a contiguous float32 tensor [channels, stop - start]."""
        start, stop = max(0, start), min(self.frames, stop)
        count = max(0, stop - start)
        if count == 0:
            return torch.zeros(self.channels, 0)
        frame_bytes = 4 * self.channels
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, count * frame_bytes, start * frame_bytes)
        finally:
            os.close(fd)
        if len(raw) != count * frame_bytes:
            raise OSError(f"{self.path} is shorter than its {self.frames} frames")
        return torch.frombuffer(bytearray(raw), dtype=torch.float32).view(count, self.channels).t().contiguous()

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)


class _Unseekable(Exception):
    """The chunked decoder cannot reproduce a whole-file decode of this input (decode it whole instead)."""


def _chunks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """The sample rate of `path` and its samples ([channels, n] per chunk), exactly those of `sphn.read`: chunk k
    is decoded from DECODE_PREROLL_S before its start, the preroll dropped, and the preroll's last DECODE_GUARD_S
    must equal the end of chunk k - 1 (else `_Unseekable`, also raised for any decoder error but the end)."""
    try:
        reader = sphn.FileReader(str(path))
        rate = int(reader.sample_rate)
    except BaseException as err:
        _quiet(err)
        raise _Unseekable from None
    if rate <= 0:
        raise _Unseekable

    def chunks() -> Iterator[np.ndarray]:
        guard = int(DECODE_GUARD_S * rate)
        previous: np.ndarray | None = None
        start = 0
        while True:
            preroll = min(start, DECODE_PREROLL_S)
            try:
                data = reader.decode(float(start - preroll), float(DECODE_CHUNK_S + preroll))
            except BaseException as err:
                _quiet(err)
                if previous is not None and "end of stream" in str(err):
                    return  # the song ended exactly at the end of the chunk before
                raise _Unseekable from None
            skip = preroll * rate
            if previous is not None:
                head = data[:, skip - guard : skip]
                if head.shape != (previous.shape[0], guard) or not np.array_equal(head, previous[:, -guard:]):
                    raise _Unseekable
            chunk = data[:, skip:]
            if chunk.shape[1] > DECODE_CHUNK_S * rate or (previous is None and chunk.shape[1] == 0):
                raise _Unseekable  # more than asked for, or nothing at all (libsndfile may read it): decode whole
            if chunk.shape[1] == 0:
                return
            yield chunk
            if chunk.shape[1] < DECODE_CHUNK_S * rate:
                return
            previous, start = chunk, start + DECODE_CHUNK_S

    return rate, chunks()


def decode_to_file(path: Path, target: Path, samplerate: int, channels: int, max_duration_s: float) -> MixFile:
    """`decode(path, ...)` written to the raw file `target` (a `MixFile`) without holding the song in memory: the
    same samples, decoded and written DECODE_CHUNK_S seconds at a time. Inputs at another sample rate, and those
    the chunked decoder cannot reproduce exactly (an Ogg file, one libsndfile reads), are decoded whole as
    `decode` does and then written out. A failed write (a full work dir) is Transient."""
    _check_duration(path, max_duration_s)
    mix = MixFile(target, channels, 0, samplerate)
    try:
        with target.open("wb") as out:
            try:
                rate, chunks = _chunks(path)
                if rate != samplerate:
                    raise _Unseekable
                for data in chunks:
                    wav = convert_audio(_checked(data, rate, max_duration_s, mix.frames), rate, samplerate, channels)
                    out.write(wav.t().contiguous().numpy().tobytes())
                    mix.frames += wav.shape[-1]
            except _Unseekable:
                out.seek(0)
                out.truncate()
                wav = decode(path, samplerate, channels, max_duration_s)
                for start in range(0, wav.shape[-1], MP3_CHUNK_FRAMES):
                    out.write(wav[:, start : start + MP3_CHUNK_FRAMES].t().contiguous().numpy().tobytes())
                mix.frames = wav.shape[-1]
                del wav
    except OSError as err:
        target.unlink(missing_ok=True)
        raise Transient(f"cannot write the decoded input to the work dir: {err}") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return mix


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


def _write_mp3(
    chunks: Iterator[torch.Tensor],
    scale: torch.Tensor | int,
    path: Path,
    samplerate: int,
    channels: int,
    bitrate: int,
    preset: int,
) -> None:
    # LAME's output does not depend on how the input is split (tests compare against demucs' one-shot encode).
    encoder = _lame_encoder(samplerate, channels, bitrate, preset)
    with path.open("wb") as out:
        for chunk in chunks:
            part = (chunk / scale).clamp_(-1, 1).mul_(2**15 - 1).short()
            out.write(encoder.encode(part.t().contiguous().cpu().numpy().tobytes()))
        out.write(encoder.flush())


def _write_wav(
    chunks: Iterator[torch.Tensor], scale: torch.Tensor | int, path: Path, samplerate: int, channels: int, frames: int
) -> None:
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


def _write_flac(
    chunks: Iterator[torch.Tensor], scale: torch.Tensor | int, path: Path, samplerate: int, channels: int
) -> None:
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
