"""DEMUCS in-process: load each model once per process, separate tensors, report progress.

Torch's intra-op threads follow the container's CPU quota (cgroup v2 `cpu.max` or v1 CFS quota),
not the host's core count, so a pod limited to 2 CPUs does not run 64 threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from demucs.api import Separator

from function import audio, frozen_models, streaming
from function.config import Settings
from function.errors import Transient, UnprocessableInput

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]

_models: dict[tuple[str, str | None, str], Separator] = {}
_models_lock = threading.Lock()
# One separation at a time per process: DEMUCS holds GBs per song, two at once would double the peak.
separation_lock = threading.Lock()
_threads_set = False


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def cpu_threads(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Threads to give torch: the CPUs this process may run on, capped by the cgroup quota."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        available = min(available, max(1, math.ceil(limit)))
    return max(1, available)


def configure_threads(settings: Settings) -> int:
    """Set torch's intra-op thread count once per process; returns it."""
    global _threads_set
    threads = settings.demucs_threads or cpu_threads()
    if not _threads_set:
        torch.set_num_threads(threads)
        _threads_set = True
    return torch.get_num_threads()


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def get_separator(model: str, settings: Settings) -> Separator:
    """The loaded model `model`, loaded on first use and kept for the life of the process."""
    device = resolve_device(settings.demucs_device)
    repo = str(settings.demucs_repo) if settings.demucs_repo else None
    key = (model, repo, device)
    with _models_lock:
        separator = _models.get(key)
        if separator is not None:
            return separator
        configure_threads(settings)
        log.info("loading model %s from %s on %s", model, repo or "the pretrained hub", device)
        frozen = frozen_models.load(model, Path(repo)) if repo and settings.frozen_models else None
        if frozen is not None:
            log.info("model %s mapped from its frozen file (function/frozen_models.py)", model)
        options: dict[str, Any] = {
            "model": model,
            "repo": Path(repo) if repo else None,
            "device": device,
            "shifts": settings.demucs_shifts,
            "overlap": settings.demucs_overlap,
            "split": True,
            "segment": settings.demucs_segment,
            "progress": False,
        }
        try:
            separator = Separator(**options) if frozen is None else FrozenSeparator(frozen, **options)
        except (Exception, SystemExit) as err:  # demucs calls sys.exit() for some repo errors
            raise Transient(f"cannot load model {model!r}: {type(err).__name__}: {err}") from None
        _models[key] = separator
        return separator


class FrozenSeparator(Separator):  # type: ignore[misc]  # demucs has no type hints
    """A demucs Separator around a model already loaded from its frozen file (function/frozen_models.py) instead
    of one it loads from the weights; everything else is demucs' own."""

    def __init__(self, frozen: torch.nn.Module, **kwargs: Any) -> None:
        self._frozen = frozen
        super().__init__(**kwargs)

    def _load_model(self) -> None:
        self._model = self._frozen
        self._audio_channels = self._model.audio_channels
        self._samplerate = self._model.samplerate


@dataclass
class _Progress:
    """Turns DEMUCS chunk callbacks into a monotonic 0-100 percentage."""

    report: ProgressFn
    shifts: int
    last: int = -1

    def __call__(self, info: dict[str, Any]) -> None:
        if info.get("state") != "end":
            return
        models = max(1, int(info.get("models", 1)))
        # The streaming separator reports a bag or several shifts as one pass over the song (`shifts: 1`).
        passes = max(1, int(info.get("shifts", self.shifts)))
        length = max(1, int(info.get("audio_length", 1)))
        chunk_done = min(1.0, (int(info.get("segment_offset", 0)) + 1) / length)
        done = int(info.get("model_idx_in_bag", 0)) + (int(info.get("shift_idx", 0)) + chunk_done) / passes
        percent = min(99, int(100 * done / models))
        if percent > self.last:
            self.last = percent
            self.report(percent)


# DEMUCS_PRECISION -> autocast dtype. Reduced precision is only ever used when asked for (`auto` asks for it only
# where it is native): on a CPU with AVX512-BF16/AMX, bf16 separated 1.7x faster in bench/levers.py, with stems
# 45-50 dB SNR from fp32.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# x86 CPU flags (/proc/cpuinfo) of native bf16 matrix maths: AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX
# (Sapphire Rapids and later). Without them torch emulates bf16, which is slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first CPU listed in /proc/cpuinfo text (empty when there is no `flags` line)."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=4)
def native_bf16(cpuinfo_path: Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 natively (read once per path); False when cpuinfo cannot be read."""
    try:
        return bool(cpu_flags(cpuinfo_path.read_text()) & NATIVE_BF16_FLAGS)
    except OSError:
        return False


def resolve_precision(setting: str, device: str, cpuinfo: str | None = None, native: bool | None = None) -> str:
    """The precision a DEMUCS_PRECISION value means on `device`: `auto` is bf16 on a CPU with native bf16 and fp32
    elsewhere, CUDA included (no gain was measured there); any other value is itself. Whether the CPU has native
    bf16 is `native` when given (CPU_NATIVE_BF16=yes|no), else read from `cpuinfo` text, else from this machine's
    /proc/cpuinfo."""
    if setting != "auto":
        return setting
    if torch.device(device).type != "cpu":
        return "fp32"
    if native is None:
        native = bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS) if cpuinfo is not None else native_bf16(CPUINFO)
    return "bf16" if native else "fp32"


def job_precision(settings: Settings, device: str) -> str:
    """The precision a job runs with on `device` under `settings` (DEMUCS_PRECISION, CPU_NATIVE_BF16)."""
    return resolve_precision(settings.demucs_precision, device, native=settings.native_bf16)


def autocast_for(precision: str, device: str) -> contextlib.AbstractContextManager[object]:
    """The autocast context for a DEMUCS_PRECISION value; fp32 (the default) is a no-op."""
    precision = resolve_precision(precision, device)
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"DEMUCS_PRECISION must be one of {sorted(AUTOCAST_DTYPES)} or auto, got {precision!r}")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def seed_of(input_sha256: str) -> int:
    """The random seed of a separation of the input with this SHA-256 (hex): its first 64 bits."""
    return int(input_sha256[:16], 16)


@contextlib.contextmanager
def seeded_random(seed: int | None) -> Iterator[None]:
    """Seed Python's global `random` with `seed` for the block, then put its earlier state back.

    demucs draws each shift's offset with the module-level `random.randint`, and HTDemucs draws from it in every
    forward, so with shifts >= 1 two separations of one file differ. Inside the block the draws are exactly those
    demucs makes after `random.seed(seed)` (streaming.py follows the global generator in apply_model's order), and
    outside it the generator goes on as if the block had not run. Held under `separation_lock`, so two
    separations never share it; no other thread of the worker draws from it while a song is separated (encodes,
    uploads and callbacks come after). None changes nothing.
    """
    if seed is None:
        yield
        return
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def separate(
    separator: Separator,
    wav: torch.Tensor,
    shifts: int,
    on_progress: ProgressFn,
    precision: str = "fp32",
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """Split `wav` ([channels, samples] at the model's rate) into the model's stems; a `precision` that resolves
    to other than fp32 runs the model under autocast (the stems stay float32). `seed` seeds the random shifts (see
    `seeded_random`), so the same input and seed always give the same stems."""
    if wav.shape[-1] < 1:
        raise UnprocessableInput("input audio has no samples")
    device = str(separator._device)
    precision = resolve_precision(precision, device)
    with separation_lock, torch.inference_mode(), autocast_for(precision, device), seeded_random(seed):
        separator.update_parameter(callback=_Progress(on_progress, shifts), callback_arg={})
        _, stems = separator.separate_tensor(wav)
    return {name: stem.float() for name, stem in stems.items()} if precision != "fp32" else stems


StemPicker = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def separate_to_files(
    separator: Separator,
    wav: torch.Tensor | audio.MixFile,
    shifts: int,
    on_progress: ProgressFn,
    directory: Path,
    pick: StemPicker | None = None,
    precision: str = "fp32",
    seed: int | None = None,
) -> dict[str, audio.StemFile]:
    """Separate `wav` ([channels, samples], or the song decoded to the work dir by `audio.decode_to_file`) into
    closed `StemFile`s under `directory`, one per stem that `pick` returns (it gets the model's stems and returns
    the ones to keep, e.g. `core.pick_stems`; all of them when None). The samples are exactly those of `separate`
    (then `pick`) of the same song with the same `seed`, and progress is reported the same way.

    With split=True (the worker's setting) the song is streamed, for every model, bag of models and shift count:
    apply_model's chunks are run in order and each finished span goes to the files; given a MixFile, the input is
    read from it a chunk at a time too, so memory does not grow with the song's length (beyond one float per frame
    while the normalisation is computed, freed before the first chunk). With split=False `separate` runs on the
    whole song and its stems are written out.
    """
    frames = wav.frames if isinstance(wav, audio.MixFile) else wav.shape[-1]
    if frames < 1:
        raise UnprocessableInput("input audio has no samples")
    pick = pick or (lambda stems: stems)
    files: dict[str, audio.StemFile] = {}

    def sink(stems: dict[str, torch.Tensor]) -> None:
        for name, span in pick(stems).items():
            if name not in files:
                files[name] = audio.StemFile(directory / f"{name}.f32", span.shape[0])
            files[name].append(span)

    try:
        if not streaming.streamable(separator):
            whole = wav.read(0, wav.frames) if isinstance(wav, audio.MixFile) else wav
            sink(separate(separator, whole, shifts, on_progress, precision=precision, seed=seed))
        else:
            device = str(separator._device)
            with separation_lock, torch.inference_mode(), autocast_for(precision, device), seeded_random(seed):
                separator.update_parameter(callback=_Progress(on_progress, shifts), callback_arg={})
                streaming.stream_apply_model(separator, wav, sink)
    finally:
        for stem in files.values():
            stem.close()
    return files
