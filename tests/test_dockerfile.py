"""The Dockerfile installs what CI installs, and has the shape a Kubernetes pod needs.

CI's install steps live in `.ci/run` and the scripts it runs; the image must pin torch exactly as they do
and install the project from pyproject.toml (runtime dependencies only). The structural checks cover the
non-root user, the entrypoint, TMPDIR, the OCI labels and that no pip configuration or secret can end up
in a layer. Building and running the image is `.ci/image` (heavy, opt-in).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CI_RUN = ROOT / ".ci" / "run"
TORCH_PIN = re.compile(r"\bpip3?\s+install\b[^\n]*?['\"]?\btorch==([0-9][^\s'\"]*)")


def instructions(path: Path = DOCKERFILE) -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) for every instruction; continuations joined, comments dropped."""
    result: list[tuple[int, str, str]] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append((stage, keyword, args.strip()))
    return result


def stage_of(name: str) -> int:
    for stage, keyword, args in instructions():
        if keyword == "FROM" and re.search(rf"\bAS\s+{re.escape(name)}\s*$", args, re.IGNORECASE):
            return stage
    raise AssertionError(f"Dockerfile has no stage named {name!r}")


def stage_items(stage: int) -> list[tuple[str, str]]:
    return [(keyword, args) for found, keyword, args in instructions() if found == stage]


def final_stage() -> list[tuple[str, str]]:
    """The `runtime` stage: everything the shipped images have (the `job` and `http` targets only add an
    ENTRYPOINT on top of it)."""
    return stage_items(stage_of("runtime"))


def test_default_target_is_the_job_runner_and_http_serves_functions_framework() -> None:
    last = max(stage for stage, _, _ in instructions())
    assert last == stage_of("job"), "the last stage (docker build's default target) must be the job runner"
    for name, entrypoint in (("job", ["python", "-m", "function.runner"]), ("http", ["functions-framework"])):
        items = stage_items(stage_of(name))
        assert items[0] == ("FROM", f"runtime AS {name}")
        assert [json.loads(args) for keyword, args in items if keyword == "ENTRYPOINT"] == [entrypoint]


def arg_default(name: str, stage: int | None = None) -> str:
    for found_stage, keyword, args in instructions():
        if keyword == "ARG" and args.startswith(f"{name}=") and (stage is None or found_stage == stage):
            return args.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"Dockerfile has no ARG {name}=<default>" + (f" in stage {stage}" if stage else ""))


def env_values(items: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, args in items:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                values[key] = value
    return values


def ci_scripts() -> list[Path]:
    """`.ci/run` and every repository script it runs (one level deep is what CI uses)."""
    if not CI_RUN.is_file():
        pytest.fail(
            f"{CI_RUN.relative_to(ROOT)} is missing: the image's torch pin is checked against CI's install "
            "steps there (pip install torch==...), so CI must exist first"
        )
    scripts = [CI_RUN]
    for match in re.finditer(r"(?:\./)?((?:scripts|\.ci)/[\w./-]+)", CI_RUN.read_text()):
        candidate = ROOT / match.group(1)
        if candidate.is_file() and candidate not in scripts:
            scripts.append(candidate)
    return scripts


def ci_torch_pin() -> str:
    pins = {pin for script in ci_scripts() for pin in TORCH_PIN.findall(script.read_text())}
    if not pins:
        names = ", ".join(str(script.relative_to(ROOT)) for script in ci_scripts())
        pytest.fail(f"no 'pip install torch==<version>' found in CI ({names}); the image pins torch to match it")
    assert len(pins) == 1, f"CI pins torch to several versions: {sorted(pins)}"
    return pins.pop()


def pip_runs(stage: int) -> list[str]:
    return [args for found, keyword, args in instructions() if found == stage and keyword == "RUN" and "pip " in args]


def test_torch_pin_matches_ci() -> None:
    assert arg_default("TORCH_SPEC", stage_of("build")) == f"torch=={ci_torch_pin()}"


def test_torch_is_installed_first_then_the_lock_then_the_project() -> None:
    runs = pip_runs(stage_of("build"))
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 3, installs
    first = installs[0]
    assert re.search(r'pip install \$\{TORCH_INDEX:\+--index-url "\$TORCH_INDEX"\} "\$TORCH_SPEC"\s*$', first), first
    lock = installs[1]
    assert re.search(r"pip install --no-deps --require-hashes -r requirements\.lock\s*$", lock), lock
    project = installs[2]
    assert re.search(r"pip wheel --no-deps --wheel-dir (\S+) \.(\s|$)", project), project
    assert re.search(r"pip install --no-deps \S+/stemworker-\*\.whl", project), project
    assert "pip check" in project.split("stemworker-*.whl")[1], "pip check must prove the lock covers pyproject.toml"
    assert "[" not in project.split("stemworker-*.whl")[1].split("&&")[0], "the image must not install extras"
    # Nothing else is installed by name: torch by TORCH_SPEC, every other dependency from the lock.
    for run in installs:
        named = re.findall(r"pip install ([^&;]*)", run)
        for spec in named:
            for token in shlex.split(re.sub(r"\$\{[^}]*\}", "", spec)):
                if token.startswith("-"):
                    continue
                assert token in ("$TORCH_SPEC", "/tmp/dist/stemworker-*.whl", "requirements.lock"), (
                    f"pip installs {token!r} by name"
                )
    copies = [args for stage, keyword, args in instructions() if keyword == "COPY" and stage == stage_of("build")]
    assert copies.index("requirements.lock ./") < next(i for i, c in enumerate(copies) if c.startswith("function"))


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of requirements.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split("--hash=")
        name, _, version = requirement.strip().partition("==")
        assert version and ";" not in version, f"not pinned to one version: {line!r}"
        pins[canonical(name)] = (version.strip(), [option.strip() for option in options])
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_runtime_dependency_but_torch_with_hashes() -> None:
    from packaging.requirements import Requirement

    pins = lock_pins()
    assert pins, "requirements.lock is empty"
    for name, (_, hashes) in pins.items():
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{name} has no sha256 hash"
    assert "torch" not in pins and not [name for name in pins if name.startswith("nvidia-")], (
        "torch comes from TORCH_SPEC and TORCH_INDEX, never from the lock"
    )
    dependencies = [
        Requirement(spec) for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    for requirement in dependencies:
        name = canonical(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} (pyproject.toml) is not in requirements.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, outside pyproject's {requirement.specifier}"
        )
    header = (ROOT / "requirements.lock").read_text().splitlines()[:2]
    assert any("scripts/lock.sh" in line for line in header), "the lock must name the command that refreshes it"


def test_ci_installs_the_project_from_the_same_pyproject() -> None:
    text = "\n".join(script.read_text() for script in ci_scripts())
    assert re.search(r"pip3? install[^\n]*-e\s+['\"]?\.(\[[\w,]+\])?['\"]?", text), "CI does not pip install the repo"
    copies = [args for stage, keyword, args in instructions() if keyword == "COPY" and stage == stage_of("build")]
    assert any(args.split()[0] == "pyproject.toml" for args in copies), "the build does not copy pyproject.toml"


def test_base_image_and_python_version() -> None:
    assert arg_default("BASE_IMAGE") == "python:3.11-slim-bookworm"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.startswith(">=3.11")
    builds = [args for _, keyword, args in instructions() if keyword == "RUN" and " -m venv " in f" {args}"]
    assert builds == ["python3 -m venv /opt/venv"], "the venv must come from python3 -m venv (both base kinds)"


def test_multi_stage_copies_only_the_venv_and_models() -> None:
    copies = [args for keyword, args in final_stage() if keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv", "--from=build /opt/stemworker /opt/stemworker"]


def test_runs_as_the_manifests_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {users[-1]!r}"
    assert gid.isdigit() and int(gid) != 0, f"USER must name a numeric non-root gid, got {users[-1]!r}"
    manifest = ROOT / "keda" / "base" / "scaledjob.yaml"
    if manifest.is_file():
        docs = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
        text = json.dumps(docs)
        run_as = re.findall(r'"runAsUser": (\d+)', text)
        assert not run_as or set(run_as) == {uid}, f"keda runAsUser {run_as} != image USER {uid}"


def test_entrypoint_and_temp_dir() -> None:
    final = final_stage()
    entrypoints = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["python", "-m", "function.runner"]
    env = env_values(final)
    assert env["TMPDIR"] == "/tmp"
    assert env["HOME"].startswith(env["TMPDIR"]), "HOME must be under TMPDIR: the root fs is read-only"
    assert env["DEMUCS_REPO"].startswith("/opt/stemworker"), "the baked models must be the worker's model repo"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["FUNCTION_TARGET"] == "handle", "functions-framework alternative: FUNCTION_TARGET=handle"


def test_oci_labels_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = " ".join(args for keyword, args in final_stage() if keyword == "LABEL")
    for name in ("source", "version", "licenses", "revision", "title"):
        assert f"org.opencontainers.image.{name}=" in labels, f"missing label org.opencontainers.image.{name}"
    assert 'org.opencontainers.image.licenses="MIT"' in labels and project["license"]["text"] == "MIT"
    assert arg_default("VERSION") == project["version"]


def test_no_pip_configuration_or_secret_in_any_layer() -> None:
    text = DOCKERFILE.read_text()
    for leak in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_INDEX_URL", "/etc/xdg/pip", "/opt/wheels", "PIP_CONSTRAINT"):
        assert leak not in text, f"the Dockerfile names host pip configuration {leak!r}"
    for _, keyword, args in instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*=", args, re.I), f"{keyword} {args}"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"pip\.conf|\.crt|\.pem|constraints|secret", args, re.I), f"{keyword} {args}"
        if keyword == "RUN" and re.search(r"\bpip (install|wheel)\b", args):
            for secret in ("pip.conf", "pip-ca.crt", "pip-constraints.txt"):
                assert f"--mount=type=secret,id={secret}" in args, f"pip runs without the {secret} secret: {args}"
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert not re.search(r"--build-arg[^\n]*PIP_", script), "pip settings must not travel as build args"


def test_dockerignore_keeps_everything_but_the_package_out() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore must start by excluding everything"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert included == {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "function",
        "stemops",
        "scripts/bake_models.py",
    }
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M):
        for source in copied.split():
            assert source.rstrip("*") in included, f"COPY {source} is excluded by .dockerignore"


def test_the_build_stage_can_compile_diffq_and_the_runtime_ships_no_compiler() -> None:
    """diffq (DiffQ-quantized models: mdx_q, mdx_extra_q) is an sdist with a Cython extension: the build stage
    installs a C compiler before pip builds the project's dependencies; the runtime stage copies only the venv."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"diffq\b", spec) for spec in dependencies), "pyproject.toml must declare diffq"
    build = stage_of("build")
    assert set(shlex.split(arg_default("BUILD_DEPS", build))) >= {"gcc", "libc6-dev"}
    runs = [args for found, keyword, args in instructions() if found == build and keyword == "RUN"]
    compiler = next(i for i, args in enumerate(runs) if "apt-get install" in args and "$BUILD_DEPS" in args)
    project = next(i for i, args in enumerate(runs) if "stemworker-*.whl" in args)
    assert compiler < project, "the compiler must be there before pip builds diffq"
    assert "python3-dev" in runs[compiler], "a Debian python3 base has no Python headers without python3-dev"
    assert "rm -rf /var/lib/apt/lists" in runs[compiler]
    runtime = [args for keyword, args in final_stage() if keyword == "RUN"]
    assert not any(re.search(r"\b(gcc|cc|build-essential|BUILD_DEPS)\b", args) for args in runtime)
