"""The Knative Functions path: func.yaml has what `func deploy` needs, and the app starts the way the deployed
image starts it (functions-framework configured only by environment variables) and answers Knative's probes
and a CloudEvent shaped like the one `func invoke --format cloudevent` sends.

func's Python middleware (func-python) needs cloudevents 2.x, which cannot be installed beside functions-framework
3.x (cloudevents <= 1.12); the deployed image runs functions-framework instead, so that is what runs here."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path

import functions_framework
import yaml
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from test_main import MAIN, make_app  # noqa: F401  (make_app is a fixture)

from function.messages import EVENT_COMPLETED, EVENT_FAILED

ROOT = Path(__file__).resolve().parents[1]
QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|m|k|M|G)?$")
UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def func_yaml() -> dict:
    return yaml.safe_load((ROOT / "func.yaml").read_text())


def quantity(text: str) -> float:
    match = QUANTITY.match(str(text))
    assert match, f"not a Kubernetes quantity: {text!r}"
    return float(match[1]) * UNITS[match[2]]


def test_func_yaml_has_the_fields_func_requires():
    spec = func_yaml()
    assert tuple(int(part) for part in spec["specVersion"].split(".")) >= (0, 35, 0)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", spec["name"])
    assert spec["runtime"] == "python"
    created = spec["created"]
    assert isinstance(created, datetime) or datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    assert spec["invoke"] == "cloudevent"
    assert spec["build"]["builder"] in ("pack", "s2i", "host")
    assert set(spec) <= {
        "specVersion",
        "name",
        "runtime",
        "created",
        "invoke",
        "build",
        "run",
        "deploy",
        "namespace",
        "registry",
        "image",
        "domain",
    }


def test_func_yaml_envs_come_from_the_configmap_and_secret_the_keda_manifests_define():
    envs = func_yaml()["run"]["envs"]
    references = {}
    for env in envs:
        assert set(env) <= {"name", "value"} and isinstance(env["value"], str)
        if "name" in env:
            assert re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", env["name"])
        whole = re.fullmatch(r"\{\{ (configMap|secret):([a-z0-9-]+) \}\}", env["value"])
        if whole:
            assert "name" not in env, "a whole ConfigMap or Secret is imported without a name"
            references[whole[1]] = whole[2]
    configmap = yaml.safe_load((ROOT / "keda" / "base" / "configmap.yaml").read_text())
    secret = yaml.safe_load((ROOT / "keda" / "secret.example.yaml").read_text())
    assert references == {"configMap": configmap["metadata"]["name"], "secret": secret["metadata"]["name"]}
    threads = {env["name"]: env["value"] for env in envs if "name" in env}["THREADS"]
    assert int(threads) >= 2, "one thread separates; another must stay free for probes"


def test_func_yaml_scales_to_zero_one_request_per_pod_with_memory_for_demucs():
    options = func_yaml()["deploy"]["options"]
    assert options["scale"]["min"] == 0 and options["scale"]["max"] >= 1
    assert options["scale"]["metric"] == "concurrency" and options["scale"]["target"] == 1
    limits, requests = options["resources"]["limits"], options["resources"]["requests"]
    assert limits["concurrency"] == 1
    assert quantity(limits["memory"]) >= quantity(requests["memory"]) >= 2 * 2**30
    assert quantity(limits["cpu"]) >= quantity(requests["cpu"]) > 0


def test_runtime_start_answers_probes_and_func_invoke_events(make_app, monkeypatch, upload, song):  # noqa: F811
    make_app()  # sets the worker's settings in the environment and resets the process-wide caches
    spec = func_yaml()
    for env in spec["run"]["envs"]:
        if "name" in env:
            monkeypatch.setenv(env["name"], env["value"])
    # The image names the function by environment only, as `functions-framework` with no flags reads it.
    monkeypatch.setenv("FUNCTION_TARGET", "handle")
    monkeypatch.setenv("FUNCTION_SOURCE", str(MAIN))
    client = functions_framework.create_app().test_client()

    for probe in spec["deploy"]["healthEndpoints"].values():
        response = client.get(probe)
        assert response.status_code == 200 and response.get_json()["status"] == "ok"

    def invoke(data: str):
        # What `func invoke --format cloudevent --data ...` sends: binary mode, func's default source and type.
        event = CloudEvent(
            {"id": str(uuid.uuid4()), "source": "/boson/fn", "type": "boson.fn", "datacontenttype": "application/json"},
            json.loads(data),
        )
        headers, body = to_binary(event)
        return client.post("/", headers=headers, data=body)

    default = invoke('{"message":"Hello World"}')  # func invoke's default data
    assert default.status_code == 400 and default.headers["ce-type"] == EVENT_FAILED
    assert "no id" in default.get_json()["error"]

    upload("knative1", song)
    done = invoke('{"songhash": "knative1"}')
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.headers["ce-type"] == EVENT_COMPLETED and done.headers["ce-subject"] == "knative1"
    assert done.get_json()["state"] == "done"
