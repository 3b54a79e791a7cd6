"""The result cache (function/cache.py) against a real Redis, a real S3 and the tiny DEMUCS model: hit, miss,
stale entries, the bounded index, every element of the key, single flight (waiting, the wait bound, a dead
owner's lock taken over, 8 identical jobs on 4 runner processes) and the seeded, repeatable separation."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from demucs.api import Separator
from support import REPO_ROOT, runner_env, wait_for

from function import keys, separation
from function.cache import ResultCache
from function.cache_key import KeyParts, key_parts, model_fingerprint
from function.config import load_settings
from function.core import Worker
from function.errors import ConfigError
from function.messages import event_from_message, job_from_event
from function.status import EventLog
from function.storage import ObjectStore
from workbench import sample_song
from workbench.model_repo import write_model

STEMS = {"bass", "drums", "other", "vocals"}


@pytest.fixture(scope="module")
def clip() -> bytes:
    """A 1.5 s generated song: one chunk of the tiny model, so each separation is quick."""
    return sample_song.song_mp3(seconds=1.5, seed=3)


def run(worker: Worker, message: str) -> dict:
    return worker.handle(event_from_message(message, worker.settings.max_message_bytes))


def status(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(f"status:{job_id}").items()}


def log_lines(redis_client) -> list[str]:
    return [line.decode() for line in reversed(redis_client.lrange("logging", 0, -1))]


def separations(redis_client) -> list[str]:
    """The jobs that really separated, from their `separating N s of audio` log lines."""
    return [
        line.split("job ", 1)[1].split(":", 1)[0]
        for line in log_lines(redis_client)
        if ": separating " in line and " s of audio with " in line
    ]


def cache_keys(redis_client) -> list[bytes]:
    return redis_client.keys(f"{keys.RESULT_CACHE_PREFIX}:*")


def stem_bytes(s3, outputs: dict) -> dict[str, bytes]:
    return {stem: s3.get_object(where["bucket"], where["key"]).read() for stem, where in outputs.items()}


# ----- hashing while downloading


def test_download_hashes_the_bytes_as_it_writes_them(settings, upload, clip, s3, tmp_path):
    upload("hashme", clip)
    sha = hashlib.sha256()
    size = ObjectStore(s3).download(
        settings.input_bucket, "hashme.mp3", tmp_path / "input", settings.max_input_bytes, sha
    )
    assert size == len(clip) and (tmp_path / "input").read_bytes() == clip
    assert sha.hexdigest() == hashlib.sha256(clip).hexdigest()


def test_copy_across_buckets_only_while_the_source_is_unchanged(settings, s3):
    store = ObjectStore(s3)
    source, dest = settings.input_bucket, settings.output_bucket
    store.ensure_bucket(source)
    store.ensure_bucket(dest)
    store.put_bytes(source, "src.mp3", b"recorded stem", "audio/mpeg")
    size, etag = store.stat(source, "src.mp3")
    assert size == len(b"recorded stem") and etag
    assert store.copy(source, "src.mp3", "dst.mp3", dest_bucket=dest, match_etag=etag)
    assert s3.get_object(dest, "dst.mp3").read() == b"recorded stem"
    assert not store.copy(source, "src.mp3", "changed.mp3", dest_bucket=dest, match_etag="0" * 32)
    assert not store.copy(source, "gone.mp3", "gone.mp3", dest_bucket=dest)
    assert store.stat(source, "gone.mp3") is None and store.stat(dest, "changed.mp3") is None


# ----- hit and miss


@pytest.mark.both_cpus
def test_repeated_input_is_served_from_the_first_jobs_stems(make_settings, redis_client, upload, clip, s3, receiver):
    worker = Worker(make_settings(callback_allow_hosts="127.0.0.1"))
    upload("first", clip)
    upload("again", clip)
    first = run(worker, "first")
    assert "cached" not in status(redis_client, "first")
    again = run(worker, json.dumps({"id": "again", "callback": receiver.url}))

    assert separations(redis_client) == ["first"]
    record = status(redis_client, "again")
    assert record["state"] == "done" and record["cached"] == "1" and record["cached_from"] == "first"
    assert again["cached"] is True and again["cached_from"] == "first"
    assert {stem: where["key"] for stem, where in json.loads(record["outputs"]).items()} == {
        stem: f"again-{stem}.mp3" for stem in STEMS
    }
    assert stem_bytes(s3, again["stems"]) == stem_bytes(s3, first["stems"])
    hit_lines = [line for line in log_lines(redis_client) if "from the result cache" in line]
    assert len(hit_lines) == 1 and "job again: done in" in hit_lines[0] and "as job first" in hit_lines[0]
    (request,) = receiver.requests
    assert request["json"]["cached"] is True and request["json"]["cached_from"] == "first"


def test_a_hit_ends_like_a_separation_same_webhook_body_and_status_fields(
    make_settings, redis_client, upload, clip, receiver
):
    """A cache hit is a way to produce stems, not a second way to finish: the webhook body has the same keys as a
    fresh run's, and the status hash the same fields, plus only the hit's provenance."""
    worker = Worker(make_settings(callback_allow_hosts="127.0.0.1"))
    upload("fresh", clip)
    upload("copied", clip)
    run(worker, json.dumps({"id": "fresh", "callback": receiver.url}))
    run(worker, json.dumps({"id": "copied", "callback": receiver.url}))
    assert separations(redis_client) == ["fresh"]
    fresh, copied = (request["json"] for request in receiver.requests)
    assert set(copied) == set(fresh)
    assert (fresh["cached"], fresh["cached_from"], copied["cached"], copied["cached_from"]) == (
        False,
        None,
        True,
        "fresh",
    )
    same = ("state", "model", "model_requested", "format", "device", "precision", "audio_seconds")
    assert {name: copied[name] for name in same} == {name: fresh[name] for name in same}

    def fields(job_id: str) -> set[str]:  # every field but the per-state timestamps, which follow the path taken
        return {name for name in status(redis_client, job_id) if not name.endswith("_at")}

    assert fields("copied") == fields("fresh") | {"cached", "cached_from"}
    assert status(redis_client, "copied")["precision"] == status(redis_client, "fresh")["precision"]


def test_cache_off_separates_every_time_and_writes_no_cache_key(make_settings, redis_client, upload, clip):
    worker = Worker(make_settings(result_cache=False))
    upload("off1", clip)
    upload("off2", clip)
    run(worker, "off1")
    run(worker, "off2")
    assert separations(redis_client) == ["off1", "off2"]
    assert cache_keys(redis_client) == [] and "cached" not in status(redis_client, "off2")


def test_a_fresh_separation_of_a_cached_job_id_clears_the_hit_fields(make_settings, redis_client, upload, clip):
    on = Worker(make_settings())
    upload("orig", clip)
    upload("rerun", clip)
    run(on, "orig")
    run(on, "rerun")
    assert status(redis_client, "rerun")["cached"] == "1"
    # The same id separated again (the cache off, as after a privacy opt-out): nothing of the hit survives.
    off = Worker(make_settings(result_cache=False))
    run(off, "rerun")
    record = status(redis_client, "rerun")
    assert record["state"] == "done" and separations(redis_client) == ["orig", "rerun"]
    assert not {"cached", "cached_from", "waiting_for"} & set(record)
    assert record["precision"] in ("fp32", "bf16") and float(record["audio_seconds"]) > 0


def test_gone_or_changed_stem_drops_the_entry_and_the_job_separates(worker, upload, clip, s3, redis_client):
    for job_id in ("src1", "src2", "src3", "src4"):
        upload(job_id, clip)
    bucket = worker.settings.output_bucket
    run(worker, "src1")
    s3.remove_object(bucket, "src1-vocals.mp3")  # what a REST tier's "remove" endpoint does
    run(worker, "src2")
    assert separations(redis_client) == ["src1", "src2"] and "cached" not in status(redis_client, "src2")
    assert any(
        "dropped the result cache entry of job src1" in line and "src1-vocals.mp3 is gone" in line
        for line in log_lines(redis_client)
    )
    # The new entry points at src2's stems; one of them rewritten with other bytes is caught by size/ETag.
    replacement = b"not the stem that was recorded"
    s3.put_object(bucket, "src2-drums.mp3", io.BytesIO(replacement), len(replacement))
    run(worker, "src3")
    assert separations(redis_client) == ["src1", "src2", "src3"]
    assert any("entry of job src2" in line and "src2-drums.mp3 changed" in line for line in log_lines(redis_client))
    run(worker, "src4")
    assert separations(redis_client) == ["src1", "src2", "src3"]
    assert status(redis_client, "src4")["cached_from"] == "src3"


# ----- the key


ALTERNATIVES = {
    "input_sha256": "f" * 64,
    "model": "tiny2",
    "weights": "package:other",
    "device": "cuda",
    "shifts": 2,
    "overlap": 0.5,
    "segment": 2.0,
    "precision": "bf16",
    "format": "wav",
    "mp3_bitrate": 192,
    "mp3_preset": 7,
    "stems": ("vocals",),
    "two_stems": "vocals",
    "software": "demucs=9",
    "version": 99,
}


def test_every_key_part_changes_the_key():
    base = KeyParts(
        input_sha256="0" * 64,
        model="tiny",
        weights="package:abc",
        device="cpu",
        shifts=1,
        overlap=0.25,
        segment=None,
        precision="fp32",
        format="mp3",
        mp3_bitrate=320,
        mp3_preset=2,
        stems=None,
        two_stems=None,
        software="demucs=4.1.0",
    )
    assert set(ALTERNATIVES) == {field.name for field in dataclasses.fields(KeyParts)}, "a key part without a test"
    seen = {base.cache_key()}
    for name, value in ALTERNATIVES.items():
        changed = dataclasses.replace(base, **{name: value}).cache_key()
        assert changed not in seen, f"changing {name} does not change the key"
        seen.add(changed)
    assert dataclasses.replace(base).cache_key() == base.cache_key()


def test_names_and_irrelevant_settings_stay_out_of_the_key(make_settings, redis_client):
    settings = make_settings()
    digest = "a" * 64

    def key(settings, **job):
        event = event_from_message(json.dumps({"id": "k1", **job}), 65536)
        precision = separation.job_precision(settings, "cpu")
        return key_parts(job_from_event(event, settings), settings, digest, "cpu", precision).cache_key()

    renamed = make_settings(stem_aliases="vocals:voice", output_key="{model}/{id}/{stem}.{ext}", output_bucket="xyz")
    assert key(settings) == key(renamed)
    assert key(settings, stems=["vocals", "bass"]) == key(settings, stems=["bass", "vocals"])
    assert key(make_settings(mp3_bitrate=192), format="wav") == key(settings, format="wav")
    assert key(make_settings(mp3_bitrate=192)) != key(settings)
    event = event_from_message("k1", 65536)
    job = job_from_event(event, settings)
    assert key_parts(job, settings, digest, "cuda:0", "fp32") == key_parts(job, settings, digest, "cuda:1", "fp32")


def test_model_fingerprints_follow_the_weights(model_repo, tmp_path):
    tiny, tiny2 = model_fingerprint("tiny", model_repo), model_fingerprint("tiny2", model_repo)
    assert tiny and tiny2 and tiny != tiny2
    package = hashlib.sha256((model_repo / "7e57a11d.th").read_bytes()).hexdigest()
    assert model_fingerprint("7e57a11d", model_repo) == f"package:{package}"
    other = tmp_path / "repo"
    write_model(other, "tiny", seed=5)  # same name and signature, other weights
    assert model_fingerprint("tiny", other) not in (None, tiny)
    assert model_fingerprint("nosuchmodel", model_repo) is None
    pretrained = model_fingerprint("htdemucs", None)
    assert pretrained is not None and "955717e8-8726e21a.th" in pretrained
    assert model_fingerprint("hf://someone/model", None) is None


@pytest.mark.both_cpus
def test_each_setting_and_job_field_that_shapes_the_stems_misses(
    make_settings, redis_client, upload, clip, s3, tmp_path
):
    """One separation records the entry; then every element of the key is changed in turn, and the Worker's own
    lookup (`cache.begin`, as handle calls it) misses; changing only names hits, and copies under the new names."""
    base = {"demucs_models": "tiny2", "demucs_precision": "fp32"}  # `auto` resolves to bf16 on CPUs with native bf16
    settings = make_settings(**base)
    upload("base", clip)
    run(Worker(settings), "base")
    digest = hashlib.sha256(clip).hexdigest()
    other_repo = tmp_path / "repo"
    write_model(other_repo, "tiny", seed=5)
    other_bucket = f"{settings.output_bucket}-x"
    cases = [
        ("same everything", {}, {}, digest, True),
        ("input bytes", {}, {}, hashlib.sha256(clip + b"\0").hexdigest(), False),
        ("model", {}, {"model": "tiny2"}, digest, False),
        ("weights", {"demucs_repo": str(other_repo)}, {}, digest, False),
        ("shifts", {"demucs_shifts": 1}, {}, digest, False),
        ("overlap", {"demucs_overlap": 0.5}, {}, digest, False),
        ("segment", {"demucs_segment": 2.0}, {}, digest, False),
        ("precision", {"demucs_precision": "bf16"}, {}, digest, False),
        ("auto on a native-bf16 CPU", {"demucs_precision": "auto", "cpu_native_bf16": "yes"}, {}, digest, False),
        ("auto on a CPU without bf16", {"demucs_precision": "auto", "cpu_native_bf16": "no"}, {}, digest, True),
        ("format", {}, {"format": "wav"}, digest, False),
        ("mp3 bitrate", {"mp3_bitrate": 192}, {}, digest, False),
        ("mp3 preset", {"mp3_preset": 5}, {}, digest, False),
        ("stems", {}, {"stems": ["vocals", "bass"]}, digest, False),
        ("two_stems", {}, {"two_stems": "vocals"}, digest, False),
        ("stem aliases", {"stem_aliases": "vocals:voice"}, {}, digest, True),
        ("output key", {"output_key": "{model}/{id}/{stem}.{ext}"}, {}, digest, True),
        ("output bucket", {"output_bucket": other_bucket}, {}, digest, True),
    ]
    try:
        for label, overrides, fields, input_sha256, hit_expected in cases:
            case_settings = make_settings(**{**base, **overrides})
            worker = Worker(case_settings)
            job_id = "case-" + label.replace(" ", "-")
            job = job_from_event(event_from_message(json.dumps({"id": job_id, **fields}), 65536), case_settings)
            precision = separation.job_precision(case_settings, "cpu")
            with worker.cache.begin(job, input_sha256, "cpu", precision, worker.status_for(job_id)) as flight:
                expected = "a hit" if hit_expected else "a miss"
                assert (flight.hit is not None) == hit_expected, f"changing {label}: expected {expected}"
                if flight.hit is not None:
                    assert flight.hit.entry.job_id == "base"
                    for where in flight.hit.outputs.values():
                        assert s3.stat_object(where["bucket"], where["key"]).size > 0
        assert s3.stat_object(other_bucket, "case-output-bucket-vocals.mp3").size > 0
        assert s3.stat_object(settings.output_bucket, "case-stem-aliases-voice.mp3").size > 0
        assert s3.stat_object(settings.output_bucket, "tiny/case-output-key/drums.mp3").size > 0
        assert separations(redis_client) == ["base"]
    finally:
        for item in s3.list_objects(other_bucket, recursive=True):
            s3.remove_object(other_bucket, item.object_name)
        if s3.bucket_exists(other_bucket):
            s3.remove_bucket(other_bucket)


# ----- the index in Redis


def test_index_is_bounded_trims_the_least_recently_used_and_entries_expire(make_settings, redis_client, s3):
    settings = make_settings(result_cache_max_entries=2, result_cache_ttl_s=600)
    store = ObjectStore(s3)
    store.ensure_bucket(settings.output_bucket)
    cache = ResultCache(redis_client, store, EventLog(redis_client, "logging"), settings)
    for n in range(4):
        store.put_bytes(settings.output_bucket, f"job{n}-vocals.mp3", f"stem {n}".encode(), "audio/mpeg")

    def record(n: int) -> None:
        outputs = {"vocals": {"bucket": settings.output_bucket, "key": f"job{n}-vocals.mp3"}}
        assert cache.record(f"key{n}", f"job{n}", outputs, 1.5, "cpu") is not None

    record(0)
    record(1)
    entry = cache.lookup("key0")
    assert entry.job_id == "job0" and entry.stems["vocals"].size == len(b"stem 0") and entry.stems["vocals"].etag
    assert 590 <= redis_client.ttl(keys.cache_entry_key("key0")) <= 600
    assert 590 <= redis_client.ttl(keys.cache_index_key()) <= 600
    # A hit on key0 makes key1 the least recently used: the third record trims key1.
    job = job_from_event(event_from_message("reader", 65536), settings)
    assert cache._hit(job, "key0") is not None
    record(2)
    assert cache.entries() == 2
    assert cache.lookup("key1") is None and redis_client.exists(keys.cache_entry_key("key1")) == 0
    assert cache.lookup("key0") is not None and cache.lookup("key2") is not None
    assert any("trimmed 1 oldest entry" in line for line in log_lines(redis_client))
    # An entry that expired leaves the index at the next record.
    redis_client.pexpire(keys.cache_entry_key("key0"), 1)
    wait_for(lambda: redis_client.exists(keys.cache_entry_key("key0")) == 0, 10, "key0 to expire")
    redis_client.zadd(keys.cache_index_key(), {"key0": 1})  # as old as its TTL says
    record(3)
    assert sorted(redis_client.zrange(keys.cache_index_key(), 0, -1)) == [b"key2", b"key3"]


def test_malformed_entry_is_dropped(make_settings, redis_client, s3):
    settings = make_settings()
    cache = ResultCache(redis_client, ObjectStore(s3), EventLog(redis_client, "logging"), settings)
    redis_client.set(keys.cache_entry_key("bad"), b"{not json")
    assert cache.lookup("bad") is None and redis_client.exists(keys.cache_entry_key("bad")) == 0


# ----- single flight


def key_of(settings, job_id: str, data: bytes) -> str:
    job = job_from_event(event_from_message(job_id, 65536), settings)
    precision = separation.job_precision(settings, "cpu")
    return key_parts(job, settings, hashlib.sha256(data).hexdigest(), "cpu", precision).cache_key()


def test_waiter_separates_itself_once_the_wait_bound_passes(make_settings, redis_client, upload, clip):
    settings = make_settings(result_cache_wait_s=0.5)
    upload("patient", clip)
    lock = keys.cache_lock_key(key_of(settings, "patient", clip))
    redis_client.set(lock, "sometoken slowjob", px=120_000)  # a live owner that will not finish in time
    run(Worker(settings), "patient")
    lines = log_lines(redis_client)
    assert any("job patient: waiting for job slowjob" in line for line in lines)
    assert any("job patient: waited" in line and "RESULT_CACHE_WAIT_S=0.5" in line for line in lines)
    assert separations(redis_client) == ["patient"] and status(redis_client, "patient")["waiting_for"] == "slowjob"
    assert redis_client.get(lock) == b"sometoken slowjob"  # the owner's lock is not ours to release
    assert Worker(settings).cache.lookup(key_of(settings, "patient", clip)).job_id == "patient"


def test_a_retry_takes_over_the_lock_of_its_own_earlier_attempt(make_settings, redis_client, upload, clip):
    settings = make_settings()
    upload("retried", clip)
    lock = keys.cache_lock_key(key_of(settings, "retried", clip))
    redis_client.set(lock, "deadtoken retried", px=120_000)  # left by the attempt whose pod died
    run(Worker(settings), "retried")
    lines = log_lines(redis_client)
    assert any("job retried: took over key" in line and "earlier attempt of this job" in line for line in lines)
    assert not any("waiting for" in line for line in lines)
    assert separations(redis_client) == ["retried"] and redis_client.exists(lock) == 0


STALLED_OWNER = """
import sys, time
from function import separation
from function.config import load_settings
from function.core import Worker
from function.errors import ConfigError
from function.messages import event_from_message

def stall(*args, **kwargs):
    time.sleep(3600)  # a pod that dies mid-separation: the test kills it here

separation.separate_to_files = stall
Worker(load_settings()).handle(event_from_message(sys.argv[1], 65536))
"""


def test_a_dead_owners_lock_expires_and_a_waiter_takes_over(make_settings, redis_client, upload, clip):
    settings = make_settings(result_cache_lock_s=1.0, result_cache_wait_s=120)
    upload("owner", clip)
    upload("waiter", clip)
    owner = subprocess.Popen(
        [sys.executable, "-c", STALLED_OWNER, "owner"],
        cwd=REPO_ROOT,
        env=runner_env(settings, RESULT_CACHE_LOCK_S="1"),
        stdout=subprocess.DEVNULL,
    )
    lock = keys.cache_lock_key(key_of(settings, "owner", clip))
    try:
        wait_for(lambda: status(redis_client, "owner").get("state") == "separating", 120, "the owner to separate")
        value = redis_client.get(lock)
        assert value is not None and value.endswith(b" owner")
        time.sleep(3)  # three lock TTLs: only the owner's renewal keeps the lock
        assert redis_client.get(lock) == value
        owner.kill()
        owner.wait(30)
        result = run(Worker(settings), "waiter")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(30)
    lines = log_lines(redis_client)
    assert any("job waiter: waiting for job owner" in line for line in lines)
    assert any("job waiter: took over key" in line and "job owner released or lost its lock" in line for line in lines)
    assert result["state"] == "done" and result["cached"] is False and result["cached_from"] is None
    assert separations(redis_client) == ["owner", "waiter"]  # the owner's line was logged before it died
    assert redis_client.exists(lock) == 0


@pytest.mark.slow
def test_eight_identical_jobs_on_four_runner_processes_separate_once(
    settings, redis_client, upload, clip, s3, tmp_path
):
    ids = [f"same{n}" for n in range(8)]
    for job_id in ids:
        upload(job_id, clip)
    env = runner_env(settings, MAX_MESSAGES="8", CLAIM_WAIT_S="300", DEMUCS_THREADS="1")
    logs = [(tmp_path / f"runner{n}.log").open("wb") for n in range(4)]
    runners = [
        subprocess.Popen(
            [sys.executable, "-m", "function.runner"], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        for log in logs
    ]
    try:
        # All four block on the empty queue first, so the eight messages meet four runners at once.
        wait_for(
            lambda: sum(c["cmd"] == "blmove" for c in redis_client.client_list()) == 4,
            240,
            "four runners blocked on the queue",
        )
        redis_client.rpush("toWorker", *ids)
        wait_for(
            lambda: all(status(redis_client, job_id).get("state") == "done" for job_id in ids),
            300,
            "all eight jobs done",
        )
    finally:
        for runner in runners:
            runner.send_signal(signal.SIGTERM)
        for runner in runners:
            try:
                runner.wait(60)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait(30)
        for log in logs:
            log.close()
    separated = separations(redis_client)
    assert len(separated) == 1, separated
    records = {job_id: status(redis_client, job_id) for job_id in ids}
    cached = [job_id for job_id, record in records.items() if record.get("cached") == "1"]
    assert sorted(cached) == sorted(set(ids) - set(separated))
    assert {records[job_id]["cached_from"] for job_id in cached} == set(separated)
    for record in records.values():
        for where in json.loads(record["outputs"]).values():
            assert s3.stat_object(where["bucket"], where["key"]).size > 0
    print(
        f"separated by {separated[0]}; waiting lines: "
        f"{sum('waiting for job' in line for line in log_lines(redis_client))}"
    )


# ----- determinism


@pytest.mark.parametrize("shifts", [1, 2])  # 1 streams (streaming.py), 2 runs demucs' apply_model
def test_seeded_separation_is_demucs_after_random_seed_and_leaves_random_alone(model_repo, tmp_path, shifts):
    separator = Separator(model="tiny", repo=model_repo, device="cpu", shifts=shifts, progress=False)
    wav = torch.from_numpy(sample_song.generate(2.0, seed=9))
    seed = separation.seed_of("0123456789abcdef" + "0" * 48)
    random.seed(seed)
    with torch.inference_mode():
        _, demucs_stems = separator.separate_tensor(wav)
    random.seed(5)
    before = random.getstate()
    files = separation.separate_to_files(separator, wav, shifts, lambda p: None, tmp_path, seed=seed)
    assert random.getstate() == before
    other = separation.separate(separator, wav, shifts, lambda p: None, seed=seed + 1)
    for name, stem in demucs_stems.items():
        assert torch.equal(torch.cat(list(files[name].chunks()), -1), stem), name
    assert any(not torch.equal(other[name], stem) for name, stem in demucs_stems.items()), "the seed changes nothing"


def test_same_input_gives_byte_identical_stems_with_random_shifts(make_settings, redis_client, upload, clip, s3):
    worker = Worker(make_settings(result_cache=False, demucs_shifts=1))
    upload("det1", clip)
    upload("det2", clip)
    first, second = run(worker, "det1"), run(worker, "det2")
    assert separations(redis_client) == ["det1", "det2"]
    assert stem_bytes(s3, first["stems"]) == stem_bytes(s3, second["stems"])


def test_a_rerun_of_the_same_job_is_served_from_its_own_entry(worker, upload, clip, s3, redis_client):
    upload("rerun", clip)
    first = stem_bytes(s3, run(worker, "rerun")["stems"])
    again = run(worker, "rerun")  # e.g. a replay: the recorded objects are its own keys, nothing to copy
    record = status(redis_client, "rerun")
    assert record["cached"] == "1" and record["cached_from"] == "rerun" and again["cached"] is True
    assert separations(redis_client) == ["rerun"] and stem_bytes(s3, again["stems"]) == first


# ----- settings


def test_settings_read_on_off_and_name_a_bad_value(monkeypatch):
    defaults = load_settings()
    assert defaults.result_cache is True and defaults.result_cache_ttl_s == 30 * 24 * 3600
    assert (defaults.result_cache_max_entries, defaults.result_cache_wait_s, defaults.result_cache_lock_s) == (
        100_000,
        600.0,
        30.0,
    )
    monkeypatch.setenv("RESULT_CACHE", "off")
    assert load_settings().result_cache is False
    monkeypatch.setenv("RESULT_CACHE", "on")
    assert load_settings().result_cache is True
    monkeypatch.setenv("RESULT_CACHE_MAX_ENTRIES", "0")
    with pytest.raises(ConfigError, match="RESULT_CACHE_MAX_ENTRIES"):
        load_settings()
