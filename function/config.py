"""Settings, read from the environment once and frozen.

Each field is read from the upper-cased variable of the same name (`demucs_shifts` <- `DEMUCS_SHIFTS`).
A bad value fails at start with that variable's name; nothing is re-read per job.
"""

from __future__ import annotations

import ipaddress
import string
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from function import keys
from function.buckets import check_bucket_template
from function.errors import ConfigError
from function.signing import secret_bytes

STEMS = ("drums", "bass", "other", "vocals")
FORMATS = ("mp3", "wav", "flac")
# The states STATE_MAP may rename or leave out: those between queued and done or failed.
MAPPABLE_STATES = ("downloading", "separating", "uploading")

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _pairs(value: object, example: str) -> object:
    """`a:b, c:d` -> {"a": "b", "c": "d"}; anything but a string is left to pydantic."""
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for pair in (part.strip() for part in value.split(",") if part.strip()):
        key, sep, target = pair.partition(":")
        if not sep or not key.strip() or not target.strip():
            raise ValueError(f"expected pairs like {example!r}, got {pair!r}")
        pairs[key.strip()] = target.strip()
    return pairs


def _check_template(name: str, template: str, allowed: set[str]) -> str:
    """Accept only plain `{field}` placeholders from `allowed`: no attribute access, index or format spec."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"{name} {template!r} is not a valid template: {err}") from err
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in allowed or spec or conversion:
            raise ValueError(f"{name} {template!r} may only use the placeholders {sorted(allowed)}, got {{{field}}}")
    return template


class Settings(BaseSettings):
    """Every knob of the worker. Units are in the names, seconds as `_s`; the four settings once named
    `..._SECONDS` still read their old variable (`validation_alias`), the new name first."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # Redis
    redis_url: SecretStr | None = None
    redis_host: str = "localhost"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_timeout_s: float = Field(10.0, gt=0)
    queue_key: str = Field(keys.DEFAULT_QUEUE_KEY, min_length=1)
    log_key: str = Field(keys.DEFAULT_LOG_KEY, min_length=1)
    status_key: str = keys.DEFAULT_STATUS_KEY
    status_ttl_s: int = Field(keys.STATUS_TTL_S, gt=0)

    # Object store
    minio_endpoint: str | None = None
    minio_host: str = "localhost"
    minio_port: int = Field(9000, ge=1, le=65535)
    # No default: the worker fails at start without them (clients.s3_credentials); the local stack sets its own.
    minio_access_key: SecretStr | None = None
    minio_secret_key: SecretStr | None = None
    minio_secure: bool = False
    minio_region: str | None = None
    s3_timeout_s: float = Field(30.0, gt=0)

    # Layout
    input_bucket: str = "queue"
    input_key: str = "{id}.mp3"
    output_bucket: str = "output"
    output_key: str = "{id}-{stem}.{ext}"
    # stem:name[+name...]: the stem is uploaded under the first name and server-side copied to the others.
    stem_aliases: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Buckets a message may name in its own `bucket` field (INPUT_BUCKET is always one of them).
    input_buckets: CommaList = ()
    # Names the job's state is written under in the status hash (a REST tier may read `status`).
    state_fields: CommaList = ("state",)
    # How the intermediate states are written under the STATE_FIELDS names other than `state`, for a tier that
    # knows only queued/processing/done/failed: `separating:processing`; an empty name leaves the state out.
    state_map: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    # DEMUCS
    demucs_model: str = "htdemucs"
    demucs_models: CommaList = ()
    # name:model pairs: a message asking for `name` runs `model` (an allowed model).
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # A model name that is neither allowed nor aliased: reject the job, or run DEMUCS_MODEL instead.
    unknown_model: Literal["reject", "default"] = "reject"
    demucs_repo: Path | None = None
    demucs_device: str = "auto"
    demucs_shifts: int = Field(1, ge=0, le=20)
    demucs_overlap: float = Field(0.25, ge=0.0, lt=1.0)
    demucs_segment: float | None = Field(None, gt=0)
    demucs_threads: int | None = Field(None, ge=1)
    # `auto` (the default) is bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX) and fp32 elsewhere,
    # CUDA included (separation.resolve_precision): bf16 passed the SDR gate of docs/quality.md. `fp32`, `bf16`
    # and `fp16` force one.
    demucs_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Whether the CPU computes bf16 natively, for `auto`: read from /proc/cpuinfo (`auto`), or stated (`yes`, `no`)
    # where the flags do not tell (a VM that hides them) or to run the tests as on the other kind of CPU.
    cpu_native_bf16: Literal["auto", "yes", "no"] = "auto"
    # glibc's malloc serves every block from its heap and keeps freed memory for the next chunk instead of
    # unmapping it (function/allocator.py): same stems, no page faults after the first chunk.
    malloc_reuse: bool = True
    # Load the model from its frozen file in DEMUCS_REPO/frozen when one matches its weights (function/frozen_models.py)
    frozen_models: bool = True
    mp3_bitrate: int = Field(320, ge=32, le=320)
    mp3_preset: int = Field(2, ge=2, le=7)  # lameenc quality: 2 best, 7 fastest

    # Limits
    max_input_bytes: int = Field(200_000_000, gt=0)
    # An hour: the job's peak memory no longer grows with the song (docs/performance.md); its work dir needs
    # about 2.12 MB per second of audio allowed (7.6 GB for an hour), see the table there.
    max_duration_s: float = Field(3600.0, gt=0, validation_alias=AliasChoices("max_duration_s", "max_duration_seconds"))
    max_message_bytes: int = Field(64 * 1024, gt=0)

    # Debugging: every received event is saved here as `<event id>.json`, ready for `python -m function.replay`.
    save_events_dir: Path | None = None

    # Logging: LOG_FORMAT=json writes one JSON object per stderr line (the Redis `logging` list keeps its format).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # Job runner (`python -m function.runner`; each flag overrides its variable)
    max_messages: int = Field(1, ge=1)
    reap_only: bool = False
    claim_wait_s: float = Field(30.0, ge=0, validation_alias=AliasChoices("claim_wait_s", "claim_wait_seconds"))
    lease_s: int = Field(120, ge=2, validation_alias=AliasChoices("lease_s", "lease_seconds"))
    max_attempts: int = Field(3, ge=1)
    queue_pop: Literal["left", "right"] = "left"
    orphan_grace_s: float = Field(10.0, ge=0, validation_alias=AliasChoices("orphan_grace_s", "orphan_grace_seconds"))

    # Operator records and tools (function/metrics.py, `stemworker`): the recent-jobs index keeps at most this
    # many ids, none older than this (default: as long as a status hash lives).
    recent_jobs_max: int = Field(10_000, ge=1)
    recent_jobs_max_age_s: int = Field(keys.STATUS_TTL_S, gt=0)
    exporter_port: int = Field(9090, ge=1, le=65535)
    # The ScaledJob's maxReplicaCount, exported as a gauge so dashboards can draw running jobs against it.
    scaledjob_max_replicas: int | None = Field(None, ge=1)

    # Replay (`python -m function.replay`; each flag overrides its variable)
    replay_url: str | None = None
    replay_mode: Literal["binary", "structured"] = "binary"
    replay_timeout_s: float = Field(900.0, gt=0)
    replay_dry_run: bool = False

    # Result cache (docs/cache.md): a repeated input with the same settings is served from the first job's stems.
    result_cache: bool = True  # RESULT_CACHE=on|off
    result_cache_ttl_s: int = Field(keys.RESULT_CACHE_TTL_S, gt=0)
    result_cache_max_entries: int = Field(keys.RESULT_CACHE_MAX_ENTRIES, ge=1)
    # How long a job waits for an identical job that is separating the same input before separating it too.
    result_cache_wait_s: float = Field(600.0, ge=0)
    # TTL of the single-flight lock, renewed every third of it: a dead owner's waiters take over after this long.
    result_cache_lock_s: float = Field(30.0, ge=0.5)

    # Callback
    callback_timeout_s: float = Field(10.0, gt=0)
    callback_private: Literal["allow", "deny"] = "allow"
    callback_allow_hosts: CommaList = ()
    webhook_secret: SecretStr | None = None
    callback_attempts: int = Field(3, ge=1, le=10)
    callback_total_s: float = Field(30.0, gt=0)

    # `stemworker exporter`: a scrape reads Redis for at most this long, then answers stemworker_redis_up 0 (well
    # under the ServiceMonitor's 20 s scrape timeout); each Redis call of a scrape waits at most half of it.
    exporter_scrape_budget_s: float = Field(5.0, gt=0, le=15)
    # This pod's name (the downward API's metadata.name); the host name when unset. Recorded with each claim.
    pod_name: str | None = None
    # Redis' password when REDIS_URL is unset (the manifests: REDIS_HOST/REDIS_PORT in the ConfigMap, the password in
    # the Secret that KEDA's trigger reads too, so the address is written once).
    redis_password: SecretStr | None = None

    @field_validator("demucs_models", "input_buckets", "state_fields", mode="before")
    @classmethod
    def _comma_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("callback_allow_hosts", mode="before")
    @classmethod
    def _allow_hosts_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("callback_allow_hosts")
    @classmethod
    def _allow_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry.strip("[]"))
                except ValueError as err:
                    raise ValueError(f"{entry!r} is not an IP network in CIDR form (e.g. 10.0.0.0/8): {err}") from None
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_bytes(value.get_secret_value())  # its error never echoes the secret
        return value

    @field_validator("stem_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: object) -> object:
        return _pairs(value, "bass:base")

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _model_aliases(cls, value: object) -> object:
        return _pairs(value, "default:htdemucs")

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("demucs_device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto" and value != "cpu" and value != "mps" and not value.startswith("cuda"):
            raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value

    @model_validator(mode="after")
    def _templates(self) -> Settings:
        _check_template("STATUS_KEY", self.status_key, {"id"})
        _check_template("INPUT_KEY", self.input_key, {"id"})
        _check_template("OUTPUT_KEY", self.output_key, {"id", "stem", "ext", "model"})
        if "{id}" not in self.status_key:
            raise ValueError(f"STATUS_KEY {self.status_key!r} must contain {{id}}")
        if "{id}" not in self.input_key:
            raise ValueError(f"INPUT_KEY {self.input_key!r} must contain {{id}}")
        if "{id}" not in self.output_key or "{stem}" not in self.output_key:
            raise ValueError(f"OUTPUT_KEY {self.output_key!r} must contain {{id}} and {{stem}}")
        for aliases in self.stem_aliases.values():
            for alias in aliases.split("+"):
                if not alias.replace("_", "").replace("-", "").isalnum():
                    raise ValueError(
                        f"STEM_ALIASES alias {alias!r} must be letters, digits, '_' or '-' "
                        "(several names joined with '+')"
                    )
        for name, target in self.model_aliases.items():
            if target not in self.allowed_models:
                raise ValueError(
                    f"MODEL_ALIASES maps {name!r} to {target!r}, which is not an allowed model; "
                    f"allowed (DEMUCS_MODEL and DEMUCS_MODELS): {sorted(self.allowed_models)}"
                )
        if not self.state_fields:
            raise ValueError("STATE_FIELDS must name at least one field")
        for name in self.state_fields:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"STATE_FIELDS field {name!r} must be letters, digits, '_' or '-'")
        return self

    @model_validator(mode="after")
    def _bucket_templates(self) -> Settings:
        """INPUT_BUCKET and OUTPUT_BUCKET may be templates (`{id}`: a bucket per song); each must be able to give a
        valid bucket name (function/buckets.py). Whether a given id fits is checked per job."""
        _check_template("INPUT_BUCKET", self.input_bucket, {"id"})
        _check_template("OUTPUT_BUCKET", self.output_bucket, {"id", "model", "ext"})
        check_bucket_template("INPUT_BUCKET", self.input_bucket, {})
        check_bucket_template(
            "OUTPUT_BUCKET", self.output_bucket, {"model": sorted(self.allowed_models), "ext": FORMATS}
        )
        for bucket in self.input_buckets:
            _check_template("INPUT_BUCKETS", bucket, set())
            check_bucket_template("INPUT_BUCKETS", bucket, {})
        return self

    @field_validator("state_map", mode="before")
    @classmethod
    def _state_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        mapped: dict[str, str] = {}
        for pair in (part.strip() for part in value.split(",") if part.strip()):
            state, sep, name = pair.partition(":")
            if not sep or state.strip() not in MAPPABLE_STATES:
                raise ValueError(
                    f"expected pairs like 'separating:processing' (or 'downloading:' to leave a state "
                    f"out) for the states {list(MAPPABLE_STATES)}, got {pair!r}"
                )
            if name.strip() and not name.strip().replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"STATE_MAP name {name.strip()!r} must be letters, digits, '_' or '-'")
            mapped[state.strip()] = name.strip()
        return mapped

    @model_validator(mode="after")
    def _state_map_has_fields(self) -> Settings:
        if self.state_map and not set(self.state_fields) - {"state"}:
            raise ValueError(
                "STATE_MAP maps the states written under STATE_FIELDS names other than `state` (which "
                "keeps the worker's own states), and STATE_FIELDS names none: set e.g. "
                "STATE_FIELDS=state,status"
            )
        return self

    @property
    def status_ttl_explicit(self) -> bool:
        """Whether STATUS_TTL_S was set: only then does a status hash that existed with its own expiry (a tier's)
        get STATUS_TTL_S instead."""
        return "status_ttl_s" in self.model_fields_set

    @property
    def native_bf16(self) -> bool | None:
        """CPU_NATIVE_BF16 as a bool, or None to read the CPU's flags."""
        return None if self.cpu_native_bf16 == "auto" else self.cpu_native_bf16 == "yes"

    @property
    def allowed_models(self) -> frozenset[str]:
        """The models a job may ask for; the default model is always allowed."""
        return frozenset((self.demucs_model, *self.demucs_models))

    @property
    def allowed_input_buckets(self) -> frozenset[str]:
        """The buckets a message may name; INPUT_BUCKET is always one."""
        return frozenset((self.input_bucket, *self.input_buckets))

    @property
    def redis_connection_url(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        if self.redis_password is not None:
            password = quote(self.redis_password.get_secret_value(), safe="")
            return f"redis://:{password}@{self.redis_host}:{self.redis_port}/0"
        return f"redis://{self.redis_host}:{self.redis_port}/0"

    @property
    def s3_endpoint(self) -> str:
        """host:port of the object store, as the minio client wants it."""
        if self.minio_endpoint:
            parts = urlsplit(self.minio_endpoint if "//" in self.minio_endpoint else f"//{self.minio_endpoint}")
            return parts.netloc
        return f"{self.minio_host}:{self.minio_port}"

    @property
    def s3_secure(self) -> bool:
        if self.minio_endpoint and self.minio_endpoint.startswith("https://"):
            return True
        return self.minio_secure


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        problems = []
        for error in err.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
