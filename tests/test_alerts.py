"""The alert rules: `promtool check rules` and `promtool test rules` (tests/alerts/) on the plain rules file, the
PrometheusRule holding the same groups, every alert with a runbook and a unit test that makes it fire.

promtool comes from Debian's `prometheus` package; scripts/test.sh installs it where it is missing, so CI runs
these. Without it the two promtool tests are skipped, with that reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "keda" / "monitoring" / "stemworker-alerts.rules.yml"
PROMETHEUS_RULE = ROOT / "keda" / "monitoring" / "prometheusrule.yaml"
UNIT_TESTS = ROOT / "tests" / "alerts" / "stemworker-alerts.test.yml"
# What issue 21 asks to page on, by alert name.
REQUIRED = {
    "StemworkerDeadLettersRising",
    "StemworkerOldestJobWaiting",
    "StemworkerRedisDown",
    "StemworkerFailureRatioHigh",
    "StemworkerAtReplicaCapWithBacklog",
}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (apt-get install prometheus)")


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_prometheus_rule_holds_the_same_groups_as_the_rules_file():
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_every_alert_has_a_severity_a_summary_and_a_runbook():
    found = alerts()
    assert {rule["alert"] for rule in found} >= REQUIRED
    for rule in found:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]


def test_every_alert_is_unit_tested_firing_and_quiet():
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert fired == names and quiet == names


def test_the_operations_guide_has_a_runbook_section_for_every_alert():
    guide = (ROOT / "docs" / "operations.md").read_text()
    for rule in alerts():
        assert f"`{rule['alert']}`" in guide, rule["alert"]


@needs_promtool
def test_promtool_check_rules():
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    done = subprocess.run([promtool, "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests can fail: a rules file whose Redis alert never fires fails them."""
    rules_dir = tmp_path / "keda" / "monitoring"
    rules_dir.mkdir(parents=True)
    (rules_dir / RULES.name).write_text(
        RULES.read_text().replace("(stemworker_redis_up) == 0", "(stemworker_redis_up) == 2")
    )
    tests_dir = tmp_path / "tests" / "alerts"
    tests_dir.mkdir(parents=True)
    (tests_dir / UNIT_TESTS.name).write_text(UNIT_TESTS.read_text())
    done = subprocess.run(
        [promtool, "test", "rules", str(tests_dir / UNIT_TESTS.name)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "StemworkerRedisDown" in done.stdout + done.stderr
