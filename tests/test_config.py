"""Settings: defaults, parsing of lists and pairs, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from function import runner
from function.clients import s3_client
from function.config import get_settings, load_settings
from function.errors import ConfigError
from function.separation import cgroup_cpu_limit, cpu_threads


def test_defaults_match_the_documented_ones(monkeypatch):
    s = load_settings()
    assert (s.queue_key, s.log_key, s.status_key) == ("toWorker", "logging", "status:{id}")
    assert (s.input_bucket, s.input_key, s.output_bucket, s.output_key) == (
        "queue",
        "{id}.mp3",
        "output",
        "{id}-{stem}.{ext}",
    )
    assert s.redis_connection_url == "redis://localhost:6379/0" and s.s3_endpoint == "localhost:9000"
    assert s.minio_access_key is None and s.minio_secret_key is None and not s.s3_secure
    assert (s.demucs_model, s.demucs_shifts, s.demucs_overlap, s.mp3_bitrate) == ("htdemucs", 1, 0.25, 320)
    assert s.allowed_models == {"htdemucs"} and s.max_input_bytes == 200_000_000
    assert s.max_duration_s == 3600


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "redis.svc")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("MINIO_HOST", "minio.svc")
    monkeypatch.setenv("MINIO_PORT", "9001")
    monkeypatch.setenv("DEMUCS_MODELS", "htdemucs_ft, mdx_extra")
    monkeypatch.setenv("STEM_ALIASES", "bass:base, vocals:voice")
    get_settings.cache_clear()
    try:
        s = get_settings()
    finally:
        get_settings.cache_clear()
    assert s.redis_connection_url == "redis://redis.svc:6380/0" and s.s3_endpoint == "minio.svc:9001"
    assert s.allowed_models == {"htdemucs", "htdemucs_ft", "mdx_extra"}
    assert s.stem_aliases == {"bass": "base", "vocals": "voice"}


def test_missing_object_store_credentials_stop_the_worker_at_start(monkeypatch, capsys):
    monkeypatch.delenv("MINIO_ACCESS_KEY", raising=False)
    monkeypatch.delenv("MINIO_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="MINIO_ACCESS_KEY and MINIO_SECRET_KEY must be set"):
        s3_client(load_settings())
    with pytest.raises(ConfigError, match="MINIO_SECRET_KEY must be set") as raised:
        s3_client(load_settings(minio_access_key="someone"))
    assert "MINIO_ACCESS_KEY" not in str(raised.value)
    monkeypatch.setenv("MINIO_ACCESS_KEY", "someone")
    assert runner.main([]) == 2  # before any connection is tried
    assert "MINIO_SECRET_KEY must be set" in capsys.readouterr().err


def test_seconds_settings_read_their_old_names_too(monkeypatch):
    monkeypatch.setenv("CLAIM_WAIT_SECONDS", "7")
    monkeypatch.setenv("LEASE_SECONDS", "60")
    monkeypatch.setenv("ORPHAN_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("MAX_DURATION_SECONDS", "300")
    s = load_settings()
    assert (s.claim_wait_s, s.lease_s, s.orphan_grace_s, s.max_duration_s) == (7, 60, 2.5, 300)
    monkeypatch.setenv("CLAIM_WAIT_S", "3")  # the new name wins over the old one
    assert load_settings().claim_wait_s == 3
    with pytest.raises(ConfigError, match="LEASE_S"):
        load_settings(lease_s=1)


def test_the_emulator_reads_old_and_new_names_from_a_pod_environment():
    from workbench.emulator import pod_settings

    assert pod_settings({"CLAIM_WAIT_SECONDS": "7", "LEASE_S": "60"}).claim_wait_s == 7
    assert pod_settings({"CLAIM_WAIT_SECONDS": "7", "LEASE_S": "60"}).lease_s == 60


def test_endpoint_url_form_and_https():
    s = load_settings(minio_endpoint="https://s3.example.org:9443")
    assert s.s3_endpoint == "s3.example.org:9443" and s.s3_secure


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("DEMUCS_SHIFTS", "many", "DEMUCS_SHIFTS"),
        ("REDIS_PORT", "0", "REDIS_PORT"),
        ("STEM_ALIASES", "bass", "STEM_ALIASES"),
        ("OUTPUT_KEY", "{id}-{stem.__class__}", "OUTPUT_KEY"),
        ("OUTPUT_KEY", "{id}.{ext}", "OUTPUT_KEY"),
        ("INPUT_KEY", "{id}{0}", "INPUT_KEY"),
        ("STATUS_KEY", "status", "STATUS_KEY"),
        ("DEMUCS_DEVICE", "tpu", "DEMUCS_DEVICE"),
        ("MAX_INPUT_BYTES", "-1", "MAX_INPUT_BYTES"),
        ("QUEUE_POP", "middle", "QUEUE_POP"),
        ("MODEL_ALIASES", "default", "MODEL_ALIASES"),
        ("MODEL_ALIASES", "default:mdx_extra_q", "MODEL_ALIASES"),  # the target is not an allowed model
        ("UNKNOWN_MODEL", "guess", "UNKNOWN_MODEL"),
        ("STEM_ALIASES", "bass:base+", "STEM_ALIASES"),
        ("STEM_ALIASES", "bass:base+b/ass", "STEM_ALIASES"),
        ("STATE_FIELDS", "state,st atus", "STATE_FIELDS"),
        ("STATE_FIELDS", " , ", "STATE_FIELDS"),
        ("CALLBACK_ALLOW_HOSTS", "10.0.0.1/8", "CALLBACK_ALLOW_HOSTS"),
        ("STATE_MAP", "done:finished", "STATE_MAP"),  # only the intermediate states
        ("STATE_MAP", "separating", "STATE_MAP"),
        ("STATE_MAP", "separating:pro cessing", "STATE_MAP"),
        ("STATE_MAP", "separating:processing", "STATE_MAP"),  # STATE_FIELDS names no field but `state`
        ("CALLBACK_ALLOW_HOSTS", "hooks.internal,10.0.0.0/33", "CALLBACK_ALLOW_HOSTS"),
    ],
)
def test_bad_setting_fails_at_start_naming_the_variable(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cpu_threads_follow_the_cgroup_v2_quota(tmp_path):
    write(tmp_path, "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert cpu_threads(tmp_path) == min(2, len(__import__("os").sched_getaffinity(0)))
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cpu_threads_follow_the_cgroup_v1_quota(tmp_path):
    write(tmp_path, "cpu/cpu.cfs_quota_us", "100000\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.0 and cpu_threads(tmp_path) == 1
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_rest_tier_settings_are_read(monkeypatch):
    monkeypatch.setenv("DEMUCS_MODEL", "htdemucs")
    monkeypatch.setenv("DEMUCS_MODELS", "htdemucs_ft")
    monkeypatch.setenv("MODEL_ALIASES", "default:htdemucs, mdx_extra_q:htdemucs_ft")
    monkeypatch.setenv("UNKNOWN_MODEL", "default")
    monkeypatch.setenv("INPUT_BUCKET", "queue")
    monkeypatch.setenv("INPUT_BUCKETS", "uploads, archive")
    monkeypatch.setenv("STATE_FIELDS", "state, status")
    monkeypatch.setenv("STEM_ALIASES", "bass:base+bass")
    monkeypatch.setenv("CALLBACK_ALLOW_HOSTS", "hooks.internal, 10.0.0.0/8, 127.0.0.1/32, fd00::/8")
    s = load_settings()
    assert s.model_aliases == {"default": "htdemucs", "mdx_extra_q": "htdemucs_ft"} and s.unknown_model == "default"
    assert s.allowed_input_buckets == {"queue", "uploads", "archive"}
    assert s.state_fields == ("state", "status") and s.stem_aliases == {"bass": "base+bass"}
    assert s.callback_allow_hosts == ("hooks.internal", "10.0.0.0/8", "127.0.0.1/32", "fd00::/8")


def test_rest_tier_defaults():
    s = load_settings(input_bucket="songs")
    assert s.model_aliases == {} and s.unknown_model == "reject" and s.state_fields == ("state",)
    assert s.allowed_input_buckets == {"songs"}


def test_a_model_alias_names_its_target_and_the_allowed_models():
    with pytest.raises(ConfigError, match=r"MODEL_ALIASES maps 'default' to 'mdx'.*allowed.*\['htdemucs'\]"):
        load_settings(demucs_model="htdemucs", model_aliases="default:mdx")


# --- templated buckets (function/buckets.py) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "value", "reason"),
    [
        ("INPUT_BUCKET", "{song}", "may only use the placeholders ['id'], got {song}"),
        ("INPUT_BUCKET", "{id}_songs", "may only hold lowercase letters, digits, '.' and '-'"),
        ("INPUT_BUCKET", "Songs-{id}", "may only hold lowercase letters, digits, '.' and '-'"),
        ("INPUT_BUCKET", "-{id}", "must begin and end with a letter or digit"),
        ("INPUT_BUCKET", "{id}.", "must begin and end with a letter or digit"),
        ("INPUT_BUCKET", "a..{id}", "must not hold '..'"),
        ("INPUT_BUCKET", "x" * 63 + "{id}", "a bucket name has 3 to 63"),
        ("OUTPUT_BUCKET", "{id}-{stem}", "may only use the placeholders ['ext', 'id', 'model'], got {stem}"),
        ("OUTPUT_BUCKET", "stems-{model}", "{model}='tiny_2'"),  # an allowed model's name holds '_'
        ("OUTPUT_BUCKET", "ab", "is 2 characters"),
        ("INPUT_BUCKETS", "uploads,Up_loads", "may only hold lowercase"),
    ],
)
def test_a_bucket_template_that_cannot_name_a_bucket_stops_the_start(monkeypatch, env, value, reason):
    monkeypatch.setenv("DEMUCS_MODELS", "tiny_2")
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert env in str(raised.value) and reason in str(raised.value)


@pytest.mark.parametrize(
    ("input_bucket", "output_bucket"),
    [("{id}", "{id}"), ("songs-{id}", "stems.{id}.{ext}"), ("queue", "out-{model}"), ("{id}x", "output")],
)
def test_bucket_templates_that_can_name_a_bucket_are_accepted(input_bucket, output_bucket):
    s = load_settings(input_bucket=input_bucket, output_bucket=output_bucket)
    assert (s.input_bucket, s.output_bucket) == (input_bucket, output_bucket)


def test_state_map_and_an_explicit_status_ttl_are_read(monkeypatch):
    monkeypatch.setenv("STATE_FIELDS", "state,status")
    monkeypatch.setenv("STATE_MAP", "downloading:processing, separating:processing, uploading:")
    s = load_settings()
    assert s.state_map == {"downloading": "processing", "separating": "processing", "uploading": ""}
    assert not s.status_ttl_explicit and s.status_ttl_s == 604800
    monkeypatch.setenv("STATUS_TTL_S", "604800")
    assert load_settings().status_ttl_explicit


def test_redis_password_joins_host_and_port_unless_redis_url_is_set():
    from function.config import load_settings

    settings = load_settings(redis_host="redis.ns.svc", redis_port=6380, redis_password="p@ss word/1")
    assert settings.redis_connection_url == "redis://:p%40ss%20word%2F1@redis.ns.svc:6380/0"
    assert "p@ss" not in repr(settings)
    overridden = load_settings(redis_url="redis://other:1/2", redis_password="x")
    assert overridden.redis_connection_url == "redis://other:1/2"
