"""Measure the worker's performance levers one at a time, A against B, alternating, in one process.

    python -m bench.levers [--seconds 30] [--repeat 2] [--levers precision,grad,segment,encode,load]

Each lever runs its variants in an order that rotates every repeat and prints the median wall seconds,
CPU seconds and the peak RSS of that run (VmHWM reset before each), plus, where the lever changes the
numbers, the SNR of every stem against the default fp32 output and the largest absolute difference of any
sample (the random shift of `shifts=1` is seeded identically for both, so they measure only the lever).
Same model, repo and generated song as bench.run.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from demucs.api import Separator
from demucs.audio import save_audio

from bench.measure import in_process
from function import allocator, audio
from workbench import model_repo, sample_song

ROOT = Path(__file__).resolve().parents[1]

LEVERS = ("precision", "grad", "segment", "encode", "load", "int8")
MIB = 1024 * 1024


def snr_db(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    """Signal-to-noise ratio of each stem of `other` against `reference`, in dB."""
    out = {}
    for name, ref in reference.items():
        noise = (other[name].float() - ref.float()).pow(2).mean().clamp_min(1e-20)
        out[name] = round(float(10 * torch.log10(ref.float().pow(2).mean() / noise)), 1)
    return out


def max_abs_diff(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    return max(float((other[name].float() - ref.float()).abs().max()) for name, ref in reference.items())


class LeverBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        model_repo.write_model(args.repo, args.model)
        args.out.mkdir(parents=True, exist_ok=True)
        song = args.out / f"song-{args.seconds:g}s.mp3"
        if not song.exists():
            song.write_bytes(sample_song.song_mp3(args.seconds))
        self.song = song
        self.separator = Separator(model=args.model, repo=args.repo, device=args.device, progress=False)
        self.wav = audio.decode(song, self.separator.samplerate, self.separator.audio_channels, 1e9)
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def separate(
        self, autocast: torch.dtype | None = None, grad: str = "inference_mode", segment: float | None = None
    ) -> dict[str, torch.Tensor]:
        random.seed(1234)  # the shift offset of shifts=1 comes from `random`
        self.separator.update_parameter(segment=segment if segment is not None else None)
        mode = (
            torch.inference_mode()
            if grad == "inference_mode"
            else torch.no_grad()
            if grad == "no_grad"
            else nullcontext()
        )
        cast = torch.autocast(self.args.device.split(":")[0], dtype=autocast) if autocast else nullcontext()
        with mode, cast:
            _, stems = self.separator.separate_tensor(self.wav)
        return {name: stem.float() for name, stem in stems.items()}

    def compare(self, lever: str, variants: dict[str, Callable[[], Any]], reference: str | None = None) -> None:
        """Run every variant `repeat` times, rotating the order; record medians and, for tensors, the SNR."""
        names = list(variants)
        samples: dict[str, list[Any]] = {name: [] for name in names}
        outputs: dict[str, Any] = {}
        for index in range(self.args.repeat):
            for name in names[index % len(names) :] + names[: index % len(names)]:
                with in_process(f"{lever}:{name}") as sample:
                    outputs[name] = variants[name]()
                samples[name].append(sample)
                print(
                    f"  {lever:<9} {name:<22} {sample.wall_s:7.2f} s  cpu {sample.cpu_s:6.1f} s  "
                    f"peak {sample.peak_rss_bytes / MIB:6.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        for name in names:
            runs = samples[name]
            row = {
                "lever": lever,
                "variant": name,
                "wall_median_s": statistics.median(s.wall_s for s in runs),
                "cpu_median_s": statistics.median(s.cpu_s for s in runs),
                "peak_rss_mib": max(s.peak_rss_bytes for s in runs) / MIB,
                "snr_db": "",
                "max_abs_diff": "",
            }
            if reference and name != reference and isinstance(outputs[name], dict):
                row["snr_db"] = ", ".join(f"{k} {v}" for k, v in snr_db(outputs[reference], outputs[name]).items())
                row["max_abs_diff"] = f"{max_abs_diff(outputs[reference], outputs[name]):.2e}"
            self.rows.append(row)

    # ----- levers
    def precision(self) -> None:
        variants: dict[str, Callable[[], Any]] = {"fp32": lambda: self.separate()}
        if self.args.device.startswith("cuda"):
            variants["fp16 autocast"] = lambda: self.separate(torch.float16)
        variants["bf16 autocast"] = lambda: self.separate(torch.bfloat16)
        self.compare("precision", variants, reference="fp32")

    def grad(self) -> None:
        self.compare(
            "grad",
            {"inference_mode": lambda: self.separate(), "no_grad only (demucs)": lambda: self.separate(grad="none")},
            reference="inference_mode",
        )

    def segment(self) -> None:
        self.compare(
            "segment",
            {
                "7.8 s (model)": lambda: self.separate(),
                "4 s": lambda: self.separate(segment=4.0),
                "2 s": lambda: self.separate(segment=2.0),
            },
            reference="7.8 s (model)",
        )
        self.separator.update_parameter(segment=None)

    def encode(self) -> None:
        stems = self.separate()
        tmp = self.args.out / "levers-encode"
        tmp.mkdir(exist_ok=True)

        def encode_all(preset: int, workers: int) -> None:
            def one(item: tuple[str, torch.Tensor]) -> None:
                save_audio(item[1], str(tmp / f"{item[0]}.mp3"), self.separator.samplerate, bitrate=320, preset=preset)

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, stems.items()))

        self.compare(
            "encode",
            {
                "mp3 preset 2, 1 thread": lambda: encode_all(2, 1),
                "mp3 preset 2, 4 threads": lambda: encode_all(2, 4),
                "mp3 preset 7, 4 threads": lambda: encode_all(7, 4),
            },
        )

    def load(self) -> None:
        from demucs.states import set_state

        package = next(self.args.repo.glob(f"{model_repo.MODELS[self.args.model][0]}*.th"))

        def load(mmap: bool) -> None:
            data = torch.load(package, map_location="cpu", weights_only=False, mmap=mmap)
            model = data["klass"](*data["args"], **data["kwargs"])
            set_state(model, data["state"])

        self.compare("load", {"torch.load": lambda: load(False), "torch.load(mmap=True)": lambda: load(True)})

    def int8(self) -> None:
        """fp32 against int8 dynamic quantization of every `nn.Linear` (weights int8, activations quantized per
        batch): in HTDemucs those are the transformers' feed-forward layers; the attention's projections are not
        `nn.Linear` modules and stay fp32, as do the convolutions."""
        from torch.ao.quantization import quantize_dynamic

        original = self.separator.model
        tick = time.perf_counter()
        quantized = quantize_dynamic(copy.deepcopy(original), {torch.nn.Linear}, dtype=torch.qint8)
        self.notes.append(
            f"int8: {sum(isinstance(m, torch.nn.Linear) for m in original.modules())} nn.Linear layers quantized "
            f"in {time.perf_counter() - tick:.2f} s, holding "
            f"{linear_share(original):.0%} of the parameters"
        )

        def run(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            self.separator._model = model
            try:
                return self.separate()
            finally:
                self.separator._model = original

        self.compare(
            "int8",
            {"fp32": lambda: run(original), "int8 dynamic (nn.Linear)": lambda: run(quantized)},
            reference="fp32",
        )

    def markdown(self) -> str:
        lines = [
            "| lever | variant | wall median s | CPU median s | peak RSS MiB | SNR vs default, dB | max abs diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['lever']} | {r['variant']} | {r['wall_median_s']:.2f} | {r['cpu_median_s']:.1f} | "
                f"{r['peak_rss_mib']:.0f} | {r['snr_db']} | {r['max_abs_diff']} |"
            )
        return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in self.notes)


def linear_share(model: torch.nn.Module) -> float:
    """The share of `model`'s parameters held by its `nn.Linear` layers."""
    linear = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    return linear / max(1, sum(p.numel() for p in model.parameters()))


def cpu_bf16_note() -> str:
    """Whether this CPU has native bf16 (so whether bf16 timings here mean anything for AVX512-BF16/AMX CPUs)."""
    from function.separation import CPUINFO, NATIVE_BF16_FLAGS, cpu_flags

    try:
        found = sorted(cpu_flags(CPUINFO.read_text()) & NATIVE_BF16_FLAGS)
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    return f"native bf16 ({', '.join(found)})" if found else "no avx512_bf16/amx_bf16: bf16 is emulated here"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="htdemucs", choices=sorted(model_repo.MODELS))
    parser.add_argument("--repo", type=Path, default=ROOT / ".models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    allocator.apply(True)  # as the worker runs (MALLOC_REUSE=on)
    bench = LeverBench(args)
    bench.separate()  # untimed warm-up
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for lever in args.levers.split(","):
        getattr(bench, lever.strip())()
    text = (
        f"Levers on a {args.seconds:g} s song, {args.model} (seeded random weights), {args.device}, "
        f"{torch.get_num_threads()} threads, {args.repeat} repeats, started {started}; "
        f"CPU: {cpu_bf16_note()}\n\n" + bench.markdown()
    )
    (args.out / "levers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
