"""The one place Redis and S3 clients are built, with one timeout and retry policy for each.

Redis: every call times out after REDIS_TIMEOUT_S and is retried 3 times with capped exponential backoff on
connection errors and timeouts. S3: connect within 5 s, read within S3_TIMEOUT_S, and retry 5xx answers and
broken connections with backoff (see `S3_RETRIES`), so a store that is restarting is waited for, not failed.
"""

from __future__ import annotations

import redis
import urllib3
from minio import Minio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from function.config import Settings
from function.errors import ConfigError

REDIS_RETRIES = 3
# urllib3 retries of one S3 request: 5xx answers and connection errors. Sleeps of 0, 1, 2, 4, 4, 4 s (0.5 s
# doubling, capped at 4 s) give a restarting store about 15 s before a request fails (then the job is requeued,
# not lost). A SeaweedFS that has just restarted answers 500 ("volume not found") to object reads for up to 4.3 s
# after its S3 API is back (measured, docs/reliability.md), so the budget is over three times that window.
S3_RETRIES = 6
S3_BACKOFF_S = 0.5
S3_BACKOFF_MAX_S = 4.0
# Up to this much random time is added to each sleep, so a fleet of pods does not retry in lockstep.
S3_BACKOFF_JITTER_S = 0.5
S3_CONNECT_TIMEOUT_S = 5.0


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client whose calls time out and retry a few times on connection errors."""
    return redis.Redis.from_url(
        settings.redis_connection_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), REDIS_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def s3_credentials(settings: Settings) -> tuple[str, str]:
    """MINIO_ACCESS_KEY and MINIO_SECRET_KEY; there is no default pair, so a deployment that forgot its Secret
    stops at start with the variables' names instead of trying a well-known password."""
    missing = [
        name
        for name, value in (
            ("MINIO_ACCESS_KEY", settings.minio_access_key),
            ("MINIO_SECRET_KEY", settings.minio_secret_key),
        )
        if value is None
    ]
    if settings.minio_access_key is None or settings.minio_secret_key is None:
        raise ConfigError(
            f"invalid configuration: {' and '.join(missing)} must be set (the object store's "
            "credentials have no default)"
        )
    return settings.minio_access_key.get_secret_value(), settings.minio_secret_key.get_secret_value()


def s3_client(settings: Settings) -> Minio:
    """A minio client whose every call is bounded in time and retried on 5xx and dropped connections."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=S3_CONNECT_TIMEOUT_S, read=settings.s3_timeout_s),
        # allowed_methods=None: 5xx answers to POST (multipart create and complete, used for stems over 5 MiB) are
        # retried too, as the AWS SDKs retry every S3 operation; urllib3's default leaves POST out.
        retries=urllib3.Retry(
            total=S3_RETRIES,
            backoff_factor=S3_BACKOFF_S,
            backoff_max=S3_BACKOFF_MAX_S,
            backoff_jitter=S3_BACKOFF_JITTER_S,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=None,
            raise_on_status=False,
        ),
        maxsize=8,
    )
    access_key, secret_key = s3_credentials(settings)
    return Minio(
        settings.s3_endpoint,
        access_key=access_key,
        secret_key=secret_key,
        secure=settings.s3_secure,
        region=settings.minio_region,
        http_client=http,
    )
