"""Train a reduced HTDemucs on synthetic songs (bench/quality/synth.py) until every stem separates at
>= --target-sdr dB on held-out songs, or until --minutes run out; the best checkpoint is written as a local
demucs model that `demucs.api.Separator(model=NAME, repo=Path(OUT))` and the worker (DEMUCS_REPO) load.

    python -m bench.quality.train --minutes 20 --out .models/quality --name synth4

Same architecture class as the pretrained htdemucs (same code path, STFT size, samplerate and channels),
shrunk so that it trains on two CPU cores: fewer channels, a short training segment, two transformer layers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from demucs.htdemucs import HTDemucs

from bench.quality import metrics, synth


def model_kwargs(
    channels: int, segment: Fraction, t_layers: int, dconv_mode: int, layer_scale: bool = True
) -> dict[str, Any]:
    """HTDemucs keyword arguments: samplerate, audio channels, sources and nfft as in htdemucs so that the
    worker can load the model like the real one; the rest shrunk for CPU training."""
    return {
        "sources": list(synth.SOURCES),
        "audio_channels": 2,
        "samplerate": synth.SAMPLERATE,
        "segment": segment,
        "channels": channels,
        "depth": 4,
        "nfft": 4096,
        "t_layers": t_layers,
        "t_heads": 4,
        "dconv_mode": dconv_mode,
        "t_layer_scale": layer_scale,
    }


def make_batch(seeds: range, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixes [B, 2, T] and stems [B, 4, 2, T] of fresh synthetic songs, one per seed."""
    examples = [synth.make_example(seed, seconds) for seed in seeds]
    mixes = torch.from_numpy(np.stack([mix for mix, _ in examples]))
    stems = torch.from_numpy(np.stack([stems for _, stems in examples]))
    return mixes, stems


def evaluate(model: torch.nn.Module, seeds: range, seconds: float) -> dict[str, float]:
    """Mean SDR per stem over held-out songs, separated as the Separator does it (eval mode, no grad)."""
    scores: dict[str, list[float]] = {name: [] for name in synth.SOURCES}
    with torch.inference_mode():
        for seed in seeds:
            mix, stems = synth.make_example(seed, seconds)
            estimate = metrics.separate(model, torch.from_numpy(mix)).numpy()
            for index, name in enumerate(synth.SOURCES):
                scores[name].append(metrics.sdr(stems[index], estimate[index]))
    model.train()  # apply_model switched it to eval
    return {name: float(np.mean(values)) for name, values in scores.items()}


def save_model(out: Path, name: str, kwargs: dict[str, Any], model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write `<out>/<name>.th` in demucs' package format (what `demucs.states.load_model` reads) with float32
    weights, not `serialize_model`'s default half: the gate's fp32 baseline must be the trained model itself.
    A repo file stem without '-' is the model's signature, so `Separator(model=name, repo=out)` finds it."""
    out.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    package = {"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": state, "training_args": meta}
    path = out / f"{name}.th"
    tmp = path.with_suffix(".tmp")
    torch.save(package, tmp)
    tmp.replace(path)  # a reader never sees half a checkpoint
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def learning_rate(base: float, elapsed: float, budget: float) -> float:
    """Cosine decay over the time budget down to 10%: the budget is in minutes, not steps, on a shared CPU."""
    progress = min(1.0, elapsed / budget)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def format_sdr(scores: dict[str, float]) -> str:
    return " ".join(f"{name}={value:5.2f}" for name, value in scores.items())


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    segment = Fraction(args.segment).limit_denominator(100)
    kwargs = model_kwargs(args.channels, segment, args.t_layers, args.dconv_mode, not args.no_layer_scale)
    model = HTDemucs(**kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    valid = metrics.VALID_SEEDS
    budget = 60.0 * args.minutes
    start = time.monotonic()
    next_seed = metrics.TRAIN_SEED_BASE * (args.seed + 1)
    best: dict[str, Any] = {"min_sdr": -math.inf}
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    step, last_eval = 0, start
    print(f"HTDemucs {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {kwargs}", flush=True)
    model.train()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget or time.monotonic() - last_eval >= args.eval_every:
            last_eval = time.monotonic()
            scores = evaluate(model, valid, args.valid_seconds)
            elapsed = time.monotonic() - start
            history.append({"step": step, "seconds": round(elapsed, 1), "sdr": scores})
            print(f"[eval] step {step} {elapsed / 60:5.1f} min held-out SDR dB: {format_sdr(scores)}", flush=True)
            if min(scores.values()) > best["min_sdr"]:
                meta = {
                    "step": step,
                    "train_seconds": round(elapsed, 1),
                    "held_out_sdr": scores,
                    "valid_seeds": [valid.start, valid.stop],
                    "args": vars(args),
                    "history": history,
                }
                save_model(args.out, args.name, kwargs, model, meta)
                best = {"min_sdr": min(scores.values()), **meta}
            if min(scores.values()) >= args.target_sdr or elapsed >= budget:
                break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, elapsed, budget)
        mix, stems = make_batch(range(next_seed, next_seed + args.batch), float(segment))
        next_seed += args.batch
        loss = torch.nn.functional.l1_loss(model(mix), stems)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            rate = step / (time.monotonic() - start)
            print(
                f"step {step} {elapsed / 60:5.1f} min loss {np.mean(losses[-args.log_every :]):.4f} "
                f"({rate:.2f} steps/s)",
                flush=True,
            )
    reached = best["min_sdr"] >= args.target_sdr
    print(
        f"{'reached' if reached else 'did NOT reach'} {args.target_sdr} dB on every stem; best checkpoint "
        f"(step {best['step']}, {best['train_seconds'] / 60:.1f} min): {format_sdr(best['held_out_sdr'])} "
        f"-> {args.out / (args.name + '.th')}",
        flush=True,
    )
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget, evals included")
    parser.add_argument("--out", type=Path, default=Path(".models/quality"), help="local demucs model folder")
    parser.add_argument("--name", default="synth4", help="model name (no '-': demucs reads it as a checksum)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-sdr", type=float, default=4.0, help="stop once every stem reaches this (dB)")
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--t-layers", type=int, default=2)
    parser.add_argument("--dconv-mode", type=int, default=1, help="HTDemucs dconv_mode (1 = encoder, as htdemucs)")
    parser.add_argument(
        "--no-layer-scale",
        action="store_true",
        help="no LayerScale in the transformer (htdemucs has it): its branches reach the output unattenuated, so "
        "the gate sees what a precision does to the transformer",
    )
    parser.add_argument("--segment", type=float, default=0.5, help="training (and so inference) segment, s")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=float, default=120.0, help="seconds between held-out evaluations")
    parser.add_argument("--valid-seconds", type=float, default=4.0, help="length of each held-out song")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; on an oversubscribed CPU 2 threads ran a step 3x slower than 1",
    )
    args = parser.parse_args(argv)
    if "-" in args.name:
        parser.error("--name must not contain '-': demucs' LocalRepo reads NAME-XXXX as a checksummed file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    best = train(args)
    return 0 if best["min_sdr"] >= args.target_sdr else 1


if __name__ == "__main__":
    raise SystemExit(main())
