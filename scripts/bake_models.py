"""Bake DEMUCS models into an image as a local model repo (the folder `DEMUCS_REPO` points at).

Runs at image build time only, with the image's own venv:

    python scripts/bake_models.py --dest /opt/stemworker/models --models htdemucs [--source DIR]

Each model is loaded with demucs' own loader (`demucs.pretrained.get_model`): from `--source` when that
folder holds models (an offline build, e.g. one written by `python -m workbench.model_repo`), otherwise
from the HuggingFace hub / demucs' remote repo (needs the internet; caches go to HF_HOME / TORCH_HOME,
which the Dockerfile points at a throw-away folder). Every model is then written to `--dest` in the
local-repo layout (`<signature>.th` packages plus a `<name>.yaml` bag) and loaded back from there, so
a model that cannot load at run time fails the build instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from demucs import pretrained
from demucs.apply import BagOfModels
from demucs.states import get_state


def bag_definition(name: str, source: Path | None) -> dict:
    """The bag yaml of `name` (its member signatures, weights, segment) from the source repo or demucs."""
    for root in ([source] if source else []) + [pretrained.REMOTE_ROOT]:
        path = root / f"{name}.yaml"
        if path.is_file():
            return yaml.safe_load(path.read_text())
    return {"models": [name]}  # `name` is a single model signature, not a bag


def member_package(model: torch.nn.Module) -> dict:
    """A demucs model package; stored as float16 only when that loses nothing (the published weights are)."""
    args, kwargs = model._init_args_kwargs
    full = get_state(model, None, half=False)
    half = get_state(model, None, half=True)
    lossless = all(
        not value.is_floating_point() or torch.equal(half[key].to(value.dtype), value) for key, value in full.items()
    )
    return {"klass": model.__class__, "args": args, "kwargs": kwargs, "state": half if lossless else full}


def bake(name: str, source: Path | None, dest: Path) -> list[Path]:
    """Load model `name` with demucs' loader and write it into `dest`; returns the files written."""
    model = pretrained.get_model(name, repo=source)
    members = list(model.models) if isinstance(model, BagOfModels) else [model]
    bag = bag_definition(name, source)
    signatures = bag.get("models") or []
    if len(signatures) != len(members):
        raise SystemExit(f"model {name}: bag lists {len(signatures)} signatures but {len(members)} models loaded")
    written = []
    for signature, member in zip(signatures, members, strict=True):
        package = dest / f"{signature}.th"
        torch.save(member_package(member), package)
        written.append(package)
    bag_file = dest / f"{name}.yaml"
    bag_file.write_text(yaml.safe_dump(bag))
    written.append(bag_file)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, required=True, help="local model repo to write (DEMUCS_REPO)")
    parser.add_argument("--models", required=True, help="comma-separated model names, e.g. htdemucs,htdemucs_ft")
    parser.add_argument("--default", help="the model DEMUCS_MODEL names; must be one of --models")
    parser.add_argument("--source", type=Path, help="local model repo to copy from; empty or missing: download")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if not names:
        parser.error("--models names no model")
    if args.default and args.default not in names:
        parser.error(f"--default {args.default!r} is not among --models {names}")
    source = args.source if args.source and args.source.is_dir() and any(args.source.iterdir()) else None
    args.dest.mkdir(parents=True, exist_ok=True)
    print(f"baking {names} from {source or 'the demucs model hub (download)'} into {args.dest}", flush=True)
    for name in names:
        for path in bake(name, source, args.dest):
            print(f"  {path} ({path.stat().st_size} bytes)", flush=True)
    for name in names:
        pretrained.get_model(name, repo=args.dest)  # what the worker will do at start; fails the build if broken
    print(f"verified: {names} load from {args.dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
