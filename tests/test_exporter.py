"""Metrics end to end against the real Redis and S3: jobs run through the real job runner record counters and
histograms (function/metrics.py); `stemworker exporter` (stemops/exporter.py) and the HTTP adapter's /metrics
serve them; the output is parsed with prometheus_client's own parser. Also: the Grafana dashboard names only
metrics the exporter really exports, records stay bounded, and the oldest-waiting age means what it says."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import functions_framework
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from support import REPO_ROOT, runner_env, settings_env

from function import core, keys
from function.config import get_settings
from function.metrics import DURATION_BUCKETS_S, MAX_SCRAPES_IN_FLIGHT, STAGES, Recorder, exposition
from function.queue import WorkQueue
from function.runner import Outcome, Runner
from stemops.exporter import exporter_registry, scrape_client, serve
from stemops.waiting import oldest_waiting_age_s

DASHBOARD = REPO_ROOT / "keda" / "monitoring" / "grafana-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(url: str) -> str:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def test_counts_after_real_jobs_through_the_runner(make_settings, redis_client, upload, song, receiver, monkeypatch):
    # The result cache is off: done2 has the same song as done1, and each must run every stage here.
    settings = make_settings(
        max_attempts=2, scaledjob_max_replicas=2, callback_allow_hosts="127.0.0.1", result_cache=False
    )
    for job_id in ("done1", "done2", "flaky"):
        upload(job_id, song)
    # done1 and missing POST a callback each (missing's is its failure notice).
    redis_client.rpush(
        settings.queue_key,
        json.dumps({"songhash": "done1", "callback": receiver.url}),
        "done2",
        json.dumps({"songhash": "missing", "callback": receiver.url}),
        "{not json",
    )
    runner = Runner(settings)
    outcomes = [runner.run_once(wait_s=1).outcome for _ in range(4)]
    assert outcomes == [Outcome.DONE, Outcome.DONE, Outcome.DEAD, Outcome.DEAD]
    # A transient failure: the temp dir is missing, so the attempt fails, is requeued, then dead-lettered.
    redis_client.rpush(settings.queue_key, "flaky")
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/stemworker-test-tmp")
    flaky = [runner.run_once(wait_s=1).outcome for _ in range(2)]
    monkeypatch.undo()
    assert flaky == [Outcome.REQUEUED, Outcome.DEAD]
    # One message still waiting and one claimed by a live runner (a real lease), for the gauges.
    redis_client.rpush(settings.queue_key, "held", "waiting")
    assert WorkQueue(redis_client, settings.queue_key).claim(0) is not None

    server = serve(redis_client, settings, 0, "127.0.0.1")
    try:
        text = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    found = samples(text)
    jobs = {(labels[1][1], labels[0][1]): v for (name, labels), v in found.items() if name == "stemworker_jobs_total"}
    assert jobs[("done", "tiny")] == 2
    assert jobs[("failed", "tiny")] == 3  # missing once, flaky twice
    assert jobs[("requeued", "tiny")] == 1
    assert jobs[("dead", "tiny")] == 2 and jobs[("dead", "other")] == 1  # the malformed message has no model
    assert jobs[("interrupted", "tiny")] == 0
    for stage in STAGES:
        assert value(found, "stemworker_job_duration_seconds_count", stage=stage, model="tiny") == 2
        assert value(found, "stemworker_job_duration_seconds_bucket", stage=stage, model="tiny", le="+Inf") == 2
        assert value(found, "stemworker_job_duration_seconds_sum", stage=stage, model="tiny") > 0
    buckets = [
        value(found, "stemworker_job_duration_seconds_bucket", stage="total", model="tiny", le=str(float(bound)))
        for bound in DURATION_BUCKETS_S
    ]
    assert buckets == sorted(buckets)  # cumulative
    recorded = [float(redis_client.hget(f"status:{job_id}", "seconds")) for job_id in ("done1", "done2")]
    assert value(found, "stemworker_job_duration_seconds_sum", stage="total", model="tiny") == pytest.approx(
        sum(recorded), abs=0.01
    )
    audio = [float(redis_client.hget(f"status:{j}", "audio_seconds")) for j in ("done1", "done2")]
    assert value(found, "stemworker_audio_seconds_total", model="tiny") == pytest.approx(sum(audio), abs=0.01)
    assert value(found, "stemworker_realtime_factor_count", model="tiny") == 2
    assert value(found, "stemworker_callbacks_total", result="delivered") == 2 == len(receiver.requests)
    assert value(found, "stemworker_callbacks_total", result="failed") == 0
    assert value(found, "stemworker_queue_waiting") == 1
    assert value(found, "stemworker_queue_processing") == 1
    assert value(found, "stemworker_queue_dead") == 3 == redis_client.llen("toWorker:dead")
    assert value(found, "stemworker_jobs_running") == 1
    assert value(found, "stemworker_queue_oldest_waiting_age_seconds") >= 0
    assert value(found, "stemworker_scaledjob_max_replicas") == 2
    assert value(found, "stemworker_redis_up") == 1
    assert value(found, "stemworker_exporter_scrape_errors_total") == 0
    assert value(found, "stemworker_cache_hits_total", model="tiny") == 0


def test_a_cache_hit_counts_as_done_and_as_a_hit_but_separates_no_audio(make_settings, redis_client, upload, song):
    settings = make_settings(result_cache=True)
    for job_id in ("first", "again"):
        upload(job_id, song)  # the same bytes under two ids: the second is served from the cache
    redis_client.rpush(settings.queue_key, "first", "again")
    runner = Runner(settings)
    assert [runner.run_once(wait_s=1).outcome for _ in range(2)] == [Outcome.DONE, Outcome.DONE]
    assert redis_client.hget("status:again", "cached") == b"1"
    found = samples(exposition(exporter_registry(redis_client, settings)).decode())
    assert value(found, "stemworker_jobs_total", outcome="done", model="tiny") == 2
    assert value(found, "stemworker_cache_hits_total", model="tiny") == 1
    separated = float(redis_client.hget("status:first", "audio_seconds"))
    assert value(found, "stemworker_audio_seconds_total", model="tiny") == pytest.approx(separated, abs=0.01)
    assert value(found, "stemworker_job_duration_seconds_count", stage="separate", model="tiny") == 1
    assert value(found, "stemworker_job_duration_seconds_count", stage="total", model="tiny") == 2
    assert value(found, "stemworker_realtime_factor_count", model="tiny") == 1


def test_scrape_errors_are_counted_and_never_a_500(make_settings):
    settings = make_settings(redis_url="redis://127.0.0.1:9/0", redis_timeout_s=0.5)
    server = serve(redis.Redis.from_url(settings.redis_connection_url, socket_timeout=0.5), settings, 0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        first, second = samples(scrape(url)), samples(scrape(url))
    finally:
        server.shutdown()
        server.server_close()
    assert value(first, "stemworker_redis_up") == 0
    assert value(first, "stemworker_exporter_scrape_errors_total") == 1
    assert value(second, "stemworker_exporter_scrape_errors_total") == 2
    assert not [name for name, _ in first if name.startswith("stemworker_queue")]


def test_exporter_command_serves_until_sigterm(settings, redis_client):
    Recorder(redis_client, settings).job_done("cmd1", "tiny", {"total": 1.5, "separate": 1.0}, 3.0)
    process = subprocess.Popen(
        [sys.executable, "-m", "stemops", "exporter", "--port", "0", "--address", "127.0.0.1"],
        cwd=REPO_ROOT,
        env=runner_env(settings, LOG_FORMAT="text"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"serving /metrics on (127\.0\.0\.1:\d+) for queue (\S+)\n", line)
        assert match is not None and match[2] == settings.queue_key, line
        found = samples(scrape(f"http://{match[1]}/metrics"))
        assert value(found, "stemworker_jobs_total", outcome="done", model="tiny") == 1
        assert value(found, "stemworker_job_duration_seconds_count", stage="total", model="tiny") == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        rest, errors = process.stdout.read(), process.stderr.read()
        assert "serving" not in rest + errors  # the serving line is printed once, on stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_exporter_command_has_no_json_flag(settings):
    done = subprocess.run(
        [sys.executable, "-m", "stemops", "exporter", "--json"],
        cwd=REPO_ROOT,
        env=runner_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "No such option '--json'" in done.stderr


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A Redis URL on a loopback port that accepts connections and never replies (and never closes them)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


def test_a_hung_redis_reads_as_down_within_the_scrape_budget(make_settings, hung_redis):
    """Default REDIS_TIMEOUT_S (10 s) and the default budget (5 s): the exporter's own client answers at the first
    call's timeout (2.5 s), far under the ServiceMonitor's 20 s scrape timeout; the worker's client took over 100 s."""
    settings = make_settings(redis_url=hung_redis, redis_timeout_s=10.0)
    registry = exporter_registry(scrape_client(settings), settings)
    started = time.monotonic()
    found = samples(exposition(registry).decode())
    elapsed = time.monotonic() - started
    assert value(found, "stemworker_redis_up") == 0
    assert value(found, "stemworker_exporter_scrape_errors_total") == 1
    assert elapsed < settings.exporter_scrape_budget_s + 1, elapsed


def test_the_scrape_budget_bounds_a_client_without_short_timeouts(make_settings, hung_redis):
    """Whatever client the collector is given (here one that waits 60 s per call and retries), the whole scrape
    ends with stemworker_redis_up 0 once EXPORTER_SCRAPE_BUDGET_S has passed."""
    settings = make_settings(redis_url=hung_redis, exporter_scrape_budget_s=1.0)
    slow = redis.Redis.from_url(hung_redis, socket_timeout=60, socket_connect_timeout=60)
    registry = exporter_registry(slow, settings)
    started = time.monotonic()
    found = samples(exposition(registry).decode())
    elapsed = time.monotonic() - started
    assert value(found, "stemworker_redis_up") == 0
    assert elapsed < 3.0, elapsed
    # Scrapes keep answering at once even while earlier ones are still stuck on their sockets.
    for _ in range(MAX_SCRAPES_IN_FLIGHT + 2):
        assert value(samples(exposition(registry).decode()), "stemworker_redis_up") == 0
    assert threading.active_count() < 50


def test_exporter_command_answers_redis_down_when_redis_hangs(make_settings, hung_redis):
    """The command end to end, at the default settings: each scrape answers 200 with stemworker_redis_up 0 within a
    few seconds, under the ServiceMonitor's 20 s scrape timeout and the liveness probe's."""
    settings = make_settings(redis_url=hung_redis)
    env = runner_env(settings, REDIS_URL=hung_redis, REDIS_TIMEOUT_S="10", LOG_FORMAT="text")
    env.pop("EXPORTER_SCRAPE_BUDGET_S", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "stemops", "exporter", "--port", "0", "--address", "127.0.0.1"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        where = process.stdout.readline().split()[3]
        for _ in range(2):
            started = time.monotonic()
            found = samples(scrape(f"http://{where}/metrics"))
            assert value(found, "stemworker_redis_up") == 0
            assert time.monotonic() - started < 8.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.fixture
def http_app(services, model_repo, settings, monkeypatch):
    """The HTTP adapter's app, built as functions-framework does from the environment."""
    saved_path = list(sys.path)
    for name, val in settings_env(settings).items():
        monkeypatch.setenv(name, val)
    monkeypatch.setenv("FUNCTION_TARGET", "handle")
    monkeypatch.setenv("FUNCTION_SIGNATURE_TYPE", "http")
    get_settings.cache_clear()
    core._default_worker = None
    yield functions_framework.create_app(target="handle", source=str(REPO_ROOT / "function" / "main.py"))
    get_settings.cache_clear()
    core._default_worker = None
    sys.path[:] = saved_path
    sys.modules.pop("main", None)


def test_http_adapter_serves_metrics_before_its_health_answer(http_app, settings, redis_client):
    Recorder(redis_client, settings).job_done("http1", "tiny", {"total": 2.0, "separate": 1.0}, 2.0)
    redis_client.rpush(settings.queue_key, "x")
    client = http_app.test_client()
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.get_data(as_text=True))
    assert value(found, "stemworker_jobs_total", outcome="done", model="tiny") == 1
    assert value(found, "stemworker_queue_waiting") == 1
    assert value(found, "stemworker_realtime_factor_sum", model="tiny") == pytest.approx(0.5)
    health = client.get("/health/readiness")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"


# ------------------------------------------------------------------------------------------------ dashboard
PROMQL_WORDS = {
    "sum",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "by",
    "without",
    "avg",
    "max",
    "min",
    "count",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "clamp_min",
    "clamp_max",
    "delta",
    "deriv",
    "time",
    "vector",
    "scalar",
    "abs",
    "topk",
    "bottomk",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: every identifier that is not a function, keyword, label name inside
    `{}` / `by (...)`, Grafana variable, range or string."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if word in PROMQL_WORDS or after.startswith("("):
            continue
        names.add(word)
    return names


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def exported_names(settings, redis_client) -> set[str]:
    """Every series name a real exporter serves once each kind of record exists."""
    Recorder(redis_client, settings).job_done("names", "tiny", {stage: 1.0 for stage in STAGES}, 3.0)
    Recorder(redis_client, settings).callback(True, "delivered")
    redis_client.rpush(settings.queue_key, "waiting")
    text = exposition(exporter_registry(redis_client, settings)).decode()
    return {name for name, _ in samples(text)}


def test_metric_name_parser_catches_a_misspelt_metric():
    assert metric_names('histogram_quantile(0.95, sum by (le, stage) (rate(x_bucket{a="b"}[$__rate_interval])))') == {
        "x_bucket"
    }
    assert metric_names("sum by (outcome) (rate(stemworker_jobz_total[5m])) / on (x) y") == {
        "stemworker_jobz_total",
        "y",
    }


def test_dashboard_names_only_metrics_the_exporter_exports(make_settings, redis_client):
    exported = exported_names(make_settings(scaledjob_max_replicas=4), redis_client)
    expressions = dashboard_expressions()
    used = set().union(*(metric_names(expr) for expr in expressions))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    # What the dashboard must show.
    joined = "\n".join(expressions)
    for needed in (
        "stemworker_queue_waiting",
        "stemworker_queue_processing",
        "stemworker_jobs_running",
        "stemworker_scaledjob_max_replicas",
        "stemworker_jobs_total",
        "stemworker_queue_dead",
        "stemworker_realtime_factor_bucket",
    ):
        assert needed in used, needed
    for quantile in ("0.5", "0.95"):
        assert re.search(
            rf"histogram_quantile\({quantile}, sum by \(le, stage\) "
            r"\(rate\(stemworker_job_duration_seconds_bucket",
            joined,
        ), quantile
    board = json.loads(DASHBOARD.read_text())
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])


# ------------------------------------------------------------------------------------------------ bounds
def test_records_stay_bounded(make_settings, redis_client):
    settings = make_settings(recent_jobs_max=5, recent_jobs_max_age_s=3600, demucs_models="tiny2")
    recorder = Recorder(redis_client, settings)
    index = keys.recent_jobs_key(settings.queue_key)
    redis_client.zadd(index, {"ancient": time.time() - 7200})
    for n in range(8):
        recorder.job_done(f"b{n}", ["tiny", "tiny2", f"made-up-{n}"][n % 3], {"total": 10.0 ** (n - 3)}, 1.0)
    assert redis_client.zrevrange(index, 0, -1) == [f"b{n}".encode() for n in range(7, 2, -1)]  # newest 5
    counters = redis_client.hgetall(keys.metrics_key(settings.queue_key, "counters"))
    models = {field.decode().split("|")[-1] for field in counters}
    assert models == {"tiny", "tiny2", "other"}
    durations = redis_client.hkeys(keys.metrics_key(settings.queue_key, "durations"))
    les = {field.decode().split("|")[-1] for field in durations} - {"sum"}
    assert les <= {str(float(b)) for b in DURATION_BUCKETS_S} | {"+Inf"}
    assert "+Inf" in les and "0.5" in les  # 0.001 s and 10000 s land in the end buckets


def test_oldest_waiting_age_is_from_first_sight_and_forgets_what_left(settings, redis_client):
    queue = settings.queue_key
    seen = keys.seen_key(queue)
    assert oldest_waiting_age_s(redis_client, settings) is None  # empty queue
    redis_client.rpush(queue, "first", "second")
    assert oldest_waiting_age_s(redis_client, settings) == pytest.approx(0, abs=1)
    assert redis_client.zcard(seen) == 2
    # Pretend an observer saw the claim-end message 100 s ago: the age is measured from then.
    redis_client.zadd(seen, {hashlib.sha1(b"first").hexdigest(): time.time() - 100})
    assert 99 < oldest_waiting_age_s(redis_client, settings) < 110
    redis_client.lpop(queue)
    assert oldest_waiting_age_s(redis_client, settings) == pytest.approx(0, abs=1)
    assert redis_client.zcard(seen) == 1  # "first" left the queue and its record went with it
    redis_client.delete(queue)
    assert oldest_waiting_age_s(redis_client, settings) is None and redis_client.zcard(seen) == 0


# ------------------------------------------------------------------------------------------------ layout
def test_function_never_imports_stemops_and_stemops_stays_light():
    for path in (REPO_ROOT / "function").glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+stemops\b", path.read_text(), re.M), path.name
    code = (
        "import importlib, json, sys; [importlib.import_module(m) for m in ('stemops.cli', 'stemops.exporter')];"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & {"torch", "demucs", "workbench"}, sorted(loaded & {"torch", "demucs", "workbench"})


def test_pyproject_and_image_ship_stemops():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'stemworker = "stemops.cli:main"' in pyproject
    assert re.search(r'include = \[[^\]]*"stemops"', pyproject)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert dockerfile.index("COPY stemops ./stemops") == dockerfile.index("COPY function ./function") + len(
        "COPY function ./function\n"
    )
    assert "!stemops/" in (REPO_ROOT / ".dockerignore").read_text().split()


def test_queue_wait_is_a_histogram_from_the_event_time_or_first_sight(settings, redis_client):
    """The wait of each message's first claim: from a structured CloudEvent's `time`, else from when an observer
    first saw the message waiting; a message with neither is not counted."""
    queue = settings.queue_key
    an_hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    event = {
        "specversion": "1.0",
        "id": "ev-wait",
        "source": "tier",
        "type": "song",
        "time": an_hour_ago,
        "data": {"songhash": "nowhere1"},
    }
    redis_client.rpush(queue, json.dumps(event))
    runner = Runner(settings)
    assert runner.run_once(wait_s=1).outcome is Outcome.DEAD  # no input: it still waited
    redis_client.rpush(queue, "nowhere2")
    assert oldest_waiting_age_s(redis_client, settings) is not None  # an observer (a scrape) sees it arrive
    assert runner.run_once(wait_s=1).outcome is Outcome.DEAD
    redis_client.rpush(queue, "nowhere3")  # never observed: its wait is unknown
    assert runner.run_once(wait_s=1).outcome is Outcome.DEAD
    found = samples(exposition(exporter_registry(redis_client, settings)).decode())
    assert value(found, "stemworker_queue_wait_seconds_count") == 2
    total = value(found, "stemworker_queue_wait_seconds_sum")
    assert 3600 <= total < 3600 + 60
    assert value(found, "stemworker_queue_wait_seconds_bucket", le="5.0") == 1  # the observed one, just now
    assert value(found, "stemworker_queue_wait_seconds_bucket", le="3600.0") == 1
    assert value(found, "stemworker_queue_wait_seconds_bucket", le="7200.0") == 2
