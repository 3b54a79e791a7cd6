"""Frozen models: a model as demucs loads it, pickled whole next to its weights, so that a new process maps it in
with one `torch.load(mmap=True)` instead of building every layer and copying the weights into it.

    python -m function.frozen_models --repo DIR [--models htdemucs,...]

On a 2-core CPU a cold htdemucs job waited 0.01 s for its frozen model after its download, against 0.37 s for one
built from its weights (docs/performance.md, `bench.run --variant unfrozen:FROZEN_MODELS=off`); the stems are bit for
bit the same. Freezing is a build step: the image freezes its default
model where it installs the weights (Dockerfile), and `bench.run` does the same to its model repo. A frozen model
lives in `<DEMUCS_REPO>/frozen/<model>.pt` with a `<model>.json` stamp: the size and modification time of every
weight file it was built from and the versions of torch and demucs. It is used only while the stamp still matches,
with FROZEN_MODELS=on (the default); anything else, a missing file or one that fails to load, and the model is
loaded from its weights as before. The file is a pickle, like the weight packages demucs loads from the same
folder: it is trusted as much as they are, and no more.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from function.cache_key import local_model_files

log = logging.getLogger("stemworker.frozen")

FROZEN_DIR = "frozen"
STAMPED_PACKAGES = ("torch", "demucs")


def paths(repo: Path, model: str) -> tuple[Path, Path]:
    """Where `model`'s frozen module and its stamp live in `repo`."""
    folder = repo / FROZEN_DIR
    return folder / f"{model}.pt", folder / f"{model}.json"


def stamp(model: str, repo: Path) -> dict[str, Any] | None:
    """What a frozen `model` must have been built from to be used: its weight files (size, mtime in ns) and the
    torch and demucs versions; None when the repo does not resolve `model`."""
    resolved = local_model_files(model, repo)
    if resolved is None:
        return None
    packages, bag = resolved
    files = {}
    for path in [*packages, *([bag] if bag else [])]:
        info = path.stat()
        files[path.name] = [info.st_size, info.st_mtime_ns]
    versions = {name: importlib.metadata.version(name) for name in STAMPED_PACKAGES}
    return {"model": model, "files": files, "versions": versions}


def freeze(model: str, repo: Path) -> Path:
    """Load `model` from `repo` the way the worker does (demucs' `get_model`) and write it frozen, atomically."""
    import torch
    from demucs.pretrained import get_model

    wanted = stamp(model, repo)
    if wanted is None:
        raise ValueError(f"{repo} has no model {model!r}")
    loaded = get_model(name=model, repo=repo)
    loaded.eval()
    target, stamp_path = paths(repo, model)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    torch.save(loaded, partial)
    partial.replace(target)
    stamp_path.write_text(json.dumps(wanted, indent=2) + "\n")
    return target


def is_current(model: str, repo: Path) -> bool:
    """Whether `repo` holds a frozen `model` whose stamp matches its weights and libraries as they are now."""
    target, stamp_path = paths(repo, model)
    if not target.is_file() or not stamp_path.is_file():
        return False
    try:
        return bool(json.loads(stamp_path.read_text()) == stamp(model, repo))
    except Exception as err:  # an unreadable stamp, repo or bag file: not current, and loading the weights will say
        log.warning("frozen model %s: cannot check its stamp (%s: %s)", model, type(err).__name__, err)
        return False


def load(model: str, repo: Path) -> Any | None:
    """`model`'s frozen module, mapped from its file; None when there is none, it no longer matches the weights or
    the libraries, or it does not load (the caller then loads the weights)."""
    if not is_current(model, repo):
        if paths(repo, model)[0].exists():
            log.info("frozen model %s is stale (weights or torch/demucs changed); loading the weights", model)
        return None
    import torch

    try:
        # weights_only=False: a pickled module, as trusted as the weight packages beside it (module docstring)
        return torch.load(paths(repo, model)[0], map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # a truncated or foreign file must never stop the worker: the weights still load
        log.warning("frozen model %s does not load (%s: %s); loading the weights", model, type(err).__name__, err)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=os.environ.get("DEMUCS_REPO"), help="local model folder")
    parser.add_argument(
        "--models", default=os.environ.get("DEMUCS_MODEL", "htdemucs"), help="comma-separated model names"
    )
    args = parser.parse_args(argv)
    if args.repo is None:
        parser.error("--repo (or DEMUCS_REPO) is required: frozen models live beside local weights")
    for model in filter(None, (name.strip() for name in args.models.split(","))):
        try:
            print(f"froze {model}: {freeze(model, args.repo)}")
        except Exception as err:  # report every model, then fail
            print(f"cannot freeze {model}: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
