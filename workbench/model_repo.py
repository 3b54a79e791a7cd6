"""Write a local DEMUCS model folder (what `DEMUCS_REPO` / `demucs --repo` point at) with generated weights.

Pretrained weights need the internet. This writes models that load through demucs' real local-repo
path (`<signature>.th` packages plus a `<name>.yaml` bag), with seeded random weights:
- `tiny`: a very small HTDemucs, fast enough for unit tests;
- `micro`: `tiny` without its transformer, on 1 s segments, for benchmarks that run thousands of jobs;
- `htdemucs`: the full architecture of the default pretrained model (same compute), for benchmarks.
Random weights give meaningless stems but exactly the real cost and the real code path.

    python -m workbench.model_repo DIR [--model tiny|htdemucs ...]
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from demucs.htdemucs import HTDemucs

SOURCES = ["drums", "bass", "other", "vocals"]

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


def write_model(repo: Path, name: str, seed: int = 0, kwargs: dict[str, Any] | None = None,
                signature: str | None = None) -> Path:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path, help="folder to write the models into")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="model(s) to write (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.model or ["tiny"]:
        print(write_model(args.repo, name, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
