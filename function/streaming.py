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

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from demucs.api import Separator
from demucs.apply import BagOfModels, TensorChunk, _replace_dict, apply_model

# The demucs release whose apply_model this module mirrors, sample for sample.
DEMUCS_VERSION = "4.1.0"

log = logging.getLogger(__name__)

Sink = Callable[[dict[str, torch.Tensor]], None]
# Frames per read (about 6 s at 44.1 kHz) when the normalisation statistics are computed from a FrameSource.
STATS_CHUNK_FRAMES = 1 << 18


class FrameSource(Protocol):
    """The song, [channels, frames], read a span at a time (`audio.MixFile` reads it from the work dir)."""

    @property
    def channels(self) -> int: ...

    @property
    def frames(self) -> int: ...

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) as float32 [channels, stop - start]."""
        ...


@dataclass
class TensorFrames:
    """An in-memory [channels, frames] tensor as a FrameSource."""

    wav: torch.Tensor

    @property
    def channels(self) -> int:
        return int(self.wav.shape[0])

    @property
    def frames(self) -> int:
        return int(self.wav.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.wav.device

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.wav[:, start:stop]


def normalisation(source: FrameSource) -> tuple[torch.Tensor, torch.Tensor]:
    """`separate_tensor`'s mean and std of the mix, `ref = wav.mean(0)`, `ref.mean()`, `ref.std() + 1e-8`, with
    the whole song never in memory: `ref` (one value per frame; the mean over channels is per frame, so computing it
    a span at a time changes no bit) is filled span by span, and torch's own reductions then run over it, so the
    two scalars are bit for bit those of `separate_tensor`, whatever torch's reduction order and thread count. It is
    freed before any chunk is separated."""
    reference = torch.empty(source.frames, device=getattr(source, "device", None))
    for start in range(0, source.frames, STATS_CHUNK_FRAMES):
        stop = min(source.frames, start + STATS_CHUNK_FRAMES)
        reference[start:stop] = source.read(start, stop).mean(0)
    return reference.mean(), reference.std() + 1e-8


class NormalisedMix:
    """What apply_model splits, `TensorChunk(((wav - mean) / std)[None]).padded(frames + 2 * pad)` (`pad` 0 without
    shifts), never held whole: [1, channels, pad + frames + pad], zeros in the padding, each slice computed from
    `source` when `TensorChunk.padded` cuts a chunk from it (it slices the last axis only; `(x - mean) / std` is per
    sample, so a slice has the bits the same slice of the whole tensor has)."""

    def __init__(self, source: FrameSource, mean: torch.Tensor, std: torch.Tensor, pad: int) -> None:
        self.source, self.mean, self.std, self.pad = source, mean, std, pad
        self.shape = torch.Size([1, source.channels, source.frames + 2 * pad])
        self.device = mean.device
        self.dtype = torch.float32

    def __getitem__(self, key: tuple[Any, slice]) -> torch.Tensor:
        ellipsis, span = key
        if ellipsis is not Ellipsis or not isinstance(span, slice) or span.step not in (None, 1):
            raise TypeError(f"NormalisedMix takes [..., start:stop] only, got {key!r}")
        start, stop, _ = span.indices(self.shape[-1])
        stop = max(start, stop)
        low, high = max(start, self.pad), min(stop, self.pad + self.source.frames)
        if high <= low:
            return torch.zeros(1, self.shape[1], stop - start, device=self.device)
        middle = (self.source.read(low - self.pad, high - self.pad) - self.mean) / self.std
        return F.pad(middle[None], (low - start, stop - high))


def streamable(separator: Separator) -> bool:
    """Whether `stream_apply_model` serves `separator`: every model, bag and shift count, with split=True (the
    worker's setting; split=False runs the whole song as one chunk, and streaming would gain nothing)."""
    return bool(separator._split)


# Python's global `random` is part of apply_model's arithmetic: the shift offsets are drawn from it, and HTDemucs
# draws from it in every forward (`random.randrange(sin_random_shift + 1)` for its positional embedding), so the
# offset of model 1's shift depends on how many forwards model 0 ran before. Passes run interleaved here, so each
# pass keeps the `random` state its next forward would see in apply_model's order, and the state at the end of a
# pass that has not finished yet is computed by replaying the calls one forward makes (recorded on its first
# chunk; they do not depend on the audio) once per chunk it has left.
_RANDOM_FUNCTIONS = tuple(
    name
    for name in dir(random)
    if not name.startswith("_")
    and name not in ("getstate", "setstate", "seed")
    and getattr(getattr(random, name), "__self__", None) is getattr(random, "_inst", None)
)
RandomCall = tuple[str, tuple[Any, ...], dict[str, Any]]


@contextlib.contextmanager
def _recording(calls: list[RandomCall]) -> Iterator[None]:
    """Record every call made on the module-level `random` functions (the global generator) meanwhile."""
    originals = {name: getattr(random, name) for name in _RANDOM_FUNCTIONS}

    def recorder(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args, kwargs))
            return function(*args, **kwargs)

        return call

    try:
        for name, function in originals.items():
            setattr(random, name, recorder(name, function))
        yield
    finally:
        for name, function in originals.items():
            setattr(random, name, function)


def _replayed(state: Any, calls: list[RandomCall], times: int) -> Any:
    """The `random` state after making `calls`, `times` over, from `state`."""
    generator = random.Random()
    generator.setstate(state)
    for _ in range(times):
        for name, args, kwargs in calls:
            getattr(generator, name)(*args, **kwargs)
    return generator.getstate()


@dataclass
class _Pass:
    """One split pass of apply_model: one model of the bag at one shift (or unshifted), over `source`."""

    model: Any
    model_index: int
    source: TensorChunk
    skip: int  # leading samples of this pass's output that belong to the shift padding
    chunks: int  # chunks in its grid
    random_state: Any  # the global `random` state its next chunk's forward sees in apply_model's order
    calls: list[RandomCall] | None = None  # what one forward draws from `random` (recorded on the first chunk)
    done: int = 0  # chunks run
    predicted_end: Any = None  # its end state as computed for the next pass's draw, checked when it ends
    buffered: list[torch.Tensor] = field(default_factory=list)  # finished output spans not yet combined
    frames: int = 0  # samples in `buffered`

    def end_state(self) -> Any:
        """The `random` state once every chunk has run (replayed for the chunks not run yet)."""
        if self.done == self.chunks:
            return self.random_state
        assert self.calls is not None, "a pass's first chunk runs before the next pass is planned"
        self.predicted_end = _replayed(self.random_state, self.calls, self.chunks - self.done)
        return self.predicted_end


def _segment_length(separator: Separator, model: Any) -> int:
    segment = separator._segment if separator._segment is not None else model.segment
    return int(model.samplerate * segment)


class _Plan:
    """Every pass apply_model runs, in its order (each shift of model 0, then of model 1, ...), each one set up
    (its shift offset drawn) only when the previous one has run its first chunk."""

    def __init__(self, separator: Separator, source: FrameSource, mean: torch.Tensor, std: torch.Tensor) -> None:
        bag = separator._model
        self.separator = separator
        self.models = list(bag.models) if isinstance(bag, BagOfModels) else [bag]
        self.weights = [list(row) for row in bag.weights] if isinstance(bag, BagOfModels) else None
        self.shifts = separator._shifts
        self.count = len(self.models) * max(1, self.shifts)
        self.length = source.frames
        # A bag's models share one sample rate, so one shift width and one padded input serve them all; the padded,
        # normalised input is computed a chunk at a time (NormalisedMix), never held at full length.
        self.max_shift = int(0.5 * self.models[0].samplerate)
        self.input = NormalisedMix(source, mean, std, self.max_shift if self.shifts else 0)
        self.passes: list[_Pass] = []
        self._start_state = random.getstate()

    def get(self, index: int) -> _Pass:
        while len(self.passes) <= index:
            self.passes.append(self._next())
        return self.passes[index]

    def _next(self) -> _Pass:
        index = len(self.passes)
        model_index = index // max(1, self.shifts)
        model = self.models[model_index]
        state = self._start_state if index == 0 else self.passes[-1].end_state()
        if self.shifts:
            generator = random.Random()
            generator.setstate(state)
            offset = generator.randint(0, self.max_shift)  # the draw apply_model makes, from the state it sees
            state = generator.getstate()
            source = TensorChunk(self.input, offset, self.length + self.max_shift - offset)
            skip = self.max_shift - offset
        else:
            source, skip = TensorChunk(self.input), 0
        stride = int((1 - self.separator._overlap) * _segment_length(self.separator, model))
        return _Pass(model, model_index, source, skip, len(range(0, source.length, stride)), state)

    def grouped(self) -> list[list[_Pass]]:
        """The passes by model, in order."""
        return [[run for run in self.passes if run.model_index == index] for index in range(len(self.models))]


def _spans(
    separator: Separator,
    run: _Pass,
    device: torch.device,
    callback: Callable[[dict[str, Any]], None] | None,
    callback_arg: dict[str, Any],
) -> Iterator[torch.Tensor]:
    """apply_model's split loop for one pass, in order, with one chunk of overlap-add buffer: yields the pass's
    normalised output ([1, sources, channels, n], the padding of a shift already cut off) span by span, each as
    soon as no later chunk can add to it. The same chunk grid, `TensorChunk` padding context, triangular weights,
    inner `apply_model` call per chunk (seeing the `random` state it sees in apply_model), and float operations
    per sample in the same order (0 + w1*c1 + w2*c2..., then / weight sum) as demucs."""
    model, source = run.model, run.source
    total = source.length
    segment_length = _segment_length(separator, model)
    stride = int((1 - separator._overlap) * segment_length)
    weight = torch.cat(
        [
            torch.arange(1, segment_length // 2 + 1, device=device),
            torch.arange(segment_length - segment_length // 2, 0, -1, device=device),
        ]
    )
    weight = (weight / weight.max()) ** 1.0
    lock = threading.Lock()
    channels = source.shape[1]
    out = torch.zeros(1, len(model.sources), channels, segment_length, device=source.device)
    sum_weight = torch.zeros(segment_length, device=source.device)
    for offset in range(0, total, stride):
        random.setstate(run.random_state)
        calls: list[RandomCall] = []
        with _recording(calls) if run.calls is None else contextlib.nullcontext():
            chunk_out = apply_model(
                model,
                TensorChunk(source, offset, segment_length),
                shifts=0,
                split=False,
                overlap=separator._overlap,
                transition_power=1.0,
                progress=False,
                device=device,
                segment=separator._segment,
                lock=lock,
                callback_arg=callback_arg,
                callback=(lambda d, i=offset: callback(_replace_dict(d, ("segment_offset", i))) if callback else None),
            )
        if run.calls is None:
            run.calls = calls
        run.random_state = random.getstate()
        run.done += 1
        if run.done == run.chunks and run.predicted_end is not None and run.predicted_end != run.random_state:
            log.warning(
                "streaming: model %d drew from `random` differently in later chunks than in its first; "
                "later shift offsets differ from demucs' apply_model",
                run.model_index,
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


def stream_apply_model(separator: Separator, wav: torch.Tensor | FrameSource, sink: Sink) -> None:
    """`separator.separate_tensor(wav)`, streamed: `sink` gets every span of the de-normalised stems (name ->
    [channels, n]), in order, as soon as every pass of every model has finished it. `wav` is a [channels, frames]
    tensor or a FrameSource (the song in the work dir): the input side is streamed too, see `normalisation` and
    `NormalisedMix`, so neither the song nor its normalised, padded copy is held at full length.

    Exact by construction against demucs 4.1.0: the same normalisation, the same `random` draws for the shifts
    (and the same `random` state in every forward, see `_Plan`), each pass's split loop (`_spans`) and the bag's
    weighted sum (`_combine`) with the same float operations per sample, then `* std + mean`; the global `random`
    state is left where apply_model leaves it. The passes run interleaved, chunk by chunk, so only about one chunk
    per pass is held; with a GPU every model of a bag stays on the device (apply_model moves each one back after
    its pass). Progress: with one pass the separator's callback gets exactly apply_model's calls; with several (a
    bag, or shifts > 1) it gets one `state: end` call per combined span, as from one unshifted model (`shifts: 1`)
    whose `segment_offset` is the last sample written, so the percentage follows the song.
    """
    source = TensorFrames(wav) if isinstance(wav, torch.Tensor) else wav
    mean, std = normalisation(source)
    plan = _Plan(separator, source, mean, std)
    length = plan.length
    device = torch.device(separator._device) if separator._device is not None else plan.input.device
    callback = separator._callback
    base_arg = dict(
        separator._callback_arg or {}, audio_length=length, models=1, model_idx_in_bag=0, shift_idx=0, segment_offset=0
    )
    single = plan.count == 1
    streams: list[Iterator[torch.Tensor]] = []
    sources = separator._model.sources
    emitted = 0
    while emitted < length:
        for index in range(plan.count):
            run = plan.get(index)  # set up once the pass before it has run its first chunk
            if index == len(streams):
                streams.append(_spans(separator, run, device, callback if single else None, base_arg))
            while run.frames == 0:
                span = next(streams[index])
                run.buffered.append(span)
                run.frames += span.shape[-1]
        frames = min(run.frames for run in plan.passes)
        combined = _combine(plan.grouped(), plan.weights, plan.shifts, frames)
        combined = combined * std + mean
        sink(dict(zip(sources, combined[0], strict=True)))
        emitted += frames
        if not single and callback is not None:
            callback(_replace_dict(base_arg, ("segment_offset", emitted - 1), ("shifts", 1), ("state", "end")))
    assert emitted == length and all(run.frames == 0 for run in plan.passes), (emitted, length)
    random.setstate(plan.passes[-1].end_state())
