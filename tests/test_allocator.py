"""MALLOC_REUSE: glibc keeps freed blocks for reuse, so a block freed and allocated again is not faulted in anew.

Page faults are counted (getrusage), not timed: the count does not depend on the machine's load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from function import allocator, runner

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter: optionally tune, then malloc, touch and free a 64 MiB block (above glibc's largest
# mmap threshold) three times, counting the page faults of the last round.
PROBE = """
import ctypes, json, resource, sys
from function import allocator
applied = allocator.apply(sys.argv[1] == "on")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 * 1024 * 1024
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_trip(keep=False):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    if not keep:
        libc.free(block)
for _ in range(2):
    round_trip()
before = faults()
round_trip(keep=True)
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""

PAGES_64_MIB = 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")


def probe(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


needs_glibc = pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")


@needs_glibc
def test_reused_block_is_not_faulted_in_again() -> None:
    tuned = probe("on")
    assert tuned["applied"] is True
    # the block comes back from the heap with its pages still mapped
    assert int(str(tuned["faults"])) < PAGES_64_MIB // 10


@needs_glibc
def test_default_allocator_faults_the_block_in_every_time() -> None:
    # The contrast that makes the test above mean something: glibc's defaults unmap the block when it is freed.
    default = probe("off")
    assert default["applied"] is False
    assert int(str(default["faults"])) >= PAGES_64_MIB * 9 // 10


def test_off_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("tuned") or True)
    assert allocator.apply(False) is False
    assert allocator.apply(True) is True
    assert calls == ["tuned"]


def test_not_glibc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.keep_freed_memory() is False


def test_runner_applies_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The runner tunes the allocator before anything large is allocated, and only when MALLOC_REUSE is on."""
    seen: list[bool] = []
    monkeypatch.setattr(allocator, "apply", lambda enabled: seen.append(enabled) or enabled)
    monkeypatch.setattr(runner, "check", lambda settings: ["stopped here"])
    env = {"MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s", "REDIS_URL": "redis://127.0.0.1:1/0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MALLOC_REUSE", "off")
    assert runner.main(["--check"]) == 1
    monkeypatch.delenv("MALLOC_REUSE")
    assert runner.main(["--check"]) == 1
    assert seen == [False, True]  # off when asked, on by default


SEPARATE = """
import hashlib, sys
from pathlib import Path
import torch
from function import allocator, separation
from function.config import load_settings
from workbench import sample_song
allocator.apply(sys.argv[1] == "on")
settings = load_settings(demucs_model="tiny", demucs_repo=sys.argv[2], demucs_device="cpu")
separator = separation.get_separator("tiny", settings)
wav = torch.from_numpy(sample_song.generate(12.0, separator.samplerate))
stems = separation.separate(separator, wav, 1, lambda percent: None, seed=3)
print(hashlib.sha256(b"".join(stems[name].numpy().tobytes() for name in sorted(stems))).hexdigest())
"""


@needs_glibc
def test_the_stems_do_not_depend_on_the_allocator(model_repo: Path) -> None:
    def digest(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", SEPARATE, mode, str(model_repo)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return done.stdout.strip().splitlines()[-1]

    assert digest("on") == digest("off")
