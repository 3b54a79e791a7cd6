"""A streaming re-implementation of demucs' `apply_model`, fenced off here because it mirrors demucs internals.

It MIRRORS demucs 4.1.0 (`DEMUCS_VERSION`): `demucs.apply.apply_model` as `demucs.api.Separator.separate_tensor`
calls it (the bag of models, the shift trick and the split loop), and eight private `Separator` fields
(`_model`, `_device`, `_shifts`, `_overlap`, `_split`, `_segment`, `_callback`, `_callback_arg`). pyproject.toml
pins demucs to that version, and tests/test_streaming.py fails loudly, naming both versions, when the installed
demucs differs or the streamed stems stop being bit-identical to `separate_tensor`'s. Upgrading demucs means
re-checking this file against the new `apply_model` first.

Why it exists: `apply_model` accumulates every stem at full length (stems x channels x float32 per sample)
before returning, and for a bag of models it holds two such copies (the bag's sum and the current model's
output); streaming writes each finished span out, so memory stays bounded by the input, whatever the model.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from demucs.api import Separator
from demucs.apply import BagOfModels, TensorChunk, _replace_dict, apply_model

# The demucs release whose apply_model this module mirrors, sample for sample.
DEMUCS_VERSION = "4.1.0"

Sink = Callable[[dict[str, torch.Tensor]], None]


def streamable(separator: Separator) -> bool:
    """Whether `stream_apply_model` serves `separator`: every model, bag and shift count, with split=True (the
    worker's setting; split=False runs the whole song as one chunk, and streaming would gain nothing)."""
    return bool(separator._split)


@dataclass
class _Pass:
    """One split pass of apply_model: one model of the bag at one shift (or unshifted), over `source`."""

    model: Any
    source: TensorChunk
    skip: int  # leading samples of this pass's output that belong to the shift padding
    buffered: list[torch.Tensor] = field(default_factory=list)  # finished output spans not yet combined
    frames: int = 0  # samples in `buffered`


def _passes(separator: Separator, mix: torch.Tensor) -> tuple[list[list[_Pass]], list[list[float]] | None]:
    """Every pass apply_model would run, grouped by model, and the bag's weights (None for a single model).
    The shift offsets are drawn here, in apply_model's order (every shift of model 0, then of model 1, ...)."""
    bag = separator._model
    models = list(bag.models) if isinstance(bag, BagOfModels) else [bag]
    weights = [list(row) for row in bag.weights] if isinstance(bag, BagOfModels) else None
    length = mix.shape[-1]
    shifts = separator._shifts
    padded: dict[int, torch.Tensor] = {}  # one padded copy of the input per shift width (models share it)
    grouped: list[list[_Pass]] = []
    for model in models:
        if not shifts:
            grouped.append([_Pass(model, TensorChunk(mix), 0)])
            continue
        max_shift = int(0.5 * model.samplerate)
        if max_shift not in padded:
            padded[max_shift] = TensorChunk(mix).padded(length + 2 * max_shift)
        runs = []
        for _ in range(shifts):
            offset = random.randint(0, max_shift)  # the draw apply_model makes
            runs.append(_Pass(model, TensorChunk(padded[max_shift], offset, length + max_shift - offset),
                              max_shift - offset))
        grouped.append(runs)
    return grouped, weights


def _spans(separator: Separator, run: _Pass, device: torch.device, callback: Callable[[dict], None] | None,
           callback_arg: dict[str, Any]) -> Iterator[torch.Tensor]:
    """apply_model's split loop for one pass, in order, with one chunk of overlap-add buffer: yields the pass's
    normalised output ([1, sources, channels, n], the padding of a shift already cut off) span by span, each as
    soon as no later chunk can add to it. The same chunk grid, `TensorChunk` padding context, triangular weights,
    inner `apply_model` call per chunk, and float operations per sample in the same order (0 + w1*c1 + w2*c2...,
    then / weight sum) as demucs."""
    model, source = run.model, run.source
    total = source.length
    segment = separator._segment if separator._segment is not None else model.segment
    segment_length = int(model.samplerate * segment)
    stride = int((1 - separator._overlap) * segment_length)
    weight = torch.cat([torch.arange(1, segment_length // 2 + 1, device=device),
                        torch.arange(segment_length - segment_length // 2, 0, -1, device=device)])
    weight = (weight / weight.max()) ** 1.0
    lock = threading.Lock()
    channels = source.shape[1]
    out = torch.zeros(1, len(model.sources), channels, segment_length, device=source.device)
    sum_weight = torch.zeros(segment_length, device=source.device)
    for offset in range(0, total, stride):
        chunk_out = apply_model(
            model, TensorChunk(source, offset, segment_length), shifts=0, split=False,
            overlap=separator._overlap, transition_power=1.0, progress=False, device=device,
            segment=separator._segment, lock=lock, callback_arg=callback_arg,
            callback=(lambda d, i=offset: callback(_replace_dict(d, ("segment_offset", i))) if callback else None),
        )
        chunk_length = chunk_out.shape[-1]
        out[..., :chunk_length] += (weight[:chunk_length] * chunk_out).to(source.device)
        sum_weight[:chunk_length] += weight[:chunk_length].to(source.device)
        del chunk_out
        last = offset + stride >= total
        ready = total - offset if last else stride  # no later chunk starts before offset + stride
        start = max(0, run.skip - offset)
        if start < ready:
            yield (out[..., :ready] / sum_weight[:ready])[..., start:]
        if not last:
            # Slide the window by one stride: values move unchanged and the new tail starts at 0, as in apply_model.
            out = torch.cat([out[..., stride:], torch.zeros_like(out[..., :stride])], -1)
            sum_weight = torch.cat([sum_weight[stride:], torch.zeros_like(sum_weight[:stride])])


def _take(run: _Pass, frames: int) -> torch.Tensor:
    """The first `frames` buffered samples of `run`, removed from its buffer."""
    joined = run.buffered[0] if len(run.buffered) == 1 else torch.cat(run.buffered, -1)
    head, rest = joined[..., :frames], joined[..., frames:]
    run.buffered = [rest] if rest.shape[-1] else []
    run.frames -= frames
    return head


def _combine(grouped: list[list[_Pass]], weights: list[list[float]] | None, shifts: int, frames: int) -> torch.Tensor:
    """The next `frames` samples of apply_model's result, from every pass's buffer, with its float operations in
    its order: per model `0. + shift_1 + shift_2 ...` then `/ shifts`; per bag `0. + w_1 * model_1 + ...` then
    `/ (0. + w_1 + w_2 ...)` per source."""
    estimates: float | torch.Tensor = 0.0
    totals = [0.0] * (len(weights[0]) if weights else 0)
    for index, runs in enumerate(grouped):
        if shifts:
            out: float | torch.Tensor = 0.0
            for run in runs:
                out += _take(run, frames)
            out /= shifts
        else:
            out = _take(runs[0], frames)
        assert isinstance(out, torch.Tensor)
        if weights is None:
            return out
        for k, inst_weight in enumerate(weights[index]):
            out[:, k, :, :] *= inst_weight
            totals[k] += inst_weight
        estimates += out
    assert isinstance(estimates, torch.Tensor)
    for k in range(estimates.shape[1]):
        estimates[:, k, :, :] /= totals[k]
    return estimates


def stream_apply_model(separator: Separator, wav: torch.Tensor, sink: Sink) -> None:
    """`separator.separate_tensor(wav)`, streamed: `sink` gets every span of the de-normalised stems (name ->
    [channels, n]), in order, as soon as every pass of every model has finished it.

    Exact by construction against demucs 4.1.0: the same normalisation, the same `random` draws for the shifts,
    each pass's split loop (`_spans`) and the bag's weighted sum (`_combine`) with the same float operations per
    sample, then `* std + mean`. The passes run interleaved, chunk by chunk, so only about one chunk per pass is
    held; with a GPU every model of a bag stays on the device (apply_model moves each one back after its pass).
    Progress: with one pass the separator's callback gets exactly apply_model's calls; with several (a bag, or
    shifts > 1) it gets one `state: end` call per combined span, as from one unshifted model (`shifts: 1`) whose
    `segment_offset` is the last sample written, so the percentage follows the song.
    """
    reference = wav.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    del reference
    mix = ((wav - mean) / std)[None]
    length = mix.shape[-1]
    grouped, weights = _passes(separator, mix)
    del mix  # the passes hold the input (or its padded copy) through their TensorChunks
    device = torch.device(separator._device) if separator._device is not None else grouped[0][0].source.device
    callback = separator._callback
    base_arg = dict(separator._callback_arg or {}, audio_length=length, models=1, model_idx_in_bag=0,
                    shift_idx=0, segment_offset=0)
    runs = [run for group in grouped for run in group]
    single = len(runs) == 1
    streams = [_spans(separator, run, device, callback if single else None, base_arg) for run in runs]
    sources = separator._model.sources
    emitted = 0
    while emitted < length:
        for run, stream in zip(runs, streams, strict=True):
            while run.frames == 0:
                span = next(stream)
                run.buffered.append(span)
                run.frames += span.shape[-1]
        frames = min(run.frames for run in runs)
        combined = _combine(grouped, weights, separator._shifts, frames)
        combined = combined * std + mean
        sink(dict(zip(sources, combined[0], strict=True)))
        emitted += frames
        if not single and callback is not None:
            callback(_replace_dict(base_arg, ("segment_offset", emitted - 1), ("shifts", 1), ("state", "end")))
    assert emitted == length and all(run.frames == 0 for run in runs), (emitted, length)
