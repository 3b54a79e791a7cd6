"""A short generated song (bass, drums, chords, a voice-like line) for the demo, tests and benchmarks."""

from __future__ import annotations

import io

import lameenc
import numpy as np
import soundfile


def generate(seconds: float = 5.0, samplerate: int = 44100, seed: int = 0) -> np.ndarray:
    """Stereo float32 [2, samples] in [-1, 1]: four musical parts mixed, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * samplerate)) / samplerate
    beat = 0.5  # 120 bpm
    bass = 0.25 * np.sin(2 * np.pi * 55 * (1 + (np.floor(t / (4 * beat)) % 2) * 0.5) * t)
    phase = (t % beat) / beat
    kick = 0.6 * np.sin(2 * np.pi * 60 * t) * np.exp(-phase * 18)
    hats = 0.08 * rng.standard_normal(t.size) * np.exp(-(((t + beat / 2) % beat) / beat) * 40)
    chords = sum(0.06 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * 5 * t)
    voice = 0.15 * np.sin(2 * np.pi * 440 * vibrato * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    left = bass + kick + hats + chords + 0.8 * voice
    right = bass + kick + 0.7 * hats + 1.2 * chords + voice
    mix = np.stack([left, right]).astype(np.float32)
    return mix / max(1.0, float(np.abs(mix).max()) * 1.05)


def mp3_bytes(wav: np.ndarray, samplerate: int = 44100, bitrate: int = 192) -> bytes:
    """Encode [channels, samples] float audio as MP3."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(wav.shape[0])
    encoder.set_quality(2)
    encoder.silence()
    pcm = (np.clip(wav, -1, 1).T * 32767).astype("<i2")
    return bytes(encoder.encode(pcm.tobytes()) + encoder.flush())


def wav_bytes(wav: np.ndarray, samplerate: int = 44100, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """Encode [channels, samples] float audio with libsndfile (WAV or FLAC)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, wav.T, samplerate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def song_mp3(seconds: float = 5.0, seed: int = 0) -> bytes:
    return mp3_bytes(generate(seconds, seed=seed))
