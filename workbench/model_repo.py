"""Write a local DEMUCS model folder (what `DEMUCS_REPO` / `demucs --repo` point at) with generated weights.

Pretrained weights need the internet. This writes models that load through demucs' real local-repo
path (`<signature>.th` packages plus a `<name>.yaml` bag), with seeded random weights:
- `tiny`: a very small HTDemucs, fast enough for unit tests;
- `micro`: `tiny` without its transformer, on 1 s segments, for benchmarks that run thousands of jobs;
- `htdemucs`: the full architecture of the default pretrained model (same compute), for benchmarks;
- stand-ins (`--standin NAME`): a tiny model under each pretrained name the demucs 4.1 CLI accepts, with that
  name's own bag file (demucs' `remote/<name>.yaml`: the same signatures, weights matrix and segment) and a
  tiny member of each kind the real one has: HTDemucs (`htdemucs`, the 4-model `htdemucs_ft`, the six-source
  `htdemucs_6s`), HDemucs (`hdemucs_mmi`), a bag mixing time-domain Demucs and HDemucs members as demucs' MDX
  bags do (`mdx`, `mdx_extra`), and the same bags DiffQ-quantized (`mdx_q`, `mdx_extra_q`), saved the way
  demucs saves a quantized checkpoint (`demucs.states.get_quantizer` + `get_state`, `<sig>-<sha256>.th`) and
  loaded back through demucs' own loader (`load_model` -> `set_state` -> diffq's `restore_quantized_state`).
Random weights give meaningless stems but exactly the real code path (and, for `htdemucs`, the real cost).

    python -m workbench.model_repo DIR [--model tiny|htdemucs ...] [--standin htdemucs_ft ...]
"""

from __future__ import annotations

import argparse
import hashlib
import types
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from demucs import pretrained
from demucs.demucs import Demucs
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import get_quantizer, get_state, save_with_checksum

SOURCES = ["drums", "bass", "other", "vocals"]
SIX_SOURCES = ["drums", "bass", "other", "vocals", "guitar", "piano"]  # htdemucs_6s

# Keyword arguments of the pretrained `htdemucs` model (signature 955717e8); the rest are HTDemucs defaults.
HTDEMUCS_KWARGS: dict[str, Any] = {
    "sources": SOURCES,
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": Fraction(39, 5),
    "channels": 48,
    "depth": 4,
    "nfft": 4096,
    "t_layers": 5,
    "t_heads": 8,
    "bottom_channels": 512,
    "dconv_mode": 3,
    "dconv_comp": 8,
}

TINY_KWARGS: dict[str, Any] = {
    "sources": SOURCES,
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": Fraction(4),
    "channels": 4,
    "depth": 2,
    "nfft": 1024,
    "t_layers": 1,
    "t_heads": 1,
    "bottom_channels": 0,
    "dconv_comp": 4,
}

# The tiny model without its transformer and with 1 s segments: about 0.15 CPU-seconds per 1 s clip (the tiny
# model's attention over a 4 s segment costs about 3), for fleet benchmarks that run thousands of jobs.
MICRO_KWARGS: dict[str, Any] = {**TINY_KWARGS, "segment": Fraction(1), "t_layers": 0}

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (signature, HTDemucs kwargs)
    "tiny": ("7e57a11d", TINY_KWARGS),
    "micro": ("f1ee7a11", MICRO_KWARGS),
    "htdemucs": ("955717e8", HTDEMUCS_KWARGS),
}


def write_model(
    repo: Path, name: str, seed: int = 0, kwargs: dict[str, Any] | None = None, signature: str | None = None
) -> Path:
    """Write model `name` into `repo` (created if needed) unless it is already there; returns its yaml."""
    default_sig, default_kwargs = MODELS.get(name, ("", {}))
    kwargs = kwargs if kwargs is not None else default_kwargs
    signature = signature or default_sig
    if not kwargs or not signature:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    repo.mkdir(parents=True, exist_ok=True)
    bag = repo / f"{name}.yaml"
    package = repo / f"{signature}.th"
    if bag.exists() and package.exists():
        return bag
    torch.manual_seed(seed)
    model = HTDemucs(**kwargs)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    tmp = package.with_suffix(".tmp")
    torch.save({"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": state}, tmp)
    tmp.replace(package)
    bag.write_text(yaml.safe_dump({"models": [signature]}))
    return bag


# Tiny members of each architecture (a 2 s song separates in well under a second on one core).
TINY_DEMUCS_KWARGS: dict[str, Any] = {
    "sources": SOURCES,
    "audio_channels": 2,
    "samplerate": 44100,
    "channels": 8,
    "depth": 2,
    "dconv_mode": 0,
    "segment": 4,
}
TINY_HDEMUCS_KWARGS: dict[str, Any] = {
    "sources": SOURCES,
    "audio_channels": 2,
    "samplerate": 44100,
    "channels": 4,
    "depth": 4,
    "nfft": 1024,
    "dconv_mode": 0,
    "segment": 4,
}
# DiffQ settings of the quantized stand-ins: every parameter of 26 values or more (min_size is in MB) is
# quantized in groups of 8 values; smaller ones stay float, as DiffQ keeps every parameter under min_size.
DIFFQ_ARGS = types.SimpleNamespace(diffq=True, qat=None, min_size=1e-4, group_size=8)

# Every pretrained name the demucs 4.1 CLI accepts (`-n NAME`).
PRETRAINED_NAMES = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q", "mdx_extra_q")


def standin_members(name: str) -> list[tuple[type[torch.nn.Module], dict[str, Any]]]:
    """The class and kwargs of each tiny member of the stand-in for pretrained model `name`."""
    count = len(pretrained_bag(name)["models"])
    if name == "htdemucs_6s":
        return [(HTDemucs, {**TINY_KWARGS, "sources": SIX_SOURCES})] * count
    if name.startswith("htdemucs"):
        return [(HTDemucs, TINY_KWARGS)] * count
    if name == "hdemucs_mmi":
        return [(HDemucs, TINY_HDEMUCS_KWARGS)] * count
    if name.startswith("mdx"):  # time-domain members first, then hybrid ones
        return [
            (Demucs, TINY_DEMUCS_KWARGS) if index < count // 2 else (HDemucs, TINY_HDEMUCS_KWARGS)
            for index in range(count)
        ]
    raise ValueError(f"no stand-in for {name!r}; known: {list(PRETRAINED_NAMES)}")


def pretrained_bag(name: str) -> dict[str, Any]:
    """demucs' own bag file for a pretrained name: its member signatures, and its weights and segment if any."""
    path = pretrained.REMOTE_ROOT / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"demucs {pretrained.REMOTE_ROOT} has no bag {name!r}; known: {list(PRETRAINED_NAMES)}")
    return yaml.safe_load(path.read_text())


def _seed_of(signature: str) -> int:
    return int(hashlib.sha256(signature.encode()).hexdigest()[:8], 16)


def write_standin(repo: Path, name: str) -> Path:
    """Write the tiny stand-in for pretrained model `name` into `repo` (unless it is there); returns its yaml."""
    bag = pretrained_bag(name)
    quantized = name.endswith("_q")
    repo.mkdir(parents=True, exist_ok=True)
    for signature, (klass, kwargs) in zip(bag["models"], standin_members(name), strict=True):
        if any(repo.glob(f"{signature}.th")) or any(repo.glob(f"{signature}-*.th")):
            continue
        torch.manual_seed(_seed_of(signature))
        model = klass(**kwargs)
        args, init_kwargs = model._init_args_kwargs
        if quantized:
            # As demucs' training saves a DiffQ model (serialize_model without the training args): the
            # quantizer's packed state, `__quantized` set, and the file named `<sig>-<sha256 prefix>.th`.
            quantizer = get_quantizer(model, DIFFQ_ARGS)
            state = get_state(model, quantizer)
            save_with_checksum(
                {"klass": klass, "args": args, "kwargs": init_kwargs, "state": state}, repo / f"{signature}.th"
            )
        else:
            package = repo / f"{signature}.th"
            tmp = package.with_suffix(".tmp")
            torch.save({"klass": klass, "args": args, "kwargs": init_kwargs, "state": get_state(model, None)}, tmp)
            tmp.replace(package)
    path = repo / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bag))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path, help="folder to write the models into")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="model(s) to write (default: tiny)")
    parser.add_argument(
        "--standin",
        action="append",
        choices=PRETRAINED_NAMES,
        help="tiny stand-in(s) under pretrained names, with their own bag files",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.model or ([] if args.standin else ["tiny"]):
        print(write_model(args.repo, name, args.seed))
    for name in args.standin or []:
        print(write_standin(args.repo, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
