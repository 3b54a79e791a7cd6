"""A very small run of the benchmark harness with the tiny model: it proves every scenario runs end to end
against real Redis and S3 and that the outputs are written. Nothing here is timed or compared.

The harness run is part of the default suite; the others (several lengths, the cold-start breakdown, the levers) are
`heavy`, run with `./scripts/test.sh -m heavy`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cold_start, levers, page_faults, run
from function import frozen_models

# Each test starts several processes (cold runners, the CLI, emulated pods); on a busy machine that takes minutes.
pytestmark = pytest.mark.timeout(900)


@pytest.mark.slow
def test_harness_runs_every_scenario_with_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main(
        [
            "--model",
            "tiny",
            "--repo",
            str(tmp_path / "repo"),
            "--seconds",
            "2",
            "--repeat",
            "1",
            "--latency-runs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--variant",
            "b192:MP3_BITRATE=192",
            "--machine",
            "test",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    scenarios = {sample["scenario"] for sample in results["samples"]}
    assert scenarios == {*run.SCENARIOS, "stemworker_warm@b192", "stemworker_cold@b192"}
    assert all(sample["ok"] and sample["wall_s"] > 0 and sample["peak_rss_bytes"] > 0 for sample in results["samples"])
    assert results["latency"][0]["ok"] and results["latency"][0]["latency_s"] is not None
    assert (tmp_path / "out" / "results.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "| stemworker_cold / seed_style (wall) |" in text
    assert "| stemworker_cold - stemworker_warm (wall, s) |" in text
    # base: warm, cold, cold - warm, RSS, claim latency; the variant: the first four again
    assert text.count("PASS") + text.count("FAIL") + text.count("SKIP") == 9
    assert all(name in results["targets"] for name in ("base", "@b192"))
    # the model is frozen as the image does it, and each cold run's phases come from its runner's timeline line
    assert frozen_models.is_current("tiny", tmp_path / "repo")
    cold = [sample for sample in results["samples"] if sample["scenario"].startswith("stemworker_cold")]
    for sample in cold:
        phases = sample["detail"]["phases"]
        assert {"interpreter_and_imports", "model_wait", "separate", "encode_upload", "exit"} <= set(phases)
        assert 0 < sum(phases.values()) <= sample["wall_s"] + 0.05
    assert text.count("Cold - warm by phase") == 2  # the default and the variant


@pytest.mark.slow
@pytest.mark.heavy
def test_several_lengths_end_with_the_rss_target_at_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main(
        [
            "--model",
            "tiny",
            "--repo",
            str(tmp_path / "repo"),
            "--seconds",
            "2,3",
            "--repeat",
            "1",
            "--scenarios",
            "stemworker_cold,cli",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--no-png",
            "--machine",
            "test",
        ]
    )
    assert code == 0
    assert (tmp_path / "out" / "2s" / "results.json").exists() and (tmp_path / "out" / "3s" / "results.json").exists()
    summary = capsys.readouterr().out.split("Peak RSS at every length:")[1]
    assert summary.count("peak RSS of cold job <= CLI peak RSS") == 2
    assert "(2 s song)" in summary and "(3 s song)" in summary
    table = summary.split("Peak RSS per song length")[1]
    assert "| stemworker_cold |" in table and "| cli |" in table
    assert any(
        line.startswith(("PASS", "FAIL")) and "cold job peak RSS at 3 s <= 1.25x at 2 s" in line
        for line in table.splitlines()
    )
    assert (tmp_path / "out" / "rss_by_length.md").read_text().strip() == table.split("\n\n", 1)[1].strip()


@pytest.mark.slow
@pytest.mark.heavy
def test_cold_start_breakdown_names_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cold_start.main(
        [
            "--model",
            "tiny",
            "--repo",
            str(tmp_path / "repo"),
            "--seconds",
            "2",
            "--repeat",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
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
def test_levers_compare_each_variant_with_its_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = levers.main(
        [
            "--model",
            "tiny",
            "--repo",
            str(tmp_path / "repo"),
            "--seconds",
            "9",
            "--repeat",
            "1",
            "--device",
            "cpu",
            "--levers",
            "grad,encode,int8",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    rows = {
        row[2].strip(): row
        for row in (line.split("|") for line in text.splitlines())
        if len(row) > 7 and row[1].strip() in ("grad", "encode", "int8")
    }
    assert set(rows) >= {"inference_mode", "no_grad only (demucs)", "int8 dynamic (nn.Linear)"}
    assert all(stem in rows["int8 dynamic (nn.Linear)"][6] for stem in ("drums", "bass", "other", "vocals"))
    assert "nn.Linear layers quantized" in text
    assert float(rows["no_grad only (demucs)"][7]) == 0.0  # the grad mode leaves the stems unchanged
    assert (tmp_path / "levers.md").read_text().startswith("Levers on a 9 s song")


@pytest.mark.slow
@pytest.mark.heavy
def test_page_faults_table_has_every_pass_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = page_faults.main(
        ["--model", "tiny", "--repo", str(tmp_path / "repo"), "--seconds", "3", "--passes", "2", "--out", str(tmp_path)]
    )
    assert code == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| o")]
    assert [(row[1].strip(), row[2].strip()) for row in rows] == [("off", "1"), ("off", "2"), ("on", "1"), ("on", "2")]
    assert all(float(row[3]) > 0 and int(row[6]) >= 0 for row in rows)
