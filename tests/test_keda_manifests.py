"""Offline validation of `keda/`: KEDA objects against the CRD schemas copied into `tests/schemas/keda/`
(KEDA's released CRDs), core objects against kubernetes-validate's bundled Kubernetes schemas (strict mode,
unknown fields rejected). A deliberately broken copy of each manifest must fail, so the checks are live.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KEDA = ROOT / "keda"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "keda"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are checked against
CRDS = {"ScaledJob": "keda.sh_scaledjobs.yaml", "TriggerAuthentication": "keda.sh_triggerauthentications.yaml"}


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((KEDA / name).read_text()) if d]
    return doc


def resources() -> list[dict[str, Any]]:
    listed = yaml.safe_load((KEDA / "kustomization.yaml").read_text())["resources"]
    return [load(name) for name in listed]


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / CRDS[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would prune (or reject with strict field validation): not in the schema."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif "additionalProperties" not in schema:
                found.append(f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def validate_keda(doc: dict[str, Any]) -> None:
    """Raise when a KEDA object breaks its CRD's schema or carries fields the CRD does not know."""
    schema = crd_schema(doc["kind"])
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    unknown = unknown_fields(doc, schema)
    if unknown:
        raise jsonschema.ValidationError(f"unknown fields {unknown}")


def validate_core(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def job_of(scaled_job: dict[str, Any]) -> dict[str, Any]:
    """The Job KEDA creates from a ScaledJob: `jobTargetRef` is a batch/v1 JobSpec."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "stemworker-x"},
            "spec": scaled_job["spec"]["jobTargetRef"]}


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        validate_keda(doc)
        if doc["kind"] == "ScaledJob":
            validate_core(job_of(doc))
    else:
        validate_core(doc)


def test_kustomization_lists_every_manifest_but_the_example_secret():
    listed = set(yaml.safe_load((KEDA / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in KEDA.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    assert {d["kind"] for d in resources()} == {"ConfigMap", "TriggerAuthentication", "ScaledJob", "CronJob"}


@pytest.mark.parametrize("name", sorted(p.name for p in KEDA.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid(name):
    validate(load(name))


def test_validators_see_the_schema_files():
    # kubernetes-validate works offline from its bundled schemas; a kind it has no schema for is an error.
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_core({"apiVersion": "example.com/v1", "kind": "Nothing", "metadata": {"name": "x"}})
    assert crd_schema("ScaledJob")["properties"]["spec"]["required"] == ["jobTargetRef", "triggers"]


def broken_copies() -> list[tuple[str, str, Any]]:
    """(file, what is broken, how): each edit alone must make validation fail."""

    def set_in(path: list[Any], value: Any):
        def edit(doc: dict[str, Any]) -> None:
            target = doc
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return edit

    def drop(path: list[Any]):
        def edit(doc: dict[str, Any]) -> None:
            target = doc
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        return edit

    container = ["spec", "jobTargetRef", "template", "spec", "containers", 0]
    trigger = ["spec", "triggers", 0]
    cron_container = ["spec", "jobTemplate", "spec", "template", "spec", "containers", 0]
    return [
        ("scaledjob.yaml", "unknown strategy", set_in(["spec", "scalingStrategy", "strategy"], "fastest")),
        ("scaledjob.yaml", "pollingInterval as text", set_in(["spec", "pollingInterval"], "30s")),
        ("scaledjob.yaml", "no triggers", drop(["spec", "triggers"])),
        ("scaledjob.yaml", "misspelt field", set_in(["spec", "maxReplicaCounts"], 4)),
        ("scaledjob.yaml", "trigger metadata not a string", set_in([*trigger, "metadata", "listLength"], 1)),
        ("scaledjob.yaml", "memory limit not a quantity", set_in([*container, "resources", "limits", "memory"], [8])),
        ("scaledjob.yaml", "container without a name", drop([*container, "name"])),
        ("scaledjob.yaml", "backoffLimit as text", set_in(["spec", "jobTargetRef", "backoffLimit"], "two")),
        ("triggerauthentication.yaml", "secret ref without key", drop(["spec", "secretTargetRef", 0, "key"])),
        ("configmap.yaml", "non-string data", set_in(["data", "MAX_ATTEMPTS"], {"value": 3})),
        ("reaper-cronjob.yaml", "no schedule", drop(["spec", "schedule"])),
        ("reaper-cronjob.yaml", "misspelt container field", set_in([*cron_container, "commands"], ["x"])),
        ("secret.example.yaml", "stringData not strings", set_in(["stringData", "REDIS_URL"], ["x"])),
    ]


@pytest.mark.parametrize(("name", "what", "edit"), broken_copies(), ids=[f"{n}:{w}" for n, w, _ in broken_copies()])
def test_broken_copy_fails_validation(name, what, edit):
    doc = copy.deepcopy(load(name))
    edit(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


SECRET_NAMES = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|REDIS_URL", re.IGNORECASE)


def test_no_secret_in_configmap_or_scaledjob():
    config = load("configmap.yaml")["data"]
    assert not [name for name in config if SECRET_NAMES.search(name)]
    assert not [value for value in config.values() if "@" in value]  # no credentials in a URL
    scaled = load("scaledjob.yaml")
    container = scaled["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]
    literal = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert not [name for name in literal if SECRET_NAMES.search(name)]
    assert {"secretRef": {"name": "stemworker-secrets"}} in container["envFrom"]
    # The trigger gets its password through the TriggerAuthentication, not from its metadata.
    trigger = scaled["spec"]["triggers"][0]
    assert not [key for key in trigger["metadata"] if SECRET_NAMES.search(key)]
    assert trigger["authenticationRef"]["name"] == load("triggerauthentication.yaml")["metadata"]["name"]


def test_example_secret_holds_only_placeholders():
    secret = load("secret.example.yaml")
    assert secret["metadata"]["name"] == "stemworker-secrets"
    for name, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, name
    assert (KEDA / "secret.example.yaml").read_text().startswith("# EXAMPLE ONLY")
    # The keys the TriggerAuthentication reads exist in the Secret.
    for ref in load("triggerauthentication.yaml")["spec"]["secretTargetRef"]:
        assert ref["name"] == "stemworker-secrets" and ref["key"] in secret["stringData"]


def test_worker_pod_is_locked_down_and_sized():
    template = load("scaledjob.yaml")["spec"]["jobTargetRef"]["template"]["spec"]
    container = template["containers"][0]
    assert template["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (mount,) = container["volumeMounts"]
    (volume,) = template["volumes"]
    assert mount["mountPath"] == "/tmp" and mount["name"] == volume["name"] and "emptyDir" in volume
    assert {"name": "TMPDIR", "value": "/tmp"} in container["env"]
    assert container["resources"]["requests"]["memory"] == "4Gi"
    assert container["resources"]["limits"]["memory"] == "8Gi"
    assert template["restartPolicy"] == "Never"


def test_scaledjob_settings_the_design_relies_on():
    spec = load("scaledjob.yaml")["spec"]
    config = load("configmap.yaml")["data"]
    trigger = spec["triggers"][0]
    assert trigger["type"] == "redis" and trigger["metadata"]["listLength"] == "1"
    assert trigger["metadata"]["listName"] == config["QUEUE_KEY"]
    assert spec["scalingStrategy"]["strategy"] == "accurate"
    assert set(spec["scalingStrategy"]["pendingPodConditions"]) == {"Ready", "PodScheduled"}
    # The runner requeues on SIGTERM and needs its grace period for that; a Job outlives the longest song.
    assert spec["jobTargetRef"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    assert spec["jobTargetRef"]["activeDeadlineSeconds"] > float(config["MAX_DURATION_SECONDS"])
    reaper = load("reaper-cronjob.yaml")["spec"]
    assert reaper["schedule"] == "* * * * *" and reaper["concurrencyPolicy"] == "Forbid"
    command = reaper["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "function.runner", "--reap"]
