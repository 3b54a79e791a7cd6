"""Quality gate for reduced precision: separate held-out synthetic songs with the trained model
(bench/quality/train.py) through `demucs.api.Separator` in fp32, bf16 autocast, int8 dynamic quantization of
the Linear layers and (on CUDA only) fp16 autocast, and compare each one's per-stem SDR with fp32's.

    python -m bench.quality.gate --repo .models/quality --name synth4 --out bench/out/quality

A precision passes when its mean |ΔSDR| over all (song, stem) pairs is <= 0.05 dB and its worst single
(song, stem) |ΔSDR| is <= 0.2 dB. Writes quality.md (the table) and quality.json under --out. The exit status
is 1 when a precision in --require (default: those the worker's DEMUCS_PRECISION offers) was measured and failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from demucs.api import Separator

from bench.quality import metrics, synth

MEAN_LIMIT_DB = 0.05
WORST_LIMIT_DB = 0.2

Separate = Callable[[torch.Tensor], np.ndarray]


@dataclass
class Result:
    """One precision's scores: sdr[song, stem]; `skipped` says why it was not measured."""

    name: str
    label: str
    sdr: np.ndarray | None = None
    seconds: float = 0.0
    snr_vs_fp32: float | None = None  # how far its stems are from fp32's, in dB
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def cpu_bf16_flags() -> list[str]:
    """The native bf16 flags this CPU advertises (empty: bf16 matmuls are emulated, correct but slow)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return sorted(flags & {"avx512_bf16", "amx_bf16"})


def runner(separator: Separator, autocast: torch.dtype | None) -> Separate:
    """Separate as the worker does (function/separation.py): inference mode, optionally autocast around
    `separate_tensor`; the stems come back as float32 [sources, channels, T] on the CPU."""
    device = str(separator._device)

    def run(mix: torch.Tensor) -> np.ndarray:
        cast = torch.autocast(torch.device(device).type, dtype=autocast) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            _, stems = separator.separate_tensor(mix)
        return torch.stack([stems[name].float().cpu() for name in synth.SOURCES]).numpy()

    return run


def int8_separator(base: Separator) -> tuple[Separator, int, list[str]]:
    """A copy of `base` whose nn.Linear layers are dynamically quantized to int8: in HTDemucs the transformer's
    feed-forward layers (nn.MultiheadAttention's projections are skipped: in_proj is a bare parameter, out_proj
    a NonDynamicallyQuantizableLinear). Returns it, how many layers were swapped and torch's warnings (its
    quantized tensors are deprecated: that belongs in the report, not on stderr)."""
    quantized = copy.copy(base)  # Separator's settings; its model is replaced below, not shared
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base._model), {torch.nn.Linear}, dtype=torch.qint8)
    quantized._model = model  # Separator has no public setter; the worker reads these fields too
    swapped = sum(1 for module in model.modules() if isinstance(module, torch.ao.nn.quantized.dynamic.Linear))
    messages = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
    return quantized, swapped, messages


def measure(
    result: Result,
    run: Separate,
    mixes: list[torch.Tensor],
    stems: list[np.ndarray],
    reference: list[np.ndarray] | None,
) -> list[np.ndarray]:
    """Fill `result` with SDR per (song, stem), the time taken and, against `reference` estimates, the SNR of
    the stems to fp32's; returns the estimates."""
    estimates, start = [], time.perf_counter()
    for mix in mixes:
        estimates.append(run(mix))
    result.seconds = time.perf_counter() - start
    result.sdr = np.array(
        [
            [metrics.sdr(truth[i], estimate[i]) for i in range(len(synth.SOURCES))]
            for truth, estimate in zip(stems, estimates, strict=True)
        ]
    )
    if reference is not None:
        result.snr_vs_fp32 = float(
            np.mean(
                [
                    metrics.sdr(ref[i], est[i])
                    for ref, est in zip(reference, estimates, strict=True)
                    for i in range(len(synth.SOURCES))
                ]
            )
        )
    return estimates


def try_measure(
    result: Result,
    make_run: Callable[[], Separate],
    mixes: list[torch.Tensor],
    stems: list[np.ndarray],
    reference: list[np.ndarray],
) -> None:
    """`measure`, recording instead of raising when this torch cannot run the variant (that is a finding)."""
    try:
        measure(result, make_run(), mixes, stems, reference)
    except Exception as err:  # any failure to build or run the variant is reported, not fatal
        result.skipped = f"failed on torch {torch.__version__}: {type(err).__name__}: {err}"


def deltas(result: Result, fp32: Result) -> tuple[float, float]:
    """(mean |ΔSDR|, worst |ΔSDR|) over all (song, stem) pairs, dB."""
    assert result.sdr is not None and fp32.sdr is not None
    delta = np.abs(result.sdr - fp32.sdr)
    return float(delta.mean()), float(delta.max())


def verdict(result: Result, fp32: Result) -> str:
    if result.skipped:
        return "not run"
    if result is fp32:
        return "baseline"
    mean, worst = deltas(result, fp32)
    return "PASS" if mean <= MEAN_LIMIT_DB and worst <= WORST_LIMIT_DB else "FAIL"


def table(results: list[Result], fp32: Result) -> str:
    """The Markdown table: per-stem mean SDR, |ΔSDR| vs fp32, stems' SNR to fp32's, time, verdict."""
    stems = " | ".join(synth.SOURCES)
    columns = "mean SDR | mean \\|ΔSDR\\| | worst \\|ΔSDR\\| | SNR to fp32 stems | time | gate"
    lines = [f"| precision | {stems} | {columns} |", "|---" * (len(synth.SOURCES) + 7) + "|"]
    for result in results:
        if result.skipped:
            lines.append(f"| {result.label} |" + " – |" * (len(synth.SOURCES) + 5) + f" not run: {result.skipped} |")
            continue
        assert result.sdr is not None
        per_stem = " | ".join(f"{value:.2f}" for value in result.sdr.mean(axis=0))
        mean, worst = ("–", "–") if result is fp32 else (f"{v:.4f}" for v in deltas(result, fp32))
        snr = "–" if result.snr_vs_fp32 is None else f"{result.snr_vs_fp32:.1f} dB"
        lines.append(
            f"| {result.label} | {per_stem} | {result.sdr.mean():.2f} | {mean} | {worst} | {snr} "
            f"| {result.seconds:.0f} s | {verdict(result, fp32)} |"
        )
    return "\n".join(lines)


def summary(result: Result, fp32: Result) -> dict[str, Any]:
    """One precision's entry in quality.json."""
    measured = result.sdr is not None
    mean, worst = deltas(result, fp32) if measured and result is not fp32 else (None, None)
    return {
        "label": result.label,
        "verdict": verdict(result, fp32),
        "skipped": result.skipped,
        "notes": result.notes,
        "seconds": round(result.seconds, 2),
        "snr_vs_fp32_db": result.snr_vs_fp32,
        "mean_abs_delta_db": mean,
        "worst_abs_delta_db": worst,
        "mean_sdr_per_stem": dict(zip(synth.SOURCES, result.sdr.mean(axis=0).tolist(), strict=True))
        if result.sdr is not None
        else None,
        "sdr": result.sdr.tolist() if result.sdr is not None else None,  # [song][stem]
    }


def report(results: list[Result], fp32: Result, args: argparse.Namespace) -> dict[str, Any]:
    flags = cpu_bf16_flags()
    return {
        "model": args.name,
        "repo": str(args.repo),
        "stems": list(synth.SOURCES),
        "seeds": list(metrics.GATE_SEEDS[: args.count]),
        "seconds_per_song": args.seconds,
        "limits_db": {"mean_abs_delta": MEAN_LIMIT_DB, "worst_abs_delta": WORST_LIMIT_DB},
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": flags,
        "native_bf16": bool(flags),
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "precisions": {result.name: summary(result, fp32) for result in results},
    }


def held_out(count: int, seconds: float) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Mixes and true stems of the gate's songs (seeds that training and checkpoint selection never saw)."""
    examples = [synth.make_example(seed, seconds) for seed in metrics.GATE_SEEDS[:count]]
    return [torch.from_numpy(mix) for mix, _ in examples], [stems for _, stems in examples]


def run_gate(args: argparse.Namespace) -> tuple[list[Result], Result]:
    torch.set_num_threads(args.threads)
    mixes, stems = held_out(args.count, args.seconds)
    separator = Separator(model=args.name, repo=args.repo, device="cpu", shifts=0, progress=False)
    fp32 = Result("fp32", "fp32")
    reference = measure(fp32, runner(separator, None), mixes, stems, None)
    print(f"fp32 done in {fp32.seconds:.0f} s", flush=True)
    results = [fp32]
    bf16 = Result("bf16", "bf16 autocast" + ("" if cpu_bf16_flags() else " (emulated on this CPU)"))
    try_measure(bf16, lambda: runner(separator, torch.bfloat16), mixes, stems, reference)
    results.append(bf16)
    print(f"bf16 done in {bf16.seconds:.0f} s", flush=True)
    int8 = Result("int8", "int8 dynamic (nn.Linear)")

    def make_int8() -> Separate:
        quantized, swapped, messages = int8_separator(separator)
        int8.notes.append(f"{swapped} nn.Linear layers quantized to int8 (weights), activations quantized per batch")
        int8.notes.extend(f"torch warned: {message}" for message in messages)
        return runner(quantized, None)

    try_measure(int8, make_int8, mixes, stems, reference)
    results.append(int8)
    print(f"int8 done in {int8.seconds:.0f} s", flush=True)
    fp16 = Result("fp16", "fp16 autocast (CUDA)")
    if torch.cuda.is_available():
        cuda = Separator(model=args.name, repo=args.repo, device="cuda", shifts=0, progress=False)
        try_measure(fp16, lambda: runner(cuda, torch.float16), mixes, stems, reference)
    else:
        fp16.skipped = "no CUDA device"
    results.append(fp16)
    return results, fp32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path(".models/quality"), help="local demucs model folder")
    parser.add_argument("--name", default="synth4")
    parser.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    parser.add_argument("--count", type=int, default=len(metrics.GATE_SEEDS), help="held-out songs (max 20)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each held-out song")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared)")
    parser.add_argument("--require", default="bf16,fp16", help="precisions whose FAIL makes the exit status 1")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= len(metrics.GATE_SEEDS):
        parser.error(f"--count must be in 1..{len(metrics.GATE_SEEDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results, fp32 = run_gate(args)
    flags = cpu_bf16_flags()
    header = (
        f"{args.count} held-out songs x {args.seconds:g} s, model {args.name}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); native bf16 on this CPU: "
        f"{', '.join(flags) if flags else 'no (neither avx512_bf16 nor amx_bf16: bf16 is emulated)'}; "
        f"gate: mean |ΔSDR| <= {MEAN_LIMIT_DB} dB and worst |ΔSDR| <= {WORST_LIMIT_DB} dB"
    )
    notes = [f"- {r.label}: {note}" for r in results for note in r.notes]
    markdown = "\n".join([header, "", table(results, fp32), "", *notes]) + "\n"
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text(markdown)
    (args.out / "quality.json").write_text(json.dumps(report(results, fp32, args), indent=2) + "\n")
    required = set(args.require.split(","))
    return int(any(verdict(r, fp32) == "FAIL" for r in results if r.name in required))


if __name__ == "__main__":
    raise SystemExit(main())
