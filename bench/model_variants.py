"""Variants of the DEMUCS network and of its chunk loop, measured by bench/levers.py against the worker's own path.

None of these is used by the worker; each exists to answer "would this be faster, and are the stems the same?":
- `separate_batched`: the streaming separator's chunk grid (function/streaming.py) with `batch` padded chunks
  stacked into one forward pass;
- `precast_bf16`: the weights cast to bf16 once, every module's float32 input cast on entry, instead of autocast
  casting op by op (the STFT, the ISTFT and the mask stay float32, as under autocast);
- `channels_last`: 4-D weights (the Conv2d/ConvTranspose2d of the frequency branch) and their inputs in
  channels-last memory format;
- `traced`: `torch.jit.trace` + `torch.jit.freeze` + `torch.jit.optimize_for_inference` of the whole network;
- `compiled`: `torch.compile` (inductor) of the network.
Each model variant returns a new bag of models around a deep copy; the separator's own model is never changed.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator
from typing import Any

import torch
from demucs.api import Separator
from demucs.apply import BagOfModels, TensorChunk
from demucs.utils import center_trim

from function import streaming


def inner(separator: Separator) -> Any:
    """The one HTDemucs of the separator: its bag must hold one unweighted model, with shifts <= 1 and split=True
    (the worker's default for the named single models)."""
    model = separator._model
    bag = model if isinstance(model, BagOfModels) else None
    if bag is not None:
        one = len(bag.models) == 1 and all(weight == 1 for weight in bag.weights[0])
        model = bag.models[0] if one else None
    if model is None or separator._shifts > 1 or not streaming.streamable(separator):
        raise ValueError("these variants need one model, shifts <= 1 and split=True (the worker's default)")
    return model


def _chunks(separator: Separator, wav: torch.Tensor) -> tuple[Any, TensorChunk, int, torch.Tensor, torch.Tensor]:
    """apply_model's normalised, shift-padded source as stream_apply_model builds it (one `random` draw)."""
    model = inner(separator)
    reference = wav.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    mix = ((wav - mean) / std)[None]
    length = mix.shape[-1]
    skip = 0
    if separator._shifts == 1:
        max_shift = int(0.5 * model.samplerate)
        padded = TensorChunk(mix).padded(length + 2 * max_shift)
        offset = random.randint(0, max_shift)
        source = TensorChunk(padded, offset, length + max_shift - offset)
        skip = max_shift - offset
    else:
        source = TensorChunk(mix)
    return model, source, skip, mean, std


def _groups(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def separate_batched(separator: Separator, wav: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """The stems of `wav` with `batch` chunks per forward pass: the same chunk grid, padding, triangular weights
    and overlap-add as the worker's streaming separator (which runs one chunk per pass); whole stems returned."""
    model, source, skip, mean, std = _chunks(separator, wav)
    total = source.length
    segment = separator._segment if separator._segment is not None else model.segment
    segment_length = int(model.samplerate * segment)
    stride = int((1 - separator._overlap) * segment_length)
    weight = torch.cat([torch.arange(1, segment_length // 2 + 1), torch.arange(segment_length - segment_length // 2,
                                                                              0, -1)])
    weight = (weight / weight.max()) ** 1.0
    out = torch.zeros(1, len(model.sources), source.shape[1], total)
    sum_weight = torch.zeros(total)
    for group in _groups(list(range(0, total, stride)), batch):
        chunks = [TensorChunk(source, offset, segment_length) for offset in group]
        valid = model.valid_length(chunks[0].length) if hasattr(model, "valid_length") else segment_length
        stacked = torch.cat([chunk.padded(valid) for chunk in chunks])
        with torch.no_grad():
            outputs = model(stacked)
        for index, (offset, chunk) in enumerate(zip(group, chunks, strict=True)):
            chunk_out = center_trim(outputs[index:index + 1], chunk.length)
            n = chunk_out.shape[-1]
            out[..., offset:offset + n] += weight[:n] * chunk_out
            sum_weight[offset:offset + n] += weight[:n]
        del outputs, stacked
    out /= sum_weight
    out = out[..., skip:skip + wav.shape[-1]] * std + mean
    return dict(zip(separator._model.sources, out[0], strict=True))


class _Swapped(BagOfModels):
    """A bag of one model that apply_model accepts, around a model variant."""

    def __init__(self, bag: BagOfModels, model: torch.nn.Module) -> None:
        super().__init__([model], weights=bag.weights)


def _bag_with(separator: Separator, model: torch.nn.Module) -> BagOfModels:
    bag = separator._model
    return _Swapped(bag, model) if isinstance(bag, BagOfModels) else model  # type: ignore[return-value]


def _cast_inputs(dtype: torch.dtype):
    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return hook


def precast_bf16(separator: Separator) -> BagOfModels:
    """A copy of the network with bf16 weights; every sub-module casts its floating inputs to bf16 on entry. The
    top-level forward (STFT, normalisation, mask, ISTFT) keeps float32: its outputs promote back to float32."""
    model = copy.deepcopy(inner(separator)).to(torch.bfloat16)
    for module in model.modules():
        if module is not model:
            module.register_forward_pre_hook(_cast_inputs(torch.bfloat16))
    return _bag_with(separator, model)


def _channels_last_inputs(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


def channels_last(separator: Separator) -> tuple[BagOfModels, dict[str, int]]:
    """A copy with channels-last 4-D weights and 4-D inputs of every 2-D convolution; also counts what it
    applies to (conv modules by kind, 4-D parameters)."""
    model = copy.deepcopy(inner(separator)).to(memory_format=torch.channels_last)
    counts = {"Conv2d/ConvTranspose2d": 0, "Conv1d/ConvTranspose1d": 0, "4-D parameters": 0, "parameters": 0}
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            counts["Conv2d/ConvTranspose2d"] += 1
            module.register_forward_pre_hook(_channels_last_inputs)
        elif isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
            counts["Conv1d/ConvTranspose1d"] += 1
    for parameter in model.parameters():
        counts["parameters"] += 1
        counts["4-D parameters"] += parameter.dim() == 4
    return _bag_with(separator, model), counts


class _Wrapped(torch.nn.Module):
    """What apply_model needs of a model (samplerate, segment, sources, channels, valid_length) around a callable
    that only runs the forward pass (a traced or compiled network)."""

    def __init__(self, model: Any, forward: Any) -> None:
        super().__init__()
        self.inner = model
        self._forward = forward
        for name in ("samplerate", "segment", "sources", "audio_channels", "use_train_segment"):
            setattr(self, name, getattr(model, name))

    def valid_length(self, length: int) -> int:
        return self.inner.valid_length(length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self._forward(mix)


def example_chunk(separator: Separator, batch: int = 1) -> torch.Tensor:
    """A padded chunk of the training length: the only shape the network ever sees from apply_model."""
    model = inner(separator)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, model.audio_channels, model.valid_length(1), generator=generator)


def traced(separator: Separator) -> tuple[BagOfModels, float]:
    """jit.trace + freeze + optimize_for_inference of a copy of the network; returns it and the seconds it took
    (tracing, freezing and one call, where the optimisation passes run)."""
    model = copy.deepcopy(inner(separator)).eval()
    started = time.perf_counter()
    with torch.no_grad():
        script = torch.jit.trace(model, example_chunk(separator), check_trace=False)
        script = torch.jit.optimize_for_inference(torch.jit.freeze(script.eval()))
    with torch.inference_mode():
        script(example_chunk(separator))
    return _bag_with(separator, _Wrapped(model, script)), time.perf_counter() - started


def compiled(separator: Separator, mode: str | None = None) -> tuple[BagOfModels, float]:
    """torch.compile (inductor) of a copy of the network; returns it and the seconds of the first call, where
    compilation happens."""
    model = copy.deepcopy(inner(separator)).eval()
    function = torch.compile(model, mode=mode)
    started = time.perf_counter()
    with torch.inference_mode():  # the grad mode the separation runs in, so no recompile when it does
        function(example_chunk(separator))
    return _bag_with(separator, _Wrapped(model, function)), time.perf_counter() - started


def max_abs_diff(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    return max(float((other[name].float() - ref.float()).abs().max()) for name, ref in reference.items())


def with_seed(seed: int, function: Any, *args: Any) -> Any:
    random.seed(seed)
    return function(*args)
