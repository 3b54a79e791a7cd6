"""Offline validation of `keda/`: KEDA objects against the CRD schemas copied into `tests/schemas/keda/`
(KEDA's released CRDs), core objects against kubernetes-validate's bundled Kubernetes schemas (strict mode,
unknown fields rejected). A deliberately broken copy of each manifest must fail, so the checks are live. Each
overlay (`keda/overlays/*`) is rendered with `kubectl kustomize` and every object it yields is validated the same
way, with the values the overlay sets once checked to reach every object that uses them.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KEDA = ROOT / "keda"
BASE = KEDA / "base"
OVERLAYS = sorted(p.name for p in (KEDA / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "keda"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are checked against
CRDS = {"ScaledJob": "keda.sh_scaledjobs.yaml", "TriggerAuthentication": "keda.sh_triggerauthentications.yaml"}


def load(name: str) -> dict[str, Any]:
    """One manifest of the base, or the example Secret (beside it, never applied)."""
    path = KEDA / name if name == "secret.example.yaml" else BASE / name
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def resources() -> list[dict[str, Any]]:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    return [load(name) for name in listed]


MANIFESTS = sorted([p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"] + ["secret.example.yaml"])


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
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "stemworker-x"},
        "spec": scaled_job["spec"]["jobTargetRef"],
    }


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        from test_monitoring_manifests import validate as validate_monitoring

        validate_monitoring(doc)
    elif doc["apiVersion"].startswith("keda.sh/"):
        validate_keda(doc)
        if doc["kind"] == "ScaledJob":
            validate_core(job_of(doc))
    else:
        validate_core(doc)


def test_kustomization_lists_every_manifest_but_the_example_secret():
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert {d["kind"] for d in resources()} == {
        "ConfigMap",
        "TriggerAuthentication",
        "ScaledJob",
        "CronJob",
        "NetworkPolicy",
    }
    # keda/ itself is the base alone (what the emulator and the planner read); the Secret is in no kustomization.
    assert yaml.safe_load((KEDA / "kustomization.yaml").read_text())["resources"] == ["base"]
    assert OVERLAYS == ["dev", "production"]


@pytest.mark.parametrize("name", MANIFESTS)
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
        (
            "scaledjob.yaml",
            "misspelt pod failure rule",
            set_in(["spec", "jobTargetRef", "podFailurePolicy", "rules", 0, "onExitCode"], {"values": [2]}),
        ),
        (
            "scaledjob.yaml",
            "exit codes as text",
            set_in(["spec", "jobTargetRef", "podFailurePolicy", "rules", 0, "onExitCodes", "values"], "2"),
        ),
        ("networkpolicy.yaml", "port as a list", set_in(["spec", "egress", 1, "ports", 0, "port"], [6379])),
        ("networkpolicy.yaml", "misspelt egress field", set_in(["spec", "egress", 3, "too"], [])),
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
    # From the measured peaks (docs/kubernetes.md, "Sizing"), and a request for the work dir.
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "1Gi"}
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "3584Mi", "ephemeral-storage": "4Gi"}
    assert volume["emptyDir"]["sizeLimit"] == container["resources"]["limits"]["ephemeral-storage"]
    assert template["restartPolicy"] == "Never"
    # The pod's name reaches the runner (who runs what: `stemworker workers`).
    (pod_name,) = [item for item in container["env"] if item["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The overlay names the image and its tag; the base pins no tag and no pull policy.
    assert container["image"] == "stemworker" and "imagePullPolicy" not in container


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
    reaper_container = reaper["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert reaper_container["command"] == ["python", "-m", "function.reaper"]  # no torch: tests/test_reaper.py
    assert reaper_container["resources"]["requests"]["memory"] == "64Mi"
    # A configuration error (the runner's exit code 2) fails the Job at once; evictions do not count as failures.
    rules = spec["jobTargetRef"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]},
    }
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["jobTargetRef"]["template"]["spec"]["containers"][0]["name"] == "worker"


def test_the_network_policy_allows_dns_redis_s3_and_the_callback_network_only():
    policy = load("networkpolicy.yaml")["spec"]
    assert policy["policyTypes"] == ["Egress"] and "ingress" not in policy
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "stemworker"}
    ports = [sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in policy["egress"]]
    assert ports == [[("TCP", 53), ("UDP", 53)], [("TCP", 6379)], [("TCP", 9000)], [("TCP", 80), ("TCP", 443)]]
    (callback,) = policy["egress"][3]["to"]
    assert callback["ipBlock"]["cidr"] == load("configmap.yaml")["data"]["CALLBACK_EGRESS_CIDR"]
    for name in ("scaledjob.yaml", "reaper-cronjob.yaml"):  # every stemworker pod is selected
        text = (BASE / name).read_text()
        assert "app.kubernetes.io/name: stemworker" in text


kubectl = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(kubectl is None, reason="kubectl not installed (kubectl kustomize renders overlays)")


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kubectl, "kustomize", str(KEDA / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_every_object_is_valid(overlay):
    docs = rendered(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"ConfigMap", "TriggerAuthentication", "ScaledJob", "CronJob", "NetworkPolicy"} <= kinds
    for doc in docs:
        validate(doc)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_sets_each_value_once_and_everything_uses_it(overlay):
    docs = rendered(overlay)
    kustomization = yaml.safe_load((KEDA / "overlays" / overlay / "kustomization.yaml").read_text())
    namespace = kustomization["namespace"]
    assert all(doc["metadata"].get("namespace") == namespace for doc in docs)
    (config,) = [d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stemworker-config"]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledJob"]
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["address"] == f"{config['REDIS_HOST']}:{config['REDIS_PORT']}"
    assert trigger["listName"] == config["QUEUE_KEY"]
    assert scaled["spec"]["maxReplicaCount"] == int(config["SCALEDJOB_MAX_REPLICAS"])
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["egress"][3]["to"][0]["ipBlock"]["cidr"] == config["CALLBACK_EGRESS_CIDR"]
    # The overlay's literals really differ from the base's placeholders, so the copies above are the overlay's.
    base = load("configmap.yaml")["data"]
    assert config["SCALEDJOB_MAX_REPLICAS"] != base["SCALEDJOB_MAX_REPLICAS"]
    assert config["CALLBACK_EGRESS_CIDR"] != base["CALLBACK_EGRESS_CIDR"]
    # One image, by an explicit tag (or digest), everywhere; never :latest.
    (image,) = kustomization["images"]
    images = set(re.findall(r"'image': '([^']+)'", str(docs)))
    expected = f"{image['newName']}@{image['digest']}" if "digest" in image else f"{image['newName']}:{image['newTag']}"
    assert images == {expected}
    assert "latest" not in expected and image.get("newTag") != ""
    assert "IfNotPresent" not in str(docs) or ":latest" not in str(docs)
