"""A very small run of the benchmark harness with the tiny model: it proves every scenario runs end to end
against real Redis and S3 and that the outputs are written. Nothing here is timed or compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402


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
    assert text.count("PASS") + text.count("FAIL") + text.count("SKIP") == 7
