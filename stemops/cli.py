"""`stemworker`: one command for operators of a stemworker fleet.

    stemworker stats [--watch]                 the queue at a glance
    stemworker jobs [--state S] [--limit N]    running jobs (pod, age), waiting messages, recent jobs
    stemworker workers                         live runners by pod, with the job each holds
    stemworker watch ID                        one job's progress to its end (exit 0 done, 1 failed)
    stemworker dead list|show N|requeue N|--all|purge [--older-than 7d] [--yes]
    stemworker flood --count N [--wait]        a load test: N jobs the way the REST tier sends them
    stemworker exporter [--port 9090]          serve Prometheus /metrics from Redis
    stemworker doctor [--watch [--timeout S]]  check the setup; read a REST tier's settings off one submission

It reads the worker's settings from the environment (REDIS_URL or REDIS_HOST/REDIS_PORT, QUEUE_KEY, ...; see
function/config.py) and talks to Redis only (and S3 for `flood`). Every option can also be set from
STEMWORKER_<COMMAND>_<OPTION> (e.g. STEMWORKER_JOBS_LIMIT=50). Every command but `exporter` takes --json for scripts.
Exit codes: 0 success; 1 failure (Redis or S3 unreachable, a watched job failed, purge not confirmed);
2 usage or configuration error, or no such job / dead letter; 3 `watch` deadline passed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import redis
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from function.clients import redis_client
from function.config import FORMATS, STEMS, Settings, load_settings
from function.errors import ConfigError, InvalidJob, StemworkerError
from function.logs import configure_logging
from function.messages import event_from_message, require_job_id
from function.status import State
from stemops import deadletters, flood, render
from stemops import doctor as doctor_checks
from stemops.exporter import scrape_client, serve
from stemops.leases import running_now
from stemops.recent import FINAL, GONE, outputs_of, recent_jobs, status_of, typed_status
from stemops.stats import gather
from stemops.tierwatch import NothingSeen, WatchUnavailable
from stemops.waiting import waiting_messages
from stemops.workers import live_workers

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
PIPE_WIDTH = 160


class OpsError(Exception):
    """A failure to report as one line and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ops:
    """Settings and clients, built on first use so that `--help` needs neither."""

    _settings: Settings | None = None
    _client: redis.Redis | None = None
    console: Console = field(default_factory=lambda: terminal_console())

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as err:
                raise OpsError(str(err), EXIT_USAGE) from None
        return self._settings

    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis_client(self.settings)
        return self._client


def terminal_console() -> Console:
    """The terminal's width on a terminal; a wide line (no wrapped table) when the output goes to a pipe or a file."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def redacted(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Operate a stemworker fleet: queue stats, recent jobs, one job's progress, dead letters, load tests and
    the Prometheus exporter. Settings come from the worker's environment variables."""
    ctx.obj = Ops()


# ------------------------------------------------------------------------------------------------ stats
@cli.command()
@click.option("--watch", is_flag=True, help="refresh in place every --interval seconds until Ctrl-C")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="seconds")
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="with --watch: stop after this many refreshes (0: until Ctrl-C)",
)
@json_option
@click.pass_obj
def stats(ops: Ops, watch: bool, interval: float, count: int, as_json: bool) -> int:
    """Queue length, processing, dead letters, running jobs, the oldest waiting message's age, and the
    done/failed counts and median job time of the last hour."""
    if not watch:
        snapshot = gather(ops.redis, ops.settings)
        if as_json:
            emit_json(snapshot.as_dict())
        else:
            ops.console.print(render.stats_view(snapshot))
        return 0
    refreshes = 0
    if as_json:  # one JSON object per line, per refresh
        while True:
            emit_json(gather(ops.redis, ops.settings).as_dict())
            refreshes += 1
            if count and refreshes >= count:
                return 0
            time.sleep(interval)
    if not ops.console.is_terminal:  # a pipe, a file, `kubectl exec` without -t: one snapshot after another
        while True:
            ops.console.print(render.stats_view(gather(ops.redis, ops.settings)))
            ops.console.print()
            refreshes += 1
            if count and refreshes >= count:
                return 0
            time.sleep(interval)
    with Live(render.stats_view(gather(ops.redis, ops.settings)), console=ops.console, auto_refresh=False) as live:
        refreshes = 1
        while not count or refreshes < count:
            time.sleep(interval)
            live.update(render.stats_view(gather(ops.redis, ops.settings)), refresh=True)
            refreshes += 1
    return 0


# ------------------------------------------------------------------------------------------------ jobs
@cli.command()
@click.option("--state", type=click.Choice([s.value for s in State] + [GONE]), help="only jobs in this state")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="at most this many")
@json_option
@click.pass_obj
def jobs(ops: Ops, state: str | None, limit: int, as_json: bool) -> int:
    """Running jobs (the pod running each and for how long), the messages waiting to be claimed (next first), and
    recent jobs, newest first (by their latest start or end): state, progress, model, audio seconds, time taken
    and error. --state filters the recent jobs and leaves out the other two. Read from the leases, the queue's
    claim end and the bounded recent-jobs index, never a keyspace scan. --json prints one object:
    {"queue", "running": [...], "waiting_total", "waiting": [...], "jobs": [...]}."""
    settings = ops.settings
    rows = recent_jobs(ops.redis, settings, state, limit)
    running = running_now(ops.redis, settings)[:limit] if state is None else []
    waiting = waiting_messages(ops.redis, settings, limit) if state is None else []
    waiting_total = int(ops.redis.llen(settings.queue_key)) if state is None else 0
    if as_json:
        emit_json(
            {
                "queue": settings.queue_key,
                "running": [job.as_dict() for job in running],
                "waiting_total": waiting_total,
                "waiting": [message.as_dict() for message in waiting],
                "jobs": [row.as_dict() for row in rows],
            }
        )
        return 0
    if running:
        ops.console.print(render.running_view(running))
    if waiting:
        ops.console.print(render.waiting_view(waiting, waiting_total))
    ops.console.print(render.jobs_view(rows, ops.console.width))
    return 0


# ------------------------------------------------------------------------------------------------ workers
@cli.command()
@json_option
@click.pass_obj
def workers(ops: Ops, as_json: bool) -> int:
    """Live runners by pod (POD_NAME, else the host name), with the job each holds, its state, how long it has run
    and how long its lease has left. A runner still waiting for a message holds nothing and is not listed."""
    rows = live_workers(ops.redis, ops.settings)
    if as_json:
        emit_json({"queue": ops.settings.queue_key, "workers": [row.as_dict() for row in rows]})
    else:
        ops.console.print(render.workers_view(rows))
    return 0


# ------------------------------------------------------------------------------------------------ watch
@cli.command()
@click.argument("job_id")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="seconds")
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="give up (exit 3) after this many seconds",
)
@json_option
@click.pass_obj
def watch(ops: Ops, job_id: str, interval: float, timeout_s: float, as_json: bool) -> int:
    """Follow one job: a live progress bar with its state, ending with where its stems went or its error.
    Exit 0 when done, 1 when failed, 3 when --timeout-s passes first."""
    try:
        job_id = require_job_id(job_id)
    except InvalidJob as err:
        raise OpsError(str(err), EXIT_USAGE) from None
    first = status_of(ops.redis, ops.settings, job_id)
    if not first:
        raise OpsError(
            f"no status for job {job_id!r} (never queued, expired after STATUS_TTL_S, or a typo)", EXIT_USAGE
        )
    deadline = time.monotonic() + timeout_s
    status = first
    if as_json:
        last: tuple[str, str] | None = None
        while True:
            now = (status.get("state", ""), status.get("progress", ""))
            if now != last:
                emit_json({"id": job_id, **typed_status(status)})
                last = now
            if now[0] in FINAL or time.monotonic() > deadline:
                break
            time.sleep(interval)
            status = status_of(ops.redis, ops.settings, job_id)
    elif not ops.console.is_terminal:  # a pipe, a file, `kubectl exec` without -t: a line per change
        seen: tuple[str, str] | None = None
        while True:
            now = (status.get("state", GONE), status.get("progress", ""))
            if now != seen:
                click.echo(f"job {job_id}: {now[0]}" + (f" {now[1]}%" if now[1] and now[0] not in FINAL else ""))
                seen = now
            if now[0] in FINAL or time.monotonic() > deadline:
                break
            time.sleep(interval)
            status = status_of(ops.redis, ops.settings, job_id)
        finished(ops, job_id, status)
    else:
        columns = (
            TextColumn("[bold]{task.fields[job]}"),
            TextColumn("{task.fields[state]:<11}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=ops.console) as progress:
            task = progress.add_task("job", total=100, job=job_id, state="")
            while True:
                state = status.get("state", GONE)
                shown = 100.0 if state == State.DONE.value else float(status.get("progress", 0) or 0)
                progress.update(task, completed=shown, state=state)
                if state in FINAL or time.monotonic() > deadline:
                    break
                time.sleep(interval)
                status = status_of(ops.redis, ops.settings, job_id)
        finished(ops, job_id, status)
    state = status.get("state", GONE)
    if state == State.DONE.value:
        return 0
    if state == State.FAILED.value:
        return EXIT_FAILED
    click.echo(f"stemworker: job {job_id} still {state} after {timeout_s:g} s", err=True)
    return EXIT_TIMEOUT


def finished(ops: Ops, job_id: str, status: dict[str, str]) -> None:
    """Where a done job's stems went, or a failed job's error."""
    state = status.get("state", GONE)
    if state == State.DONE.value:
        ops.console.print(f"job {job_id} done in {render.seconds(float(status.get('seconds', 0)))}")
        ops.console.print(render.outputs_view(outputs_of(status)))
    elif state == State.FAILED.value:
        ops.console.print(f"[red]job {job_id} failed:[/red] {escape(status.get('error', ''))}")


# ------------------------------------------------------------------------------------------------ dead
@cli.group()
def dead() -> None:
    """Dead letters (`<queue>:dead`): list, show, requeue, purge. N is the index `dead list` shows, 0 the oldest."""


@dead.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="the newest this many")
@json_option
@click.pass_obj
def dead_list(ops: Ops, limit: int, as_json: bool) -> int:
    """The newest dead letters, oldest first, with their indexes."""
    total, letters = deadletters.list_dead(ops.redis, ops.settings, limit)
    if as_json:
        emit_json({"total": total, "entries": [{"index": x.index, **x.entry} for x in letters]})
    else:
        ops.console.print(render.dead_view(total, letters, ops.console.width))
    return 0


@dead.command("show")
@click.argument("index", type=click.IntRange(min=0))
@json_option
@click.pass_obj
def dead_show(ops: Ops, index: int, as_json: bool) -> int:
    """One dead letter in full."""
    letter = deadletters.show_dead(ops.redis, ops.settings, index)
    if as_json:
        emit_json({"index": letter.index, **letter.entry})
    else:
        ops.console.print_json(json.dumps({"index": letter.index, **letter.entry}, default=str))
    return 0


@dead.command("requeue")
@click.argument("index", type=click.IntRange(min=0), required=False)
@click.option("--all", "every", is_flag=True, help="requeue every dead letter")
@json_option
@click.pass_obj
def dead_requeue(ops: Ops, index: int | None, every: bool, as_json: bool) -> int:
    """Put dead letter N (or --all) back at the head of the queue with its attempt count reset."""
    if (index is None) == (not every):
        raise click.UsageError("give one index N or --all")
    moved = deadletters.requeue(ops.redis, ops.settings, None if every else index)
    if as_json:
        emit_json({"requeued": [{"index": x.index, "job_id": x.entry.get("job_id")} for x in moved]})
    else:
        for letter in moved:
            ops.console.print(
                f"requeued #{letter.index} job {letter.entry.get('job_id') or '(no id)'} "
                f"at the head of {ops.settings.queue_key}"
            )
        ops.console.print(f"{len(moved)} dead letter(s) requeued")
    return 0


@dead.command("purge")
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    help="only letters that failed longer ago than this: 90s, 30m, 12h, 7d, 2w",
)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@json_option
@click.pass_obj
def dead_purge(ops: Ops, older_than: str | None, yes: bool, as_json: bool) -> int:
    """Delete dead letters (all, or those older than --older-than); asks first unless --yes."""
    try:
        older_than_s = deadletters.parse_duration_s(older_than) if older_than is not None else None
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--older-than") from None
    total, _ = deadletters.list_dead(ops.redis, ops.settings, 1)
    which = "every dead letter" if older_than is None else f"dead letters older than {older_than}"
    if not yes and not click.confirm(f"Delete {which} from {ops.settings.queue_key}:dead ({total} in all)?", err=True):
        raise OpsError("purge not confirmed; nothing deleted")
    removed = deadletters.purge(ops.redis, ops.settings, older_than_s)
    if as_json:
        emit_json({"purged": removed})
    else:
        ops.console.print(f"purged {removed} dead letter(s)")
    return 0


# ------------------------------------------------------------------------------------------------ flood
@cli.command("flood")
@click.option("--count", type=click.IntRange(min=1), default=10, show_default=True, help="distinct jobs to push")
@click.option(
    "--song",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="MP3 to upload (default: a generated clip; needs the workbench, which the image lacks)",
)
@click.option(
    "--seconds", type=click.FloatRange(min=0.5), default=3.0, show_default=True, help="length of the generated clip"
)
@click.option("--id", "base_id", help="job id base: ids are BASE-0 .. BASE-<count-1> (default: flood-<random>)")
@click.option("--form", type=click.Choice(flood.FORMS), default="json", show_default=True, help="message form")
@click.option("--model", help="model name")
@click.option("--stems", help=f"comma list from {','.join(STEMS)}")
@click.option("--two-stems", type=click.Choice(STEMS), help="one stem and the rest mixed")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="stem format")
@click.option("--callback", help="webhook URL")
@click.option(
    "--distinct",
    is_flag=True,
    help="upload a different (inaudibly dithered) copy per job, so the result cache serves none of them",
)
@click.option("--wait", is_flag=True, help="follow the jobs until each is done or failed")
@click.option("--timeout-s", type=click.FloatRange(min=0), default=900.0, show_default=True, help="--wait deadline")
@json_option
@click.pass_obj
def flood_command(
    ops: Ops,
    count: int,
    song: Path | None,
    seconds: float,
    base_id: str | None,
    form: str,
    model: str | None,
    stems: str | None,
    two_stems: str | None,
    fmt: str | None,
    callback: str | None,
    distinct: bool,
    wait: bool,
    timeout_s: float,
    as_json: bool,
) -> int:
    """Load test: upload one song, copy it server-side to COUNT job ids, mark them queued and push their
    messages (as scripts/send-request.py --count does); --wait follows them to the end."""
    options = flood.JobOptions(
        form=form,
        model=model,
        callback=callback,
        two_stems=two_stems,
        format=fmt,
        stems=tuple(s.strip() for s in stems.split(",") if s.strip()) if stems else None,
    )
    if form == "bare" and options.extras():
        raise click.UsageError(f"a bare id message carries only the id; drop {options.extras()} or use --form json")
    settings = ops.settings
    try:
        ids = [require_job_id(job_id) for job_id in flood.job_ids(base_id or f"flood-{uuid.uuid4().hex[:8]}", count)]
        messages = [flood.message_for(job_id, options) for job_id in ids]
        for message in messages:  # refuse here what the worker would dead-letter for its form
            event_from_message(message, settings.max_message_bytes)
    except InvalidJob as err:
        raise OpsError(str(err), EXIT_USAGE) from None
    data = song.read_bytes() if song is not None else generated_song(seconds)
    flood.upload(settings, data, ids, distinct=distinct)
    flood.push(ops.redis, settings, ids, messages)
    summary: dict[str, Any] = {"queue": settings.queue_key, "pushed": len(ids), "ids": ids, "song_bytes": len(data)}
    if not as_json:
        click.echo(
            f"pushed {len(ids)} {form} message(s) onto {settings.queue_key}: {ids[0]}"
            + (f" .. {ids[-1]}" if len(ids) > 1 else ""),
            err=True,
        )
    if not wait:
        if as_json:
            emit_json(summary)
        return 0
    result = flood.follow(ops.redis, settings, ids, timeout_s, out=sys.stderr)
    if as_json:
        emit_json(
            {
                **summary,
                "done": result.done,
                "failed": result.failed,
                "unfinished": result.unfinished,
                "seconds": round(result.seconds, 3),
            }
        )
    return 0 if result.done == len(ids) else EXIT_FAILED


def generated_song(seconds: float) -> bytes:
    """A generated clip from the workbench (a development install); the image ships without it."""
    try:
        from workbench import sample_song
    except ImportError:
        raise OpsError(
            "no --song given, and the song generator (workbench/, not in the image) is not installed: pass --song FILE",
            EXIT_USAGE,
        ) from None
    return sample_song.song_mp3(seconds=seconds)


# ------------------------------------------------------------------------------------------------ exporter
@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), help="listen port (default: EXPORTER_PORT, 9090)")
@click.option("--address", default="0.0.0.0", show_default=True, help="listen address")
@click.pass_obj
def exporter(ops: Ops, port: int | None, address: str) -> int:
    """Serve Prometheus /metrics read from Redis on each scrape, until SIGTERM or Ctrl-C. Prints one line,
    `serving /metrics on ADDRESS:PORT for queue QUEUE`, once it listens. Each scrape reads Redis for at most
    EXPORTER_SCRAPE_BUDGET_S seconds (a Redis that does not answer gives stemworker_redis_up 0)."""
    settings = ops.settings
    configure_logging(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = serve(scrape_client(settings), settings, settings.exporter_port if port is None else port, address)
    except OSError as err:
        raise OpsError(f"cannot listen on {address}:{port}: {err.strerror or err}") from None
    click.echo(f"serving /metrics on {address}:{server.server_port} for queue {settings.queue_key}")
    sys.stdout.flush()
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    return 0


# ------------------------------------------------------------------------------------------------ doctor
@cli.command()
@click.option(
    "--watch",
    "watch_mode",
    is_flag=True,
    help="observe one song submitted through the REST tier and print the settings that serve it",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="with --watch: seconds to wait for the submission",
)
@click.option("--no-model", is_flag=True, help="skip loading the model")
@json_option
@click.pass_obj
def doctor(ops: Ops, watch_mode: bool, timeout_s: float, no_model: bool, as_json: bool) -> int:
    """Check the settings, Redis (and its persistence), S3, the buckets, the model, the claim wait and the queue.
    With --watch: submit one song through the tier while it watches; it prints the environment block (QUEUE_KEY,
    QUEUE_POP, INPUT_BUCKET, INPUT_KEY, STATUS_KEY, STATE_FIELDS, MODEL_ALIASES, ...) that serves the tier, and
    what it could not tell as commented-out lines. It only reads the tier's data. Exit 0 when all is well, 1 on a
    failed check or a tier the block cannot serve, 3 when no submission came within --timeout."""
    settings = ops.settings
    if not watch_mode:
        checks = doctor_checks.static_checks(settings, with_model=not no_model)
        if as_json:
            emit_json(doctor_checks.checks_as_dict(checks))
        else:
            for check in checks:
                click.echo(f"{check.level:<5} {check.name:<14} {check.detail}")
        return 0 if all(check.level != "fail" for check in checks) else EXIT_FAILED
    click.echo(f"stemworker doctor: watching Redis for {timeout_s:g} s: submit one song through the tier now", err=True)
    try:
        _, profile = doctor_checks.watch_tier(settings, timeout_s)
    except NothingSeen as err:
        raise OpsError(str(err), EXIT_TIMEOUT) from None
    except WatchUnavailable as err:
        raise OpsError(str(err)) from None
    if as_json:
        emit_json(profile.as_dict())
    else:
        click.echo("\n".join(doctor_checks.watch_text(profile.observed.get("watched_with", ""), profile)))
    return 0 if not profile.problems else EXIT_FAILED


# ------------------------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    """Run `stemworker` with `argv` (default: the process's); returns the exit code, never a traceback for an
    expected failure."""
    try:
        result = cli.main(args=argv, prog_name="stemworker", standalone_mode=False, auto_envvar_prefix="STEMWORKER")
        return int(result or 0)
    except click.exceptions.Abort:
        click.echo("stemworker: aborted", err=True)
        return EXIT_FAILED
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except OpsError as err:
        click.echo(f"stemworker: {err}", err=True)
        return err.code
    except deadletters.NoSuchEntry as err:
        click.echo(f"stemworker: {err.args[0]}", err=True)
        return EXIT_USAGE
    except (redis.RedisError, StemworkerError) as err:
        click.echo(f"stemworker: {failure_line(err)}", err=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def failure_line(err: Exception) -> str:
    """One line for a Redis or S3 failure, naming the settings to check when Redis is unreachable."""
    text = " ".join(str(err).split())
    if isinstance(err, redis.ConnectionError | redis.TimeoutError):
        try:
            where = redacted(load_settings().redis_connection_url)
        except ConfigError:
            where = "(unreadable settings)"
        return (
            f"cannot reach Redis at {where}: {text}. Is Redis running where the settings say "
            "(REDIS_URL, or REDIS_HOST and REDIS_PORT)?"
        )
    return f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    raise SystemExit(main())
