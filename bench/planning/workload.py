"""What arrives: push times (constant or diurnal rate), song lengths and which songs are cache hits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DAY_S = 86_400.0
# Grid points for inverting the cumulative rate; piecewise-linear error is far below a poll interval.
_GRID_POINTS = 20_001


@dataclass(frozen=True)
class RateProfile:
    """Messages per second over `duration_s`: constant, or a sinusoid over a day with peak/mean = `peak_ratio`.

    The diurnal rate is mean * (1 - a cos(2 pi t / day)) with a = peak_ratio - 1: it starts at its trough, so
    a one-day run climbs to the peak at mid-day and falls back.
    """

    mean_per_s: float
    duration_s: float
    peak_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.mean_per_s <= 0 or self.duration_s <= 0:
            raise ValueError("the rate and the duration must be > 0")
        if not 1.0 <= self.peak_ratio <= 2.0:
            raise ValueError(f"peak/mean must be within [1, 2] for a sinusoid that stays >= 0, got {self.peak_ratio}")

    def rate(self, t: np.ndarray) -> np.ndarray:
        amplitude = self.peak_ratio - 1.0
        return self.mean_per_s * (1.0 - amplitude * np.cos(2 * math.pi * t / DAY_S))

    def cumulative(self, t: np.ndarray) -> np.ndarray:
        """Expected arrivals in [0, t]: the integral of `rate`."""
        amplitude = self.peak_ratio - 1.0
        return self.mean_per_s * (t - amplitude * DAY_S / (2 * math.pi) * np.sin(2 * math.pi * t / DAY_S))

    def invert(self, counts: np.ndarray) -> np.ndarray:
        """Times at which the cumulative rate reaches `counts` (a time change of a unit-rate process)."""
        grid = np.linspace(0.0, self.duration_s, _GRID_POINTS)
        return np.interp(counts, self.cumulative(grid), grid)


def arrival_times(profile: RateProfile, process: str, rng: np.random.Generator) -> np.ndarray:
    """Sorted push times: `poisson` (random, the usual model of independent users) or `uniform` (evenly spread
    in expected count, for hand-checkable runs)."""
    total = float(profile.cumulative(np.array([profile.duration_s]))[0])
    if process == "uniform":
        return profile.invert(np.arange(round(total)) + 0.5)
    if process != "poisson":
        raise ValueError(f"arrival process must be poisson or uniform, got {process!r}")
    count = rng.poisson(total)
    # Sorted uniforms in expected-count space are the points of a Poisson process given their number.
    return profile.invert(np.sort(rng.uniform(0.0, total, count)))


@dataclass(frozen=True)
class SongLengths:
    """Seconds of audio per song: `fixed` (the mean), `lognormal` (mean and sd) or `empirical` (drawn from values)."""

    kind: str = "fixed"
    mean_s: float = 240.0
    sd_s: float = 0.0
    values: tuple[float, ...] = ()

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(count, self.mean_s)
        if self.kind == "lognormal":
            sigma2 = math.log(1.0 + (self.sd_s / self.mean_s) ** 2)
            return rng.lognormal(math.log(self.mean_s) - sigma2 / 2, math.sqrt(sigma2), count)
        if self.kind == "empirical":
            if not self.values:
                raise ValueError("empirical song lengths need at least one value")
            return rng.choice(np.asarray(self.values, dtype=float), count)
        raise ValueError(f"song length kind must be fixed, lognormal or empirical, got {self.kind!r}")


@dataclass(frozen=True)
class Workload:
    """Per message, in push order: push time, seconds of work once claimed, and whether it needs the model.

    A cache hit's work is the fixed hit time and needs no model, so a pod serving only hits never loads it.
    """

    arrivals: np.ndarray
    work_s: np.ndarray
    needs_model: np.ndarray
    audio_s: np.ndarray

    def __len__(self) -> int:
        return len(self.arrivals)


def build_workload(
    arrivals: np.ndarray,
    audio_s: np.ndarray,
    seconds_per_audio_s: float,
    hit_rate: float,
    hit_s: float,
    rng: np.random.Generator,
) -> Workload:
    """Turn songs into work: a miss costs `seconds_per_audio_s` per second of audio, a hit costs `hit_s`."""
    if not 0.0 <= hit_rate <= 1.0:
        raise ValueError(f"the cache hit rate must be within [0, 1], got {hit_rate}")
    hits = rng.random(len(arrivals)) < hit_rate
    work = np.where(hits, hit_s, audio_s * seconds_per_audio_s)
    return Workload(arrivals=arrivals, work_s=work, needs_model=~hits, audio_s=audio_s)
