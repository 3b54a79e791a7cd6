"""The result cache's key: the SHA-256 of the input's bytes with everything that changes the output bytes
(`KeyParts`), the weights of the model included, fingerprinted from its files without loading it."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from function.config import Settings
from function.messages import Job

# Bumped when what a key stands for changes (e.g. a new element), so older entries are never matched.
KEY_VERSION = 1
# Libraries whose version can change the stems' samples or their encoded bytes.
SOFTWARE = ("demucs", "torch", "numpy", "lameenc", "soundfile", "sphn")


@dataclass(frozen=True)
class KeyParts:
    """Everything that changes a job's output bytes. Two jobs with equal parts get byte-identical stems: the
    separation is seeded from `input_sha256` (separation.seeded_random)."""

    input_sha256: str
    model: str
    weights: str  # model_fingerprint: the weights the model name resolves to
    device: str  # cpu, cuda or mps: their kernels round differently
    shifts: int
    overlap: float
    segment: float | None
    precision: str
    format: str
    mp3_bitrate: int | None  # None unless format is mp3: it changes nothing else
    mp3_preset: int | None
    stems: tuple[str, ...] | None  # sorted: the order of a job's list changes no byte
    two_stems: str | None
    software: str  # versions of SOFTWARE
    version: int = KEY_VERSION

    def cache_key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


_software: str | None = None


def software_versions() -> str:
    """`name=version;...` of SOFTWARE as installed (read once)."""
    global _software
    if _software is None:
        found = []
        for name in SOFTWARE:
            try:
                found.append(f"{name}={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                found.append(f"{name}=absent")
        _software = ";".join(found)
    return _software


_file_digests: dict[tuple[str, int, int], str] = {}
_file_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hashed once per process for each (path, size, mtime)."""
    info = path.stat()
    memo = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    with _file_digests_lock:
        if memo in _file_digests:
            return _file_digests[memo]
    sha = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            sha.update(chunk)
    with _file_digests_lock:
        _file_digests[memo] = sha.hexdigest()
    return _file_digests[memo]


def _signature(package: Path) -> str:
    """A package's signature: its file stem, less a `-<checksum>` suffix."""
    return package.stem.rsplit("-", 1)[0] if "-" in package.stem else package.stem


def local_model_files(model: str, repo: Path) -> tuple[list[Path], Path | None] | None:
    """The files `model` loads from a local repo, resolved as demucs' LocalRepo and BagOnlyRepo do: a `<sig>.th`
    (or `<sig>-<checksum>.th`) package named `model` (no bag), else the bag `<model>.yaml` and the packages it
    lists; None when the repo does not resolve it."""
    packages = {_signature(path): path for path in repo.iterdir() if path.suffix == ".th"}
    if model in packages:
        return [packages[model]], None
    bag = repo / f"{model}.yaml"
    if not bag.is_file():
        return None
    signatures = (yaml.safe_load(bag.read_text()) or {}).get("models") or []
    if any(sig not in packages for sig in signatures):
        return None
    return [packages[sig] for sig in signatures], bag


def _local_fingerprint(model: str, repo: Path) -> str | None:
    """The weights of `model` in a local repo (`local_model_files`): its package's hash, or its bag's and its
    members'."""
    resolved = local_model_files(model, repo)
    if resolved is None:
        return None
    packages, bag = resolved
    if bag is None:
        return f"package:{file_sha256(packages[0])}"
    members = ",".join(f"{_signature(path)}:{file_sha256(path)}" for path in packages)
    return f"bag:{hashlib.sha256(bag.read_text().encode()).hexdigest()}:{members}"


def _demucs_remote_dir() -> Path | None:
    spec = importlib.util.find_spec("demucs")  # found, not imported: importing demucs loads torch
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "remote"


def _pretrained_fingerprint(model: str) -> str | None:
    """A named pretrained model: its bag yaml and the checksummed package names demucs' files.txt lists for its
    signatures (the names carry the weights' sha256 prefix). None for a name demucs does not list."""
    remote = _demucs_remote_dir()
    if remote is None or not (remote / "files.txt").is_file():
        return None
    listed: dict[str, str] = {}
    for line in (remote / "files.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not line.startswith("root:"):
            listed[line.split("-", 1)[0]] = line
    bag = remote / f"{model}.yaml"
    text = bag.read_text() if bag.is_file() else ""
    signatures = (yaml.safe_load(text) or {}).get("models") or [] if text else [model]
    if not signatures or any(sig not in listed for sig in signatures):
        return None
    return f"pretrained:{hashlib.sha256(text.encode()).hexdigest()}:{','.join(listed[s] for s in signatures)}"


def model_fingerprint(model: str, repo: Path | None) -> str | None:
    """What identifies the weights `model` loads (from `repo`, or demucs' pretrained list when None), read from
    the files without loading the model; None when it cannot be resolved (the job is then not cached)."""
    if repo is not None:
        return _local_fingerprint(model, repo)
    return _pretrained_fingerprint(model)


def key_parts(job: Job, settings: Settings, input_sha256: str, device: str, precision: str) -> KeyParts | None:
    """The key parts of `job` run with `settings` on `device` (resolved, e.g. `cuda:0`) in `precision` (resolved:
    fp32, bf16 or fp16); None when the model's weights cannot be fingerprinted."""
    weights = model_fingerprint(job.model, settings.demucs_repo)
    if weights is None:
        return None
    mp3 = job.format == "mp3"
    return KeyParts(
        input_sha256=input_sha256,
        model=job.model,
        weights=weights,
        device=device.split(":", 1)[0],
        shifts=settings.demucs_shifts,
        overlap=settings.demucs_overlap,
        segment=settings.demucs_segment,
        precision=precision,
        format=job.format,
        mp3_bitrate=settings.mp3_bitrate if mp3 else None,
        mp3_preset=settings.mp3_preset if mp3 else None,
        stems=tuple(sorted(job.stems)) if job.stems is not None else None,
        two_stems=job.two_stems,
        software=software_versions(),
    )
