"""Decode untrusted audio by its content into a model-ready tensor, and encode stems to mp3/wav/flac."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import sphn
import torch
from demucs.audio import convert_audio, prevent_clip, save_audio

from function.errors import UnprocessableInput

MIN_SAMPLES = 1


def probe_duration_s(path: Path) -> float:
    """Duration from the container headers, without decoding the samples."""
    try:
        (duration,) = sphn.durations([str(path)])
    except BaseException as err:  # a panic in the Rust decoder is a BaseException
        if isinstance(err, KeyboardInterrupt | SystemExit):
            raise
        raise UnprocessableInput(f"input is not decodable audio: {err}") from None
    if duration is None:
        raise UnprocessableInput("input is not decodable audio (no audio stream found)")
    return float(duration)


def decode(path: Path, samplerate: int, channels: int, max_duration_s: float) -> torch.Tensor:
    """Decode `path` (mp3, wav, flac or ogg, recognised by content) to float32 [channels, samples]
    at `samplerate`: mono is duplicated, extra channels dropped, other rates resampled."""
    duration = probe_duration_s(path)
    if duration > max_duration_s:
        raise UnprocessableInput(f"input is {duration:.1f} s long, over MAX_DURATION_SECONDS={max_duration_s:g}")
    try:
        data, source_rate = sphn.read(str(path))
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt | SystemExit):
            raise
        raise UnprocessableInput(f"input audio cannot be decoded: {err}") from None
    if data.ndim != 2 or data.shape[1] < MIN_SAMPLES or data.shape[0] < 1:
        raise UnprocessableInput(f"input audio has no samples (decoded shape {tuple(data.shape)})")
    if data.shape[1] / source_rate > max_duration_s:
        raise UnprocessableInput(f"input decodes to over MAX_DURATION_SECONDS={max_duration_s:g}")
    if not np.isfinite(data).all():
        raise UnprocessableInput("input audio contains NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return convert_audio(wav, int(source_rate), samplerate, channels)


def encode(wav: torch.Tensor, path: Path, samplerate: int, mp3_bitrate: int, mp3_preset: int) -> None:
    """Write one stem; the format follows the suffix of `path` (.mp3, .wav or .flac), clipping
    prevented by rescaling exactly as the demucs CLI does."""
    suffix = path.suffix.lower()
    if suffix == ".flac":
        # demucs shells out to an ffmpeg binary for flac; libsndfile writes it in-process.
        frames = prevent_clip(wav, mode="rescale").clamp(-1, 1).t().contiguous().cpu().numpy()
        soundfile.write(str(path), frames, samplerate, format="FLAC", subtype="PCM_16")
        return
    save_audio(wav, str(path), samplerate=samplerate, bitrate=mp3_bitrate, preset=mp3_preset)  # type: ignore[arg-type]
