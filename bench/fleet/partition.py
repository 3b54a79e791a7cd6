"""A zombie runner: cut off mid-job for longer than its lease, its message is reaped and finished by another runner,
then it comes back.

`--method netns` (root): the zombie runs in its own network namespace joined to this one by a veth pair; Redis,
S3 and the webhook receiver listen on the host end's private address (10.231.77.1, created here and removed
after). The cut is `ip link set <host end> down`: packets are dropped, so the zombie's calls hang (a partition,
not a refused connection) until the link comes back. `--method sigstop` pauses the zombie instead (a GC pause
or a frozen VM), for hosts without network namespaces.

What must hold: nothing lost; the zombie's writes after the cut are refused (its lease was reaped), so it neither
acknowledges the other runner's claim nor moves the status back from `done`; the status reaches `done` once; the
callback arrives at least once, always with the same `webhook-id`.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from bench.fleet.common import (
    QUEUE,
    Report,
    Runner,
    RunnerPool,
    check_end_state,
    done_counts,
    model_repo,
    runner_env,
    say,
    seed_inputs,
)
from function.keys import leases_key
from workbench.local_services import LocalServices

NAMESPACE = "swfleet"
HOST_END, NS_END = "swf0", "swf1"
HOST_IP, NS_IP = "10.231.77.1", "10.231.77.2"
JOB = "zjob"
SONG_SECONDS = 40.0
ZOMBIE_LINES = re.compile(
    r"claimed job|lease|outcome|fenced|not writing|not acknowledging|failed|error|done in", re.IGNORECASE
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def network_namespace() -> Iterator[None]:
    """A namespace with one veth pair to this one; removed afterwards (with both ends of the pair)."""
    subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)  # left over from an interrupted run
    subprocess.run(["ip", "link", "del", HOST_END], capture_output=True)
    ip("netns", "add", NAMESPACE)
    try:
        ip("link", "add", HOST_END, "type", "veth", "peer", "name", NS_END)
        ip("link", "set", NS_END, "netns", NAMESPACE)
        ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_END)
        ip("link", "set", HOST_END, "up")
        ip("netns", "exec", NAMESPACE, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_END)
        ip("netns", "exec", NAMESPACE, "ip", "link", "set", NS_END, "up")
        ip("netns", "exec", NAMESPACE, "ip", "link", "set", "lo", "up")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)
        subprocess.run(["ip", "link", "del", HOST_END], capture_output=True)


class Receiver:
    """The webhook receiver: records each request's `webhook-id` and body."""

    def __init__(self, host: str) -> None:
        self.requests: list[dict] = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(
                    {
                        "webhook-id": self.headers.get("webhook-id"),
                        "body": body.decode(errors="replace"),
                        "at": time.time(),
                    }
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.host = host
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def record(client: redis.Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(f"status:{JOB}").items()}


def cut_off(zombie: Runner, method: str, cut: bool) -> None:
    """Cut the zombie runner off (`cut`) or let it back: its veth link down/up (netns), or SIGSTOP/SIGCONT."""
    if method == "netns":
        ip("link", "set", HOST_END, "down" if cut else "up")
    else:
        zombie.process.send_signal(signal.SIGSTOP if cut else signal.SIGCONT)


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def run(method: str, lease_s: int, out: Path | None) -> int:
    report = Report(f"partition-{method}")
    workdir = out or Path(tempfile.mkdtemp(prefix="fleet-partition-"))
    if method == "netns" and os.geteuid() != 0:
        print("network namespaces need root; use --method sigstop")
        return 2
    with network_namespace() if method == "netns" else _nothing():
        host = HOST_IP if method == "netns" else "127.0.0.1"
        services = LocalServices(host=host).start()
        receiver = Receiver(host)
        pools: list[RunnerPool] = []
        try:
            code = scenario(report, method, lease_s, services, receiver, workdir, pools)
        finally:
            for pool in pools:
                pool.stop()
            receiver.close()
            services.stop()
    return code


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def scenario(
    report: Report,
    method: str,
    lease_s: int,
    services: LocalServices,
    receiver: Receiver,
    workdir: Path,
    pools: list[RunnerPool],
) -> int:
    client = redis.Redis.from_url(services.env()["REDIS_URL"], socket_timeout=5)
    repo = model_repo()
    seed_inputs(services, [JOB], SONG_SECONDS)
    client.rpush(QUEUE, json.dumps({"id": JOB, "callback": receiver.url}))
    # The receiver is on this host (loopback for sigstop), which the SSRF guard refuses unless allowed by name.
    common = {
        "LEASE_S": str(lease_s),
        "ORPHAN_GRACE_S": "1",
        "MAX_MESSAGES": "1",
        "CLAIM_WAIT_S": "5",
        "MAX_ATTEMPTS": "3",
        "CALLBACK_ALLOW_HOSTS": receiver.host,
    }
    # The zombie's calls must wait out the cut (as a partitioned pod's do) rather than give up within it.
    zombies = RunnerPool(
        runner_env(services, repo, REDIS_TIMEOUT_S="120", S3_TIMEOUT_S="120", **common), workdir / "zombie"
    )
    rescuers = RunnerPool(runner_env(services, repo, REDIS_TIMEOUT_S="5", **common), workdir / "rescuer")
    pools += [zombies, rescuers]
    zombie = zombies.start(prefix=["ip", "netns", "exec", NAMESPACE] if method == "netns" else None)
    say(f"zombie runner started ({method}); waiting for it to be mid-separation")
    wait(
        lambda: record(client).get("state") == "separating" and int(record(client).get("progress", 0)) >= 5,
        300,
        "the zombie to be separating",
    )
    ((token, deadline),) = client.zrange(leases_key(QUEUE), 0, -1, withscores=True)
    cut_at = time.monotonic()
    cut_off(zombie, method, True)
    say(
        f"cut at progress {record(client).get('progress')}%; lease {token.decode()[:8]} expires at Redis time "
        f"{deadline:.1f}"
    )
    wait(lambda: redis_now(client) > client.zscore(leases_key(QUEUE), token), lease_s + 30, "the lease to expire")
    rescuer = rescuers.start()
    say("lease expired; rescuer started (it reaps, claims and runs the message)")
    code = rescuer.process.wait(timeout=600)
    done_record = record(client)
    say(f"rescuer exited {code}; status {done_record.get('state')}; callbacks so far {len(receiver.requests)}")
    restored_at = time.monotonic()
    cut_off(zombie, method, False)
    say(
        f"{'link restored' if method == 'netns' else 'SIGCONT sent'} after {restored_at - cut_at:.1f} s; "
        "waiting for the zombie"
    )
    try:
        zombie_code = zombie.process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        zombie_code = None
    time.sleep(1)  # its last log line reaches Redis
    final = record(client)
    zombie_log = zombie.log.read_text(errors="replace")
    did = [line.split(" ", 3)[-1] for line in zombie_log.splitlines() if ZOMBIE_LINES.search(line)]
    print("what the zombie did:")
    for line in did[-14:]:
        print(f"    {line[:200]}")

    report.check(
        "the cut lasted longer than LEASE_S",
        restored_at - cut_at > lease_s,
        f"{restored_at - cut_at:.1f} s > {lease_s} s",
    )
    report.check(
        "the rescuer finished the message",
        code == 0 and done_record.get("state") == "done",
        f"exit {code}, state {done_record.get('state')}",
    )
    report.check(
        "the zombie noticed it lost its lease and let the message go",
        zombie_code == 0 and "outcome lease-lost job=zjob" in zombie_log,
        f"exit {zombie_code}, outcome line {'present' if 'outcome lease-lost' in zombie_log else 'missing'}",
    )
    report.check(
        "the zombie did not move the status back from done",
        final.get("state") == "done" and final.get("done_at") == done_record.get("done_at") and final == done_record,
        f"state {final.get('state')}, done_at unchanged {final.get('done_at') == done_record.get('done_at')}",
    )
    report.check("the status reached done exactly once", done_counts(client)[JOB] == 1, done_counts(client)[JOB])
    ids = {request["webhook-id"] for request in receiver.requests}
    report.check(
        "the callback arrived at least once, with one webhook-id",
        receiver.requests and len(ids) == 1,
        f"{len(receiver.requests)} request(s), webhook-id {sorted(ids)}",
    )
    figures = check_end_state(report, client, services, [JOB], allow_dead=False)
    report.figures.update(
        figures,
        method=method,
        lease_s=lease_s,
        cut_s=round(restored_at - cut_at, 1),
        zombie_exit=zombie_code,
        zombie_did=did[-14:],
        callbacks=len(receiver.requests),
        attempts=final.get("attempts"),
    )
    report.write(workdir)
    return 0 if report.ok else 1
