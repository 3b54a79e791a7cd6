"""A local emulator of KEDA's ScaledJob for `keda/`: the same scaling decisions, with subprocesses as pods.

    python -m workbench.emulator [--manifests keda] [--polling-interval S] [--max-replicas N] [--reap-interval S]
                              [--env KEY=VALUE ...] [--no-until-empty] [--max-seconds S] [--workdir DIR]

It reads the ScaledJob, its ConfigMaps and the reaper CronJob from the kustomization in `--manifests`, then
every pollingInterval reads the length of the trigger's Redis list and creates as many Jobs as KEDA would
(`workbench.scaling.decide`). Each Job runs one pod: the container's command (`python -m function.runner`)
as a subprocess. Like Kubernetes it:
- gives each pod the container's environment: the ConfigMaps of `envFrom`, then literal `env` values; Secrets
  are not read (they hold placeholders) - credentials come from this process's environment, which overlays
  the manifest, and `--env` overlays both;
- mounts each `emptyDir` as a fresh folder per pod (env values under its mountPath are rewritten to it) and
  deletes it when the pod ends; the pod's name is in `POD_NAME`, its output in `<workdir>/pods/<pod>/log`;
- retries a Job whose pod exits non-zero up to `backoffLimit` times (the new pod starts at the next poll);
- runs the reaper CronJob's command every `--reap-interval` seconds (default: its schedule), never two at once.

What KEDA calls pending: a Job is pending until its pod has claimed a message - it printed `claimed job` -
which is what the `Ready` pod condition stands for with `pendingPodConditions`; running counts every
unfinished Job, pending ones included.

Each poll prints one line (queue, processing, pending, running, created, done, dead); at the end a summary.
By default it exits once the queue, the processing list and the Jobs are all empty (exit 0), or when
`--max-seconds` runs out (exit 1, pods are stopped with SIGTERM, then SIGKILL after their grace period).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
import yaml
from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from function.clients import redis_client
from function.config import Settings, load_settings
from function.errors import ConfigError
from function.queue import WorkQueue
from workbench.scaling import Decision, ScalingStrategy, decide

# A pod has claimed its message once it printed this (function.runner logs it right after the claim).
CLAIM_MARKER = re.compile(r"claimed job (\S+)")
# function.runner's last line: the outcome of its message.
OUTCOME_MARKER = re.compile(r"outcome (\S+) job=(\S+)")

# Kubernetes / KEDA defaults for fields the manifest leaves out.
DEFAULT_POLLING_INTERVAL_S = 30.0
DEFAULT_MAX_REPLICA_COUNT = 100
DEFAULT_LIST_LENGTH = 5.0  # the redis scaler's listLength default
DEFAULT_BACKOFF_LIMIT = 6
DEFAULT_GRACE_S = 30.0


@dataclass(frozen=True)
class PodSpec:
    """What starting one pod of a container needs: its command, environment and emptyDir mounts."""

    command: tuple[str, ...]
    env: dict[str, str]
    empty_dirs: tuple[str, ...] = ()
    grace_s: float = DEFAULT_GRACE_S


@dataclass(frozen=True)
class ScaledJobSpec:
    """The parts of a ScaledJob (and its redis trigger) that drive scaling."""

    name: str
    polling_interval_s: float
    strategy: ScalingStrategy
    list_name: str
    list_length: float
    activation_list_length: float
    backoff_limit: int
    pod: PodSpec


@dataclass(frozen=True)
class Manifests:
    scaled_job: ScaledJobSpec
    reaper: PodSpec | None
    reap_interval_s: float


def load_documents(folder: Path) -> list[dict[str, Any]]:
    """Every object of the kustomization's resources, following resources that are folders (or of every *.yaml
    when there is no kustomization). Kustomize's transformers (an overlay's patches, images, replacements) are not
    applied: point it at the base (`keda/`, which lists `keda/base`), whose settings agree with each other."""
    kustomization = folder / "kustomization.yaml"
    if not kustomization.exists():
        return [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    docs: list[dict[str, Any]] = []
    for name in yaml.safe_load(kustomization.read_text()).get("resources", []):
        path = folder / name
        if path.is_dir():
            docs += load_documents(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def is_reaper(cron_job: dict[str, Any]) -> bool:
    """A CronJob whose command reaps: `python -m function.reaper`, or the runner's `--reap`."""
    command = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].get("command", [])
    return "--reap" in command or "function.reaper" in command


def _container_env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is not None:
            if ref["name"] not in config_maps and not ref.get("optional"):
                raise ConfigError(f"envFrom names ConfigMap {ref['name']!r}, which the manifests do not define")
            env.update({source.get("prefix", "") + k: str(v) for k, v in config_maps.get(ref["name"], {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def pod_spec(template_spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> PodSpec:
    """The first container of a pod template, with the emptyDir volumes it mounts."""
    container = template_spec["containers"][0]
    empty = {volume["name"] for volume in template_spec.get("volumes", []) if "emptyDir" in volume}
    mounts = tuple(m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty)
    return PodSpec(
        command=tuple(container.get("command", [])) + tuple(container.get("args", [])),
        env=_container_env(container, config_maps),
        empty_dirs=mounts,
        grace_s=float(template_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)),
    )


def cron_interval_s(schedule: str) -> float:
    """Seconds between runs of a `* * * * *` or `*/N * * * *` schedule (other schedules: every minute)."""
    minute = schedule.split()[0]
    if minute.startswith("*/") and minute[2:].isdigit():
        return 60.0 * int(minute[2:])
    return 60.0


def load_manifests(folder: Path) -> Manifests:
    """Parse the ScaledJob, its ConfigMaps and the reaper CronJob (the one whose command reaps)."""
    docs = load_documents(folder)
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    scaled = [d for d in docs if d.get("kind") == "ScaledJob"]
    if len(scaled) != 1:
        raise ConfigError(f"expected exactly one ScaledJob in {folder}, found {len(scaled)}")
    spec = scaled[0]["spec"]
    triggers = [t for t in spec["triggers"] if t["type"] == "redis"]
    if not triggers:
        raise ConfigError("the ScaledJob has no redis trigger")
    meta = triggers[0]["metadata"]
    strategy = spec.get("scalingStrategy", {})
    job = spec["jobTargetRef"]
    scaled_job = ScaledJobSpec(
        name=scaled[0]["metadata"]["name"],
        polling_interval_s=float(spec.get("pollingInterval", DEFAULT_POLLING_INTERVAL_S)),
        strategy=ScalingStrategy(
            name=strategy.get("strategy", "default"),
            max_replica_count=int(spec.get("maxReplicaCount", DEFAULT_MAX_REPLICA_COUNT)),
            min_replica_count=int(spec.get("minReplicaCount", 0)),
            queue_length_deduction=strategy.get("customScalingQueueLengthDeduction"),
            running_job_percentage=strategy.get("customScalingRunningJobPercentage"),
            pending_pod_conditions=tuple(strategy.get("pendingPodConditions", ())),
        ),
        list_name=meta["listName"],
        list_length=float(meta.get("listLength", DEFAULT_LIST_LENGTH)),
        activation_list_length=float(meta.get("activationListLength", 0)),
        backoff_limit=int(job.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)),
        pod=pod_spec(job["template"]["spec"], config_maps),
    )
    reapers = [d for d in docs if d.get("kind") == "CronJob" and is_reaper(d)]
    reaper = reapers[0] if reapers else None
    return Manifests(
        scaled_job=scaled_job,
        reaper=pod_spec(reaper["spec"]["jobTemplate"]["spec"]["template"]["spec"], config_maps) if reaper else None,
        reap_interval_s=cron_interval_s(reaper["spec"]["schedule"]) if reaper else 60.0,
    )


@dataclass
class Pod:
    """One pod: a subprocess with its own folder (log file and emptyDir mounts)."""

    name: str
    process: subprocess.Popen
    home: Path
    claimed: bool = False
    outcome: str | None = None
    exit_code: int | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "log"

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class KubeJob:
    """One Kubernetes Job: its pods (one at a time) and how often they failed."""

    name: str
    pods: list[Pod] = field(default_factory=list)
    failures: int = 0
    phase: str = "running"  # running | succeeded | failed

    @property
    def pod(self) -> Pod | None:
        return self.pods[-1] if self.pods else None

    @property
    def pending(self) -> bool:
        """Unfinished with no pod that has claimed (a pod still starting, or a retry not yet started)."""
        pod = self.pod
        return self.phase == "running" and (pod is None or pod.exit_code is not None or not pod.claimed)


class PodRunner:
    """Starts pods of one PodSpec under `workdir`, the way the kubelet would run the container."""

    def __init__(self, spec: PodSpec, workdir: Path, overrides: dict[str, str]) -> None:
        self.spec = spec
        self.workdir = workdir
        self.overrides = overrides

    def environment(self, home: Path | None = None) -> dict[str, str]:
        """Manifest env, overlaid by this process's env, overlaid by `--env`; emptyDir paths mapped into `home`."""
        env = {**self.spec.env, **os.environ, **self.overrides}
        if home is not None:
            for index, mount in enumerate(self.spec.empty_dirs):
                local = home / f"volume-{index}"
                local.mkdir(parents=True, exist_ok=True)
                for name, value in self.spec.env.items():
                    if env.get(name) == value and (value == mount or value.startswith(mount.rstrip("/") + "/")):
                        env[name] = str(local) + value[len(mount.rstrip("/")) :]
        return env

    def command(self) -> list[str]:
        command = list(self.spec.command)
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable  # the image's python is this interpreter here
        return command

    def start(self, name: str) -> Pod:
        home = self.workdir / "pods" / name
        home.mkdir(parents=True)
        env = {**self.environment(home), "POD_NAME": name}
        with (home / "log").open("wb") as log:
            process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return Pod(name=name, process=process, home=home)


def release_volumes(pod: Pod) -> None:
    """Delete a finished pod's emptyDir folders (its log stays, like `kubectl logs` of a finished pod)."""
    for volume in pod.home.glob("volume-*"):
        shutil.rmtree(volume, ignore_errors=True)


def pod_settings(env: dict[str, str]) -> Settings:
    """The worker settings a pod would read from `env`; a bad value fails here, before any pod starts."""
    names = set(Settings.model_fields) | {
        str(old)
        for info in Settings.model_fields.values()
        if isinstance(info.validation_alias, AliasChoices)
        for old in info.validation_alias.choices
    }  # e.g. CLAIM_WAIT_SECONDS
    return load_settings(**{name.lower(): value for name, value in env.items() if name.lower() in names})


@dataclass
class Tally:
    """What the emulator saw happen, for the live lines and the summary."""

    jobs: int = 0
    pods: int = 0
    killed: int = 0
    outcomes: Counter = field(default_factory=Counter)
    jobs_by_phase: Counter = field(default_factory=Counter)


class Scaler:
    """KEDA's ScaledJob loop for one ScaledJob, against one Redis."""

    def __init__(
        self,
        manifests: Manifests,
        workdir: Path,
        overrides: dict[str, str],
        polling_interval_s: float | None = None,
        max_replicas: int | None = None,
        reap_interval_s: float | None = None,
    ) -> None:
        spec = manifests.scaled_job
        if max_replicas is not None:
            spec = _with_max_replicas(spec, max_replicas)
        self.spec = spec
        self.polling_interval_s = polling_interval_s or spec.polling_interval_s
        self.reap_interval_s = reap_interval_s or manifests.reap_interval_s
        self.pods = PodRunner(spec.pod, workdir, overrides)
        self.reaper = PodRunner(manifests.reaper, workdir, overrides) if manifests.reaper else None
        settings = pod_settings(self.pods.environment())
        if settings.queue_key != spec.list_name:
            raise ConfigError(
                f"the pods' QUEUE_KEY {settings.queue_key!r} is not the trigger's listName "
                f"{spec.list_name!r}: KEDA would count one list while pods take from another"
            )
        self.redis = redis_client(settings)
        self.jobs: list[KubeJob] = []
        self.tally = Tally()
        self._reap_process: subprocess.Popen | None = None
        self._next_reap = 0.0
        self._reaps = 0
        self.stopping = False

    def lengths(self) -> tuple[int, int, int]:
        """(queued, processing, dead) of the watched list and its processing and dead-letter lists."""
        return WorkQueue(self.redis, self.spec.list_name).lengths()

    def _observe(self, pod: Pod) -> None:
        if pod.claimed and pod.outcome is not None:
            return
        text = pod.read_log()
        pod.claimed = pod.claimed or CLAIM_MARKER.search(text) is not None
        outcome = OUTCOME_MARKER.search(text)
        if outcome is not None and pod.outcome is None:
            pod.outcome = outcome.group(1)

    def update_jobs(self) -> None:
        """Notice pods that ended: a Job succeeds on exit 0, else gets a new pod at the next poll (as the Job
        controller's backoff delays it) up to backoffLimit times, then fails."""
        for job in self.jobs:
            pod = job.pod
            if job.phase != "running" or pod is None:
                continue
            if pod.exit_code is not None:
                self._start_pod(job)
                continue
            self._observe(pod)
            code = pod.process.poll()
            if code is None:
                continue
            self._finish_pod(pod, code)
            if code != 0 and job.failures < self.spec.backoff_limit:
                job.failures += 1
                continue
            job.phase = "succeeded" if code == 0 else "failed"
            self.tally.jobs_by_phase[job.phase] += 1

    def _finish_pod(self, pod: Pod, code: int) -> None:
        self._observe(pod)
        pod.exit_code = code
        if code < 0:
            self.tally.killed += 1
        self.tally.outcomes[pod.outcome or ("killed" if code < 0 else f"exit {code}")] += 1
        release_volumes(pod)

    def _start_pod(self, job: KubeJob) -> None:
        job.pods.append(self.pods.start(f"{job.name}-{len(job.pods)}"))
        self.tally.pods += 1

    def create_jobs(self, count: int) -> None:
        for _ in range(count):
            job = KubeJob(name=f"{self.spec.name}-{len(self.jobs):04d}")
            self.jobs.append(job)
            self.tally.jobs += 1
            self._start_pod(job)

    def maybe_reap(self, now: float) -> None:
        """Run the reaper CronJob's command when due and the previous run has ended (concurrencyPolicy Forbid)."""
        if self.reaper is None or now < self._next_reap:
            return
        if self._reap_process is not None and self._reap_process.poll() is None:
            return
        self._next_reap = now + self.reap_interval_s
        self._reaps += 1
        log = self.pods.workdir / "reaper.log"
        with log.open("ab") as out:
            self._reap_process = subprocess.Popen(
                self.reaper.command(),
                env=self.reaper.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def poll(self, now: float) -> tuple[Decision, tuple[int, int, int]]:
        """One KEDA polling cycle: observe pods and the list, then create the Jobs the strategy allows."""
        self.update_jobs()
        self.maybe_reap(now)
        lengths = self.lengths()
        running = [job for job in self.jobs if job.phase == "running"]
        pending = [job for job in running if job.pending]
        decision = decide(
            self.spec.strategy,
            lengths[0],
            self.spec.list_length,
            len(running),
            len(pending),
            self.spec.activation_list_length,
        )
        self.create_jobs(decision.create)
        return decision, lengths

    def idle(self, lengths: tuple[int, int, int]) -> bool:
        return lengths[0] == 0 and lengths[1] == 0 and not any(job.phase == "running" for job in self.jobs)

    def live_line(self, elapsed_s: float, decision: Decision, lengths: tuple[int, int, int]) -> str:
        running = [job for job in self.jobs if job.phase == "running"]
        pending = sum(job.pending for job in running)
        return (
            f"[{elapsed_s:7.1f} s] queue={lengths[0]} processing={lengths[1]} pending={pending} "
            f"running={len(running)} created=+{decision.create} done={self.tally.outcomes['done']} "
            f"dead={lengths[2]} killed={self.tally.killed}"
        )

    def stop(self) -> None:
        """SIGTERM every live pod, SIGKILL what is left after its grace period (Kubernetes pod deletion)."""
        live = [job.pod for job in self.jobs if job.pod is not None and job.pod.process.poll() is None]
        for pod in live:
            _signal(pod.process, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.pod.grace_s
        for pod in live:
            try:
                pod.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(pod.process, signal.SIGKILL)
                pod.process.wait(timeout=10)
        if self._reap_process is not None:
            try:
                self._reap_process.wait(timeout=self.spec.pod.grace_s)
            except subprocess.TimeoutExpired:
                _signal(self._reap_process, signal.SIGKILL)
        self.update_jobs()

    def summary(self, elapsed_s: float, lengths: tuple[int, int, int], drained: bool) -> dict[str, Any]:
        return {
            "drained": drained,
            "seconds": round(elapsed_s, 2),
            "jobs": self.tally.jobs,
            "jobs_succeeded": self.tally.jobs_by_phase["succeeded"],
            "jobs_failed": self.tally.jobs_by_phase["failed"],
            "pods": self.tally.pods,
            "pods_killed": self.tally.killed,
            "outcomes": dict(self.tally.outcomes),
            "reaper_runs": self._reaps,
            "queue": lengths[0],
            "processing": lengths[1],
            "dead": lengths[2],
        }

    def run(self, until_empty: bool = True, max_seconds: float | None = None) -> dict[str, Any]:
        """Poll until idle (with `until_empty`), `max_seconds` or `stopping`; returns the summary."""
        started = time.monotonic()
        drained = False
        lengths = (0, 0, 0)
        print(
            f"scaler: {self.spec.name} strategy={self.spec.strategy.name} "
            f"maxReplicaCount={self.spec.strategy.max_replica_count} listName={self.spec.list_name} "
            f"listLength={self.spec.list_length:g} pollingInterval={self.polling_interval_s:g} s "
            f"reap every {self.reap_interval_s:g} s; a Job is pending until its pod claims (stands for "
            f"pendingPodConditions {','.join(self.spec.strategy.pending_pod_conditions) or 'none'})",
            flush=True,
        )
        while True:
            tick = time.monotonic()
            polled = True
            try:
                decision, lengths = self.poll(tick)
                print(self.live_line(tick - started, decision, lengths), flush=True)
            except redis.RedisError as err:  # KEDA marks the trigger in error and creates nothing this poll
                polled = False
                print(f"[{tick - started:7.1f} s] redis error, no scaling this poll: {err}", flush=True)
            if until_empty and polled and self.idle(lengths):
                drained = True
                break
            if self.stopping or (max_seconds is not None and tick - started >= max_seconds):
                break
            time.sleep(max(0.0, self.polling_interval_s - (time.monotonic() - tick)))
        if not drained:
            self.stop()
            lengths = self.lengths()
        result = self.summary(time.monotonic() - started, lengths, drained)
        outcomes = " ".join(f"{name}={count}" for name, count in sorted(result["outcomes"].items()))
        print(
            f"summary: {result['seconds']} s, {'drained' if drained else 'stopped'}; jobs {result['jobs']} "
            f"(succeeded {result['jobs_succeeded']}, failed {result['jobs_failed']}); pods {result['pods']} "
            f"(killed {result['pods_killed']}); outcomes {outcomes or '-'}; reaper runs {result['reaper_runs']}; "
            f"left: queue {lengths[0]}, processing {lengths[1]}, dead-lettered {lengths[2]}",
            flush=True,
        )
        return result


def _with_max_replicas(spec: ScaledJobSpec, max_replicas: int) -> ScaledJobSpec:
    return replace(spec, strategy=replace(spec.strategy, max_replica_count=max_replicas))


def _signal(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def _env_pair(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {raw!r}")
    return name, value


class EmulatorSettings(BaseSettings):
    """The emulator's own knobs, each also a flag: `SCALER_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SCALER_", frozen=True, extra="ignore")

    manifests: Path = Path("keda")
    polling_interval: float | None = Field(None, gt=0)
    max_replicas: int | None = Field(None, ge=0)
    reap_interval: float | None = Field(None, gt=0)
    until_empty: bool = True
    max_seconds: float | None = Field(None, gt=0)
    workdir: Path | None = None
    summary_json: Path | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    try:
        env = EmulatorSettings()
    except ValidationError as err:
        raise SystemExit(f"scaler: invalid SCALER_* setting: {err}") from None
    parser = argparse.ArgumentParser(
        prog="python -m workbench.emulator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--manifests",
        type=Path,
        default=env.manifests,
        help="folder with kustomization.yaml (env SCALER_MANIFESTS, default keda)",
    )
    parser.add_argument(
        "--polling-interval",
        type=float,
        default=env.polling_interval,
        help="seconds between polls (env SCALER_POLLING_INTERVAL, default: the manifest's)",
    )
    parser.add_argument(
        "--max-replicas", type=int, default=env.max_replicas, help="override maxReplicaCount (env SCALER_MAX_REPLICAS)"
    )
    parser.add_argument(
        "--reap-interval",
        type=float,
        default=env.reap_interval,
        help="seconds between reaper runs (env SCALER_REAP_INTERVAL, default: the CronJob's)",
    )
    parser.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        help="KEY=VALUE for every pod, over the manifest and this environment (repeatable)",
    )
    parser.add_argument(
        "--until-empty",
        action=argparse.BooleanOptionalAction,
        default=env.until_empty,
        help="exit once queue, processing list and Jobs are empty (env SCALER_UNTIL_EMPTY, default on)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=env.max_seconds,
        help="stop (SIGTERM the pods) after this long (env SCALER_MAX_SECONDS)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=env.workdir,
        help="where pod folders and logs go (env SCALER_WORKDIR, default: a new temp folder)",
    )
    parser.add_argument(
        "--summary-json",
        type=Path,
        default=env.summary_json,
        help="also write the summary as JSON here (env SCALER_SUMMARY_JSON)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stemworker-scaler-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        scaler = Scaler(
            load_manifests(args.manifests),
            workdir,
            dict(args.env),
            args.polling_interval,
            args.max_replicas,
            args.reap_interval,
        )
    except (ConfigError, OSError, KeyError, ValueError) as err:
        print(f"scaler: cannot start: {type(err).__name__}: {err}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        scaler.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"scaler: pods under {workdir}", flush=True)
    result = scaler.run(args.until_empty, args.max_seconds)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(result, indent=2))
    return 0 if result["drained"] or scaler.stopping else 1


if __name__ == "__main__":
    raise SystemExit(main())
