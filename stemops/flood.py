"""Send jobs the way the REST tier does (upload the song as `{id}.mp3`, mark the job queued, push its message),
many at once for a load test, and follow them to the end. `stemworker flood` and scripts/send-request.py
share it."""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, TextIO

import lameenc
import numpy as np
import redis
import sphn

from function.clients import s3_client
from function.config import Settings
from function.keys import status_key
from function.messages import event_json, new_event
from function.status import State, StatusRecord
from function.storage import ObjectStore, input_key

FORMS = ("bare", "json", "cloudevent")
FINAL = {State.DONE.value, State.FAILED.value}
POLL_S = 0.25


@dataclass(frozen=True)
class JobOptions:
    """What each message asks for besides its id (None: the worker's default)."""

    form: str = "json"
    model: str | None = None
    callback: str | None = None
    stems: tuple[str, ...] | None = None
    two_stems: str | None = None
    format: str | None = None

    def extras(self) -> list[str]:
        return [name for name in ("model", "callback", "stems", "two_stems", "format") if getattr(self, name)]


def job_body(job_id: str, options: JobOptions) -> dict[str, Any]:
    body: dict[str, Any] = {"songhash": job_id}
    if options.model:
        body["model"] = options.model
    if options.callback:
        body["callback"] = options.callback
    if options.stems:
        body["stems"] = list(options.stems)
    if options.two_stems:
        body["two_stems"] = options.two_stems
    if options.format:
        body["format"] = options.format
    return body


def message_for(job_id: str, options: JobOptions) -> str:
    """The queue message of one job in the chosen form."""
    if options.form == "bare":
        return job_id
    if options.form == "json":
        return json.dumps(job_body(job_id, options))
    return event_json(new_event(job_body(job_id, options)))


def job_ids(base: str, count: int) -> list[str]:
    """`base` alone, or `base-0` .. `base-<count-1>`."""
    return [base] if count == 1 else [f"{base}-{n}" for n in range(count)]


def _mp3(wav: np.ndarray, samplerate: int) -> bytes:
    """[channels, samples] float32 in [-1, 1] as a 320 kb/s MP3."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(320)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(wav.shape[0])
    encoder.set_quality(2)
    encoder.silence()
    pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2").T.tobytes()
    return bytes(encoder.encode(pcm) + encoder.flush())


def distinct_copies(song: bytes, count: int, nonce: int) -> list[bytes]:
    """`count` MP3s of `song` whose bytes all differ: each is the decoded song plus a +-1 LSB (16-bit) dither
    seeded by (`nonce`, its index), re-encoded at 320 kb/s. They sound the same and cost the same to separate,
    but each has its own SHA-256, so the result cache serves none of them."""
    with tempfile.NamedTemporaryFile(suffix=".audio") as source:
        source.write(song)
        source.flush()
        wav, rate = sphn.read(source.name)
    copies: list[bytes] = []
    seen = {hashlib.sha256(song).digest()}
    for index in range(count):
        for attempt in range(8):  # a dither that quantises away entirely is all but impossible; bounded anyway
            rng = np.random.default_rng([nonce, index, attempt])
            lsb = rng.integers(-1, 2, size=wav.shape).astype(np.float32) / 32767
            data = _mp3(wav + lsb, int(rate))
            if hashlib.sha256(data).digest() not in seen:
                break
        seen.add(hashlib.sha256(data).digest())
        copies.append(data)
    return copies


def upload(settings: Settings, song: bytes, ids: list[str], distinct: bool = False) -> None:
    """Put the song under the first id's key, then copy it server-side to every other id's key; with `distinct`,
    a different dithered copy under every id's key instead (so a flood measures separations, not cache hits)."""
    store = ObjectStore(s3_client(settings))

    def bucket_of(job_id: str) -> str:  # INPUT_BUCKET may be a bucket per song ({id})
        bucket = settings.input_bucket.replace("{id}", job_id)
        store.ensure_bucket(bucket)
        return bucket

    if distinct:
        for job_id, data in zip(ids, distinct_copies(song, len(ids), secrets.randbits(64)), strict=True):
            store.put_bytes(bucket_of(job_id), input_key(settings.input_key, job_id), data, "audio/mpeg")
        return
    first_bucket, first = bucket_of(ids[0]), input_key(settings.input_key, ids[0])
    store.put_bytes(first_bucket, first, song, "audio/mpeg")
    for job_id in ids[1:]:
        store.copy(first_bucket, first, input_key(settings.input_key, job_id), dest_bucket=bucket_of(job_id))


def push(client: redis.Redis, settings: Settings, ids: list[str], messages: list[str]) -> None:
    """Mark each job queued, then push every message in one round trip (at the tail the runner pops last)."""
    for job_id in ids:
        StatusRecord(client, status_key(settings.status_key, job_id), settings.status_ttl_s).start()
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            if settings.queue_pop == "left":
                pipe.rpush(settings.queue_key, message)
            else:
                pipe.lpush(settings.queue_key, message)
        pipe.execute()


@dataclass(frozen=True)
class FollowResult:
    done: int
    failed: int
    unfinished: int
    seconds: float


def follow(
    client: redis.Redis, settings: Settings, ids: list[str], timeout_s: float, out: TextIO | None = None
) -> FollowResult:
    """Print each state change of the jobs to `out` (stderr) until all are done or failed, or the deadline passes."""
    out = out or sys.stderr
    started = time.monotonic()
    seen: dict[str, tuple[str, str]] = {}
    states: list[str] = []
    while True:
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(status_key(settings.status_key, job_id), "state", "progress", "error")
            values = pipe.execute()
        for job_id, (state, progress, error) in zip(ids, values, strict=True):
            now = ((state or b"unknown").decode(), (progress or b"").decode())
            if seen.get(job_id) != now:
                seen[job_id] = now
                detail = (error or b"").decode() if now[0] == State.FAILED.value else f"{now[1]}%"
                print(f"{time.monotonic() - started:7.2f} s  {job_id}: {now[0]} {detail}", file=out, flush=True)
        states = [state for state, _ in seen.values()]
        if all(state in FINAL for state in states) or time.monotonic() - started > timeout_s:
            break
        time.sleep(POLL_S)
    done, failed = states.count(State.DONE.value), states.count(State.FAILED.value)
    result = FollowResult(done, failed, len(ids) - done - failed, time.monotonic() - started)
    print(
        f"{result.done} done, {result.failed} failed, {result.unfinished} unfinished after {result.seconds:.2f} s",
        file=out,
        flush=True,
    )
    return result
