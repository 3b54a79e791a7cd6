"""SDR and the separation call shared by training (held-out monitoring) and the gate."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from demucs.apply import apply_model

# Disjoint seed ranges: training draws from TRAIN_SEED_BASE upwards, training picks its checkpoint on
# VALID_SEEDS, and the gate measures on GATE_SEEDS, which neither training nor checkpoint selection saw.
TRAIN_SEED_BASE = 1_000_000
VALID_SEEDS = range(100, 104)
GATE_SEEDS = range(200, 220)


def sdr(reference: npt.ArrayLike, estimate: npt.ArrayLike) -> float:
    """10 log10(||s||^2 / ||s - ŝ||^2) over all channels and samples, in dB (inf for a perfect estimate)."""
    s = np.asarray(reference, dtype=np.float64)
    error = float(np.sum((s - np.asarray(estimate, dtype=np.float64)) ** 2))
    signal = float(np.sum(s**2))
    if error == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / error) if signal > 0 else -math.inf


def separate(model: torch.nn.Module, mix: torch.Tensor) -> torch.Tensor:
    """[sources, channels, T] stems of `mix` ([channels, T]) exactly as `demucs.api.Separator.separate_tensor`
    does it with shifts=0 (normalise by the mono mix, split into overlapping segments, de-normalise), without
    needing the model on disk: training monitors its held-out SDR this way."""
    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    out = apply_model(model, ((mix - mean) / std)[None], shifts=0, split=True, overlap=0.25, progress=False)
    return out[0] * std + mean
