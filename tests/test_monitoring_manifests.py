"""Offline checks of `keda/monitoring/`: the exporter Deployment and Service against kubernetes-validate's bundled
schemas (strict), the ServiceMonitor against a small schema of the monitoring.coreos.com/v1 fields it uses
(unknown fields rejected), the wiring between them, and broken copies that must fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_keda_manifests import validate_core

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "keda" / "monitoring"

# The part of the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) these manifests use.
STRICT = {"additionalProperties": False}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    **STRICT,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            **STRICT,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": LABELS,
                "annotations": LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            **STRICT,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", **STRICT, "minProperties": 1, "properties": {"matchLabels": LABELS}},
                "namespaceSelector": {
                    "type": "object",
                    **STRICT,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        **STRICT,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "honorLabels": {"type": "boolean"},
                        },
                        "required": ["port"],
                    },
                },
            },
        },
    },
}


# The part of the PrometheusRule CRD (monitoring.coreos.com/v1) the alert rules use.
DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    **STRICT,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "required": ["groups"],
            **STRICT,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        **STRICT,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    **STRICT,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": DURATION,
                                        "labels": LABELS,
                                        "annotations": LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((MONITORING / name).read_text()) if d]
    return doc


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((MONITORING / "kustomization.yaml").read_text())


def dashboard_config_map() -> dict[str, Any]:
    """The ConfigMap kustomize generates from configMapGenerator."""
    (generator,) = kustomization()["configMapGenerator"]
    data = {name: (MONITORING / name).read_text() for name in generator["files"]}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"], "labels": generator["options"]["labels"]},
        "data": data,
    }


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA, cls=jsonschema.Draft7Validator)
    elif doc["kind"] == "PrometheusRule":
        jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA, cls=jsonschema.Draft7Validator)
    else:
        validate_core(doc)


def test_kustomization_lists_every_manifest():
    on_disk = {p.name for p in MONITORING.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == on_disk
    assert {load(name)["kind"] for name in on_disk} == {"Deployment", "Service", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("name", sorted(p.name for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid(name):
    validate(load(name))


def test_generated_dashboard_config_map_is_valid_for_the_grafana_sidecar():
    config_map = dashboard_config_map()
    validate_core(config_map)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    assert json.loads(text)["uid"] == "stemworker" and len(text.encode()) < 1024 * 1024


def test_exporter_is_wired_to_the_worker_and_to_prometheus():
    deployment = load("exporter-deployment.yaml")
    service = load("exporter-service.yaml")
    monitor = load("servicemonitor.yaml")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["stemworker", "exporter"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    container_ports = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= service_ports
    # Same settings as the worker, the ScaledJob's cap (SCALEDJOB_MAX_REPLICAS) among them, from the same ConfigMap;
    # nothing sets it apart (the overlays' wiring copies that value into maxReplicaCount).
    base = ROOT / "keda" / "base"
    worker = yaml.safe_load((base / "scaledjob.yaml").read_text())
    worker_container = worker["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == worker_container["envFrom"]
    config = yaml.safe_load((base / "configmap.yaml").read_text())
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    assert int(config["data"]["SCALEDJOB_MAX_REPLICAS"]) == worker["spec"]["maxReplicaCount"]
    assert "SCALEDJOB_MAX_REPLICAS" not in {item["name"] for item in container["env"]}
    assert container["image"] == worker_container["image"] == "stemworker"  # the overlay sets name and tag
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def broken_copies() -> list[tuple[str, str, Any]]:
    def edit(path: list[Any], new: Any = None, drop: bool = False):
        def apply(doc: dict[str, Any]) -> None:
            target = doc
            for key in path[:-1]:
                target = target[key]
            if drop:
                del target[path[-1]]
            else:
                target[path[-1]] = new

        return apply

    container = ["spec", "template", "spec", "containers", 0]
    return [
        ("servicemonitor.yaml", "misspelt endpoint field", edit(["spec", "endpoints", 0, "intervall"], "30s")),
        ("servicemonitor.yaml", "interval not a duration", edit(["spec", "endpoints", 0, "interval"], "often")),
        ("servicemonitor.yaml", "no endpoints", edit(["spec", "endpoints"], drop=True)),
        ("servicemonitor.yaml", "empty selector", edit(["spec", "selector"], {})),
        ("exporter-deployment.yaml", "port as text", edit([*container, "ports", 0, "containerPort"], "metrics")),
        ("exporter-deployment.yaml", "misspelt probe field", edit([*container, "readinessProbe", "periodSecond"], 3)),
        ("prometheusrule.yaml", "misspelt rule field", edit(["spec", "groups", 0, "rules", 0, "expression"], "up")),
        ("prometheusrule.yaml", "for not a duration", edit(["spec", "groups", 0, "rules", 1, "for"], "soon")),
        ("exporter-service.yaml", "no ports", edit(["spec", "ports", 0, "port"], drop=True)),
    ]


@pytest.mark.parametrize(("name", "what", "edit"), broken_copies(), ids=[f"{n}:{w}" for n, w, _ in broken_copies()])
def test_broken_copy_fails_validation(name, what, edit):
    doc = copy.deepcopy(load(name))
    edit(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)
