"""Smoke-test a built stemworker image: one job in through Redis, four stems out in S3, a webhook back.

Starts a real Redis and S3 (SeaweedFS) on loopback with `workbench.local_services`, uploads a generated
3 s song, pushes one job message on `toWorker`, runs the image's job runner once, then checks the exit
code, the job's status hash, the stems in the output bucket, the `logging` lines and the webhook.

    .venv/bin/python scripts/smoke_image.py IMAGE [--runner auto|docker|podman|buildah|chroot]

Runners (all share the host network, so the container reaches the loopback servers):
- docker / podman: `run --read-only --tmpfs /tmp` with the image's own entrypoint, user and env;
- buildah: `buildah run` in a working container (the image's user and env; writable root);
- chroot: the image's rootfs mounted read-only with a tmpfs at /tmp only (what Kubernetes does with
  readOnlyRootFilesystem and an emptyDir), run as the image's user with the image's env. Needs root.
`auto` picks docker or podman when present, else buildah and chroot both. Then, unless --no-http, the
alternative command (`--entrypoint functions-framework`) serves one CloudEvent POST with the same image.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import redis
import requests
from minio import Minio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import sample_song
from workbench.local_services import LocalServices, free_port

JOB_TIMEOUT_S = 600
STEMS = ("bass", "drums", "other", "vocals")


class Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Hook.received.append({"path": self.path, "body": body.decode("utf-8", "replace")})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def image_config(image: str) -> dict:
    """The image's OCI config (Env, User, Entrypoint), read with buildah."""
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)["OCIv1"]["config"]


@contextlib.contextmanager
def container_command(
    runner: str, image: str, env: dict[str, str], argv: list[str], entrypoint: list[str] | None = None
) -> Iterator[list[str]]:
    """The host command that runs `argv` in the image with `runner` (the image's entrypoint unless given)."""
    if runner in ("docker", "podman"):
        cmd = [runner, "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,size=2g"]
        cmd += [f"--env={key}={value}" for key, value in env.items()]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint[0]]
            argv = [*entrypoint[1:], *argv]
        yield [*cmd, image, *argv]
        return
    config = image_config(image)
    command = [*(entrypoint or config.get("Entrypoint") or []), *argv]
    container = subprocess.run(
        ["buildah", "from", "--pull-never", image], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        if runner == "buildah":
            yield [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                *[f"--env={key}={value}" for key, value in env.items()],
                container,
                "--",
                *command,
            ]
            return
        # chroot: the image's rootfs read-only with a tmpfs at /tmp only, as the image's user, with its env.
        root = shlex.quote(
            subprocess.run(["buildah", "mount", container], check=True, capture_output=True, text=True).stdout.strip()
        )
        full_env = {**dict(item.split("=", 1) for item in config.get("Env") or []), **env}
        workdir = shlex.quote(config.get("WorkingDir") or "/")
        setup = " && ".join(
            [
                f"mount --bind {root} {root}",
                f"mount -o remount,bind,ro {root}",
                f"mount -t tmpfs -o size=2g,mode=1777 tmpfs {root}/tmp",
                f"mount -t proc proc {root}/proc",
                f"mount --rbind /dev {root}/dev",
                f"mount --rbind /sys {root}/sys",
                # Prove the root really is read-only before running anything in it.
                f"! touch {root}/usr/.rw-probe 2>/dev/null",
                f"exec chroot --userspec={shlex.quote(config.get('User') or '0:0')} {root} /usr/bin/env -i "
                + " ".join(shlex.quote(f"{key}={value}") for key, value in full_env.items())
                + " /bin/sh -c "
                + shlex.quote(f"cd {workdir} && exec {shlex.join(command)}"),
            ]
        )
        yield ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", setup]
    finally:
        if runner == "chroot":
            subprocess.run(["buildah", "umount", container], capture_output=True)
        subprocess.run(["buildah", "rm", container], capture_output=True)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    shown = shlex.join(cmd)
    print(f"$ {shown[:300]}{' ...' if len(shown) > 300 else ''}", flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    print(f"  exit {result.returncode} after {time.monotonic() - started:.1f} s", flush=True)
    for line in (result.stdout + result.stderr).strip().splitlines()[-25:]:
        print(f"  | {line}", flush=True)
    return result


def run_in_image(runner: str, image: str, env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess:
    with container_command(runner, image, env, argv) as cmd:
        return run(cmd)


def one_job(runner: str, image: str, services: LocalServices, hook_url: str) -> list[str]:
    """Run one job through the image with `runner`; returns the problems found (empty when all is well)."""
    problems: list[str] = []
    job_id = f"smoke-{runner}-{uuid.uuid4().hex[:8]}"
    env = {**services.env(), "CALLBACK_ALLOW_HOSTS": "127.0.0.1", "DEMUCS_DEVICE": "cpu", "MAX_MESSAGES": "1"}
    s3 = Minio(
        env["MINIO_ENDPOINT"], access_key=env["MINIO_ACCESS_KEY"], secret_key=env["MINIO_SECRET_KEY"], secure=False
    )
    rds = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    for bucket in ("queue", "output"):
        if not s3.bucket_exists(bucket):
            s3.make_bucket(bucket)
    song = sample_song.song_mp3(seconds=3.0)
    s3.put_object("queue", f"{job_id}.mp3", io.BytesIO(song), len(song), content_type="audio/mpeg")
    Hook.received.clear()
    print(f"\n== runner {runner}: job {job_id} ({len(song)} byte mp3)", flush=True)

    probe = run_in_image(runner, image, env, ["--check"])
    if probe.returncode != 0:
        problems.append(f"--check exited {probe.returncode}")

    rds.rpush("toWorker", json.dumps({"songhash": job_id, "callback": hook_url}))
    result = run_in_image(runner, image, env, [])
    if result.returncode != 0:
        problems.append(f"job runner exited {result.returncode}")
    status = rds.hgetall(f"status:{job_id}")
    print(f"  status:{job_id} = {status}")
    if status.get("state") != "done":
        problems.append(f"status state is {status.get('state')!r}, expected 'done'")
    problems += check_stems(s3, job_id)
    lines = [line for line in rds.lrange("logging", 0, -1) if job_id in line]
    print(f"  logging: {len(lines)} lines for the job, newest: {lines[:1]}")
    if not any("done" in line for line in lines):
        problems.append("no 'done' line in the logging list")
    if rds.llen("toWorker") != 0:
        problems.append(f"toWorker still holds {rds.llen('toWorker')} messages")
    deadline = time.monotonic() + 10
    while not Hook.received and time.monotonic() < deadline:
        time.sleep(0.1)
    if not Hook.received:
        problems.append("no webhook received")
    else:
        body = json.loads(Hook.received[0]["body"])
        print(f"  webhook: state={body.get('state')} stems={sorted(body.get('stems', {}))}")
        if body.get("state") != "done":
            problems.append(f"webhook state {body.get('state')!r}")
    return problems


def http_job(runner: str, image: str, services: LocalServices) -> list[str]:
    """The alternative command: functions-framework in the image, one CloudEvent POSTed, four stems out."""
    problems: list[str] = []
    job_id = f"smoke-http-{runner}-{uuid.uuid4().hex[:8]}"
    env = {**services.env(), "DEMUCS_DEVICE": "cpu"}
    s3 = Minio(
        env["MINIO_ENDPOINT"], access_key=env["MINIO_ACCESS_KEY"], secret_key=env["MINIO_SECRET_KEY"], secure=False
    )
    song = sample_song.song_mp3(seconds=3.0)
    s3.put_object("queue", f"{job_id}.mp3", io.BytesIO(song), len(song), content_type="audio/mpeg")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"\n== runner {runner}: functions-framework on {base}, job {job_id}", flush=True)
    argv = ["--host", "127.0.0.1", "--port", str(port)]
    with container_command(runner, image, env, argv, entrypoint=["functions-framework"]) as cmd:
        print(f"$ {shlex.join(cmd)[:300]} ...", flush=True)
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            ready = False
            while time.monotonic() < deadline and server.poll() is None and not ready:
                try:
                    ready = requests.get(f"{base}/health/readiness", timeout=2).status_code == 200
                except requests.RequestException:
                    time.sleep(0.5)
            if not ready:
                return [f"functions-framework did not answer on {base} (exit {server.poll()})"]
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "urn:stemworker:smoke",
                "type": "io.stemworker.separation.requested",
                "datacontenttype": "application/json",
                "data": {"songhash": job_id},
            }
            started = time.monotonic()
            answer = requests.post(
                base,
                data=json.dumps(event),
                timeout=JOB_TIMEOUT_S,
                headers={"Content-Type": "application/cloudevents+json"},
            )
            print(
                f"  POST / -> {answer.status_code} ce-type={answer.headers.get('ce-type')} "
                f"after {time.monotonic() - started:.1f} s"
            )
            if answer.status_code != 200:
                problems.append(f"POST answered {answer.status_code}: {answer.text[:200]}")
        finally:
            output = stop(server)
            for line in output.strip().splitlines()[-8:]:
                print(f"  | {line}")
    problems += check_stems(s3, job_id)
    return problems


def stop(process: subprocess.Popen) -> str:
    """Stop a server started through a runner and return its output. The chroot runner's server is the init of
    its own pid namespace, and it changed user, so it does not die with `unshare`: signal it directly."""
    children = [
        int(pid)
        for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    ]
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_number)
        process.send_signal(signal_number)
        try:
            return process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            continue
    return process.communicate(timeout=30)[0]


def check_stems(s3: Minio, job_id: str) -> list[str]:
    problems = []
    for stem in STEMS:
        key = f"{job_id}-{stem}.mp3"
        try:
            size = s3.stat_object("output", key).size or 0
        except Exception as err:
            problems.append(f"stem output/{key} missing: {err}")
            continue
        print(f"  output/{key}: {size} bytes")
        if size <= 0:
            problems.append(f"stem output/{key} is empty")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", default=os.environ.get("IMAGE_TAG", "stemworker:latest"))
    parser.add_argument(
        "--runner",
        default=os.environ.get("SMOKE_RUNNER", "auto"),
        choices=["auto", "docker", "podman", "buildah", "chroot"],
    )
    parser.add_argument("--no-http", action="store_true", help="skip the functions-framework check")
    args = parser.parse_args(argv)
    if args.runner == "auto":
        tool = next(
            (
                t
                for t in ("docker", "podman")
                if shutil.which(t) and subprocess.run([t, "info"], capture_output=True).returncode == 0
            ),
            None,
        )
        runners = [tool] if tool else ["buildah", "chroot"]
    else:
        runners = [args.runner]

    if shutil.which("buildah"):
        config = image_config(args.image)
        print(f"image user {config.get('User')!r}, entrypoint {config.get('Entrypoint')}")
        if (config.get("User") or "root").split(":")[0] in ("", "0", "root"):
            print("smoke: FAIL: the image runs as root")
            return 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    failures: dict[str, list[str]] = {}
    with LocalServices() as services:
        print(f"services: {services.env()['REDIS_URL']}, S3 {services.env()['MINIO_ENDPOINT']}; webhook {hook_url}")
        for runner in runners:
            failures[runner] = one_job(runner, args.image, services, hook_url)
        # The HTTP alternative needs a server that stops when told: chroot, docker or podman.
        http_runner = next((runner for runner in runners if runner != "buildah"), None)
        if http_runner and not args.no_http:
            failures[f"{http_runner} (functions-framework)"] = http_job(http_runner, args.image, services)
    server.shutdown()
    print()
    for runner, problems in failures.items():
        print(f"smoke {runner}: {'PASS' if not problems else 'FAIL: ' + '; '.join(problems)}")
    return 0 if not any(failures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
