"""A streaming re-implementation of demucs' `apply_model`, fenced off here because it mirrors demucs internals.

It MIRRORS demucs 4.1.0 (`DEMUCS_VERSION`): `demucs.apply.apply_model` as `demucs.api.Separator.separate_tensor`
calls it, and eight private `Separator` fields (`_model`, `_device`, `_shifts`, `_overlap`, `_split`,
`_segment`, `_callback`, `_callback_arg`). pyproject.toml pins demucs to that version, and
tests/test_streaming.py fails loudly, naming both versions, when the installed demucs differs or the
streamed stems stop being bit-identical to `separate_tensor`'s. Upgrading demucs means re-checking this file
against the new `apply_model` first.

Why it exists: `apply_model` accumulates every stem at full length (4 stems x 2 channels x float32 per sample)
before returning; streaming writes each finished span out, so memory stays bounded by the input.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import torch
from demucs.api import Separator
from demucs.apply import BagOfModels, TensorChunk, _replace_dict, apply_model

# The demucs release whose apply_model this module mirrors, sample for sample.
DEMUCS_VERSION = "4.1.0"


def streamable_model(separator: Separator) -> Any | None:
    """The one model `stream_apply_model` can run for `separator`, or None where it does not apply: a bag of several
    models or weighted stems, shifts > 1, or split=False."""
    model = separator._model
    if isinstance(model, BagOfModels):
        if len(model.models) != 1 or any(weight != 1 for weight in model.weights[0]):
            return None
        model = model.models[0]
    if separator._shifts > 1 or not separator._split:
        return None
    return model


def stream_apply_model(separator: Separator, model: Any, wav: torch.Tensor,
            sink: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """apply_model's split loop, in order, with one chunk of overlap-add buffer: `sink` gets every span of the
    de-normalised stems (name -> [channels, n]) as soon as no later chunk can add to it.

    Exact by construction, against demucs 4.1.0's `apply_model` as called by `Separator.separate_tensor`: the
    same normalisation, the same `random` draw for the shift, the same chunk grid, `TensorChunk` padding
    context, triangular weights and inner `apply_model` call per chunk, and the same float operations on every
    sample in the same order (0 + w1*c1 + w2*c2..., then / weight sum, * std, + mean). Reads demucs' private
    `Separator` fields: demucs is pinned to 4.1.0.
    """
    reference = wav.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    del reference
    mix = ((wav - mean) / std)[None]
    length = mix.shape[-1]
    skip = 0  # leading output samples that belong to the shift's padding
    if separator._shifts == 1:
        max_shift = int(0.5 * model.samplerate)
        padded = TensorChunk(mix).padded(length + 2 * max_shift)
        del mix
        offset = random.randint(0, max_shift)  # the draw apply_model makes
        source = TensorChunk(padded, offset, length + max_shift - offset)
        skip = max_shift - offset
    else:
        source = TensorChunk(mix)
    total = source.length
    device = torch.device(separator._device) if separator._device is not None else source.device
    segment = separator._segment if separator._segment is not None else model.segment
    segment_length = int(model.samplerate * segment)
    stride = int((1 - separator._overlap) * segment_length)
    weight = torch.cat([torch.arange(1, segment_length // 2 + 1, device=device),
                        torch.arange(segment_length - segment_length // 2, 0, -1, device=device)])
    weight = (weight / weight.max()) ** 1.0
    callback = separator._callback
    callback_arg = dict(separator._callback_arg or {}, audio_length=length, models=1, model_idx_in_bag=0,
                        shift_idx=0, segment_offset=0)
    lock = threading.Lock()
    sources = len(model.sources)
    channels = source.shape[1]
    out = torch.zeros(1, sources, channels, segment_length, device=source.device)
    sum_weight = torch.zeros(segment_length, device=source.device)
    emitted = 0
    for offset in range(0, total, stride):
        chunk_out = apply_model(
            model, TensorChunk(source, offset, segment_length), shifts=0, split=False,
            overlap=separator._overlap, transition_power=1.0, progress=False, device=device, segment=separator._segment,
            lock=lock, callback_arg=callback_arg,
            callback=(lambda d, i=offset: callback(_replace_dict(d, ("segment_offset", i))) if callback else None),
        )
        chunk_length = chunk_out.shape[-1]
        out[..., :chunk_length] += (weight[:chunk_length] * chunk_out).to(source.device)
        sum_weight[:chunk_length] += weight[:chunk_length].to(source.device)
        del chunk_out
        last = offset + stride >= total
        ready = total - offset if last else stride  # no later chunk starts before offset + stride
        span = out[..., :ready] / sum_weight[:ready]
        span.mul_(std).add_(mean)
        start = max(0, skip - offset)
        if start < ready:
            sink(dict(zip(separator._model.sources, span[0, ..., start:], strict=True)))
            emitted += ready - start
        if not last:
            # Slide the window by one stride: values move unchanged and the new tail starts at 0, as in apply_model.
            out = torch.cat([out[..., stride:], torch.zeros_like(out[..., :stride])], -1)
            sum_weight = torch.cat([sum_weight[stride:], torch.zeros_like(sum_weight[:stride])])
    assert emitted == length, (emitted, length)
