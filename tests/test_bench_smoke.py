"""A very small run of the benchmark harness with the tiny model: it proves every scenario runs end to end
against real Redis and S3 and that the outputs are written. Nothing here is timed or compared.

The harness run is part of the default suite; the others (several lengths, the cold-start breakdown, the fleet
and drain runs, the levers) are `heavy`, run with `./scripts/test.sh -m heavy`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cold_start, fleet_throughput, levers, run  # noqa: E402

# Each test starts several processes (cold runners, the CLI, emulated pods); on a busy machine that takes minutes.
pytestmark = pytest.mark.timeout(900)


@pytest.mark.slow
def test_harness_runs_every_scenario_with_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main(["--model", "tiny", "--repo", str(tmp_path / "repo"), "--seconds", "2", "--repeat", "1",
                     "--latency-runs", "1", "--device", "cpu", "--out", str(tmp_path / "out"),
                     "--variant", "b192:MP3_BITRATE=192", "--machine", "test"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    scenarios = {sample["scenario"] for sample in results["samples"]}
    assert scenarios == {*run.SCENARIOS, "stemworker_warm@b192", "stemworker_cold@b192"}
    assert all(sample["ok"] and sample["wall_s"] > 0 and sample["peak_rss_bytes"] > 0
               for sample in results["samples"])
    assert results["latency"][0]["ok"] and results["latency"][0]["latency_s"] is not None
    assert (tmp_path / "out" / "results.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "| stemworker_cold / seed_style (wall) |" in text
    assert "| stemworker_cold - stemworker_warm (wall, s) |" in text
    # base: warm, cold, cold - warm, RSS, claim latency; the variant: the first four again
    assert text.count("PASS") + text.count("FAIL") + text.count("SKIP") == 9
    assert all(name in results["targets"] for name in ("base", "@b192"))


@pytest.mark.slow
@pytest.mark.heavy
def test_several_lengths_end_with_the_rss_target_at_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main(["--model", "tiny", "--repo", str(tmp_path / "repo"), "--seconds", "2,3", "--repeat", "1",
                     "--scenarios", "stemworker_cold,cli", "--device", "cpu", "--out", str(tmp_path / "out"),
                     "--no-png", "--machine", "test"])
    assert code == 0
    assert (tmp_path / "out" / "2s" / "results.json").exists() and (tmp_path / "out" / "3s" / "results.json").exists()
    summary = capsys.readouterr().out.split("Peak RSS at every length:")[1]
    assert summary.count("peak RSS of cold job <= CLI peak RSS") == 2
    assert "(2 s song)" in summary and "(3 s song)" in summary


@pytest.mark.slow
@pytest.mark.heavy
def test_cold_start_breakdown_names_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cold_start.main(["--model", "tiny", "--repo", str(tmp_path / "repo"), "--seconds", "2", "--repeat", "1",
                            "--out", str(tmp_path / "out")])
    assert code == 0
    data = json.loads((tmp_path / "out" / "cold_start.json").read_text())
    (job,) = data["jobs"]
    assert job["separate"] > 0 and job["interpreter_and_imports"] > 0 and job["exit"] >= 0
    assert len(data["probes"][0]["passes"]) == 2 and data["probes"][0]["load_s"] > 0
    assert "torch" in data["imports"][0]
    text = capsys.readouterr().out
    for phase in ("interpreter start", "imports", "model load", "first pass's extra", "encode and upload", "exit"):
        assert phase in text


@pytest.mark.slow
@pytest.mark.heavy
def test_fleet_and_drain_run_through_the_emulator(tmp_path: Path) -> None:
    common = ["--model", "tiny", "--repo", str(tmp_path / "repo"), "--songs", "2", "--seconds", "2",
              "--polling-interval", "0.5"]
    assert fleet_throughput.main([*common, "--out", str(tmp_path / "fleet")]) == 0
    rows = json.loads((tmp_path / "fleet" / "fleet.json").read_text())["rows"]
    assert set(rows) == {"stemworker", "seed_style"}
    assert all(row["ok"] and row["cpu_s_per_song"] > 0 for row in rows.values())
    ((text, ok),) = fleet_throughput.result_lines(tmp_path / "fleet")
    assert "songs per core-hour" in text and isinstance(ok, bool)
    assert fleet_throughput.main([*common, "--drain", "--out", str(tmp_path / "drain")]) == 0
    rows = json.loads((tmp_path / "drain" / "drain.json").read_text())["rows"]
    assert list(rows) == ["MAX_MESSAGES=1, a cold pod per song", "MAX_MESSAGES=2, one pod"]


@pytest.mark.slow
@pytest.mark.heavy
def test_network_levers_keep_the_stems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = levers.main(["--model", "tiny", "--repo", str(tmp_path / "repo"), "--seconds", "9", "--repeat", "1",
                        "--device", "cpu", "--levers", "batch,precast,channels_last", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "the batch-1 loop against demucs' separate_tensor: max abs diff 0.0e+00 (bit-identical)" in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith(("| batch", "| chan_last"))]
    diffs = [float(row[7]) for row in rows if row[7].strip()]
    assert len(diffs) == 4 and max(diffs) < 1e-6  # batching and channels-last leave the stems unchanged
    assert "bf16 weights pre-cast" in text
