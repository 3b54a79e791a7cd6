"""Settings: defaults, parsing of lists and pairs, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from function.config import get_settings, load_settings
from function.errors import ConfigError
from function.separation import cgroup_cpu_limit, cpu_threads


def test_defaults_match_the_documented_ones(monkeypatch):
    s = load_settings()
    assert (s.queue_key, s.log_key, s.status_key) == ("toWorker", "logging", "status:{id}")
    assert (s.input_bucket, s.input_key, s.output_bucket, s.output_key) == ("queue", "{id}.mp3", "output",
                                                                          "{id}-{stem}.{ext}")
    assert s.redis_connection_url == "redis://localhost:6379/0" and s.s3_endpoint == "localhost:9000"
    assert s.minio_access_key.get_secret_value() == "rootuser" and not s.s3_secure
    assert (s.demucs_model, s.demucs_shifts, s.demucs_overlap, s.mp3_bitrate) == ("htdemucs", 1, 0.25, 320)
    assert s.allowed_models == {"htdemucs"} and s.max_input_bytes == 200_000_000
    assert s.max_duration_seconds == 1200


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
