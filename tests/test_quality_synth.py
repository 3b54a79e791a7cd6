"""The quality gate's synthetic songs (bench/quality/synth.py) and its SDR (bench/quality/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.quality import metrics, synth


def band_fraction(signal: np.ndarray, low: float, high: float) -> float:
    """Share of the energy of `signal` ([..., T], channels summed) between `low` and `high` Hz."""
    power = np.abs(np.fft.rfft(np.asarray(signal, dtype=np.float64), axis=-1)) ** 2
    power = power.reshape(-1, power.shape[-1]).sum(axis=0)
    freqs = np.fft.rfftfreq(np.asarray(signal).shape[-1], 1 / synth.SAMPLERATE)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def test_same_seed_same_song_other_seed_other_song() -> None:
    mix, stems = synth.make_example(11, 1.0)
    again_mix, again_stems = synth.make_example(11, 1.0)
    other_mix, _ = synth.make_example(12, 1.0)
    assert np.array_equal(mix, again_mix) and np.array_equal(stems, again_stems)
    assert not np.allclose(mix, other_mix)


def test_shapes_and_stems_sum_to_mix() -> None:
    mix, stems = synth.make_example(3, 1.5)
    samples = round(1.5 * synth.SAMPLERATE)
    assert mix.shape == (2, samples) and stems.shape == (len(synth.SOURCES), 2, samples)
    assert mix.dtype == stems.dtype == np.float32
    assert np.array_equal(mix, stems.sum(axis=0))
    assert 0.4 < np.abs(mix).max() < 1.0  # headroom, never clipping
    assert all(np.sqrt(np.mean(stem**2)) > 1e-3 for stem in stems)  # every part plays


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_stem_sits_in_its_band(seed: int) -> None:
    _, stems = synth.make_example(seed, 2.0)
    parts = dict(zip(synth.SOURCES, stems, strict=True))
    assert band_fraction(parts["bass"], 0, 300) > 0.85
    assert band_fraction(parts["vocals"], 250, 6000) > 0.9
    assert band_fraction(parts["other"], 120, 8000) > 0.9


def test_drum_voices_sit_in_their_bands() -> None:
    rng = np.random.default_rng(0)
    assert band_fraction(synth.hat(rng, open_hat=False), 5000, synth.SAMPLERATE) > 0.9
    assert band_fraction(synth.hat(rng, open_hat=True), 5000, synth.SAMPLERATE) > 0.9
    assert band_fraction(synth.kick(rng), 0, 250) > 0.9


def test_sdr_on_known_cases() -> None:
    s = np.random.default_rng(0).standard_normal((2, 1000))
    assert metrics.sdr(s, s) == math.inf
    assert metrics.sdr(s, np.zeros_like(s)) == pytest.approx(0.0)  # error == signal
    assert metrics.sdr(s, 2 * s) == pytest.approx(0.0)
    assert metrics.sdr(s, 1.1 * s) == pytest.approx(20.0)  # error 0.1 s: 10 log10(1 / 0.01)
    noise = np.random.default_rng(1).standard_normal((2, 1000))
    noise *= np.linalg.norm(s) / np.linalg.norm(noise) / math.sqrt(10)  # ||n||^2 = ||s||^2 / 10
    assert metrics.sdr(s, s + noise) == pytest.approx(10.0)
    assert metrics.sdr(np.zeros(4), np.ones(4)) == -math.inf
