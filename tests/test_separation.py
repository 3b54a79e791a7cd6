"""Separation settings: reduced precision runs only when asked for, and fp32 is exact run to run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demucs.api import Separator

from function import separation
from function.config import load_settings
from workbench import sample_song


def test_reduced_precision_only_when_asked(model_repo: Path) -> None:
    separator = Separator(model="tiny", repo=model_repo, device="cpu", shifts=0, progress=False)
    wav = torch.from_numpy(sample_song.generate(5.0, seed=1))
    full = separation.separate(separator, wav, 0, lambda p: None)
    again = separation.separate(separator, wav, 0, lambda p: None, precision="fp32")
    bf16 = separation.separate(separator, wav, 0, lambda p: None, precision="bf16")
    assert all(torch.equal(full[name], again[name]) for name in full)
    assert all(stem.dtype == torch.float32 for stem in bf16.values())
    assert not all(torch.equal(full[name], bf16[name]) for name in full)
    with pytest.raises(ValueError, match="DEMUCS_PRECISION"):
        separation.separate(separator, wav, 0, lambda p: None, precision="int8")


ZEN3_FLAGS = "fpu vme de pse tsc msr pae mce cx8 sse sse2 avx avx2 fma sha_ni vaes vpclmulqdq"
ZEN4_FLAGS = ZEN3_FLAGS + " avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni"
SAPPHIRE_RAPIDS_FLAGS = ZEN3_FLAGS + " avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8"


def cpuinfo(flags: str) -> str:
    """/proc/cpuinfo text of a two-CPU machine with these flags."""
    cpu = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\nmodel name\t: Test CPU\nflags\t\t: {flags}\n"
        "bugs\t\t: sysret_ss_attrs\n"
    )
    return "\n".join(cpu.format(n=n, flags=flags) for n in range(2))


@pytest.mark.parametrize(
    ("flags", "device", "expected"),
    [
        (ZEN4_FLAGS, "cpu", "bf16"),  # AVX512-BF16
        (SAPPHIRE_RAPIDS_FLAGS, "cpu", "bf16"),  # AMX
        (ZEN3_FLAGS, "cpu", "fp32"),  # bf16 would be emulated
        (ZEN4_FLAGS, "cuda", "fp32"),  # no gain measured on a GPU
        (ZEN4_FLAGS, "cuda:1", "fp32"),
    ],
)
def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(flags: str, device: str, expected: str) -> None:
    assert separation.resolve_precision("auto", device, cpuinfo=cpuinfo(flags)) == expected


@pytest.mark.parametrize("setting", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept_whatever_the_cpu(setting: str) -> None:
    assert separation.resolve_precision(setting, "cpu", cpuinfo=cpuinfo(ZEN3_FLAGS)) == setting
    assert separation.resolve_precision(setting, "cuda", cpuinfo=cpuinfo(ZEN4_FLAGS)) == setting


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_cpu_native_bf16_setting_overrides_the_flags(native: bool, expected: str) -> None:
    """CPU_NATIVE_BF16=yes|no decides `auto` whatever the CPU's flags say (what lets CI run as either kind)."""
    for flags in (ZEN3_FLAGS, ZEN4_FLAGS):
        assert separation.resolve_precision("auto", "cpu", cpuinfo=cpuinfo(flags), native=native) == expected
    assert separation.resolve_precision("fp32", "cpu", native=True) == "fp32"
    assert load_settings(cpu_native_bf16="yes").native_bf16 is True
    assert load_settings(cpu_native_bf16="no").native_bf16 is False
    assert load_settings(cpu_native_bf16="auto").native_bf16 is None


def test_cpuinfo_without_flags_means_no_native_bf16() -> None:
    assert separation.cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == frozenset()
    assert separation.resolve_precision("auto", "cpu", cpuinfo="") == "fp32"


@pytest.mark.parametrize(("flags", "same_as"), [(ZEN3_FLAGS, "fp32"), (ZEN4_FLAGS, "bf16")])
def test_auto_separates_with_the_precision_this_cpuinfo_gives(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, same_as: str
) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo(flags))
    monkeypatch.setattr(separation, "CPUINFO", fake)
    separator = Separator(model="tiny", repo=model_repo, device="cpu", shifts=0, progress=False)
    wav = torch.from_numpy(sample_song.generate(5.0, seed=1))
    auto = separation.separate(separator, wav, 0, lambda p: None, precision="auto")
    expected = separation.separate(separator, wav, 0, lambda p: None, precision=same_as)
    assert all(torch.equal(auto[name], expected[name]) for name in expected)


def test_precision_setting_accepts_auto_and_names_a_bad_value() -> None:
    from function.config import load_settings
    from function.errors import ConfigError

    assert load_settings(demucs_precision="auto").demucs_precision == "auto"
    with pytest.raises(ConfigError, match="DEMUCS_PRECISION"):
        load_settings(demucs_precision="int8")
