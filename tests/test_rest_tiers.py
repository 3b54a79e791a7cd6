"""What real REST tiers send, end to end: a tier emulator (tests/rest_tier.py) uploads and pushes the way one tier
does, the job runner (`Runner(settings).run_once(0)`) runs it against the real Redis and S3 with a tiny model, and
the tier reads back what its API would. Each variant works with settings only (docs/rest-tiers.md)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import redis
from rest_tier import Tier, TierClient

from function.runner import Outcome, Runner
from function.status import OWN_FIELDS, State
from workbench import sample_song


@pytest.fixture(scope="module")
def short_song() -> bytes:
    """A 1 s song: every variant here is about the wiring, not the audio."""
    return sample_song.song_mp3(seconds=1.0)


def tier(settings, redis_client, s3, **shape) -> TierClient:
    return TierClient(Tier(name=shape.pop("name", "tier"), **shape), settings, redis_client, s3)


def log_lines(redis_client, settings) -> list[str]:
    return [line.decode() for line in reversed(redis_client.lrange(settings.log_key, 0, -1))]


def dead_letters(redis_client, settings) -> list[dict]:
    return [json.loads(raw) for raw in redis_client.lrange(f"{settings.queue_key}:dead", 0, -1)]


def run(settings, **kwargs):
    return Runner(settings, **kwargs).run_once(0)


# What differs between two runs of one job by nature: when it ran, how long it took, which run it was, and the
# per-stage stamps of stages a cache hit skips.
RUN_FIELDS = {"received_at", "seconds", "event_id", "attempts", "attempt", "cached", "cached_from"}


def comparable(values: dict, job_id: str) -> dict:
    """`values` (a status hash or a callback body) with the job's id replaced by `{id}`, minus RUN_FIELDS; the
    hash's `outputs` and `published` are parsed (the order of its stems is no part of what a tier reads)."""
    if not isinstance(values, dict):
        return values
    parsed = {name: json.loads(value) if name in ("outputs", "published") else value for name, value in values.items()}
    return {
        name: json.loads(json.dumps(value).replace(job_id, "{id}"))
        for name, value in parsed.items()
        if name not in RUN_FIELDS and not name.endswith("_at")
    }


def objects(s3, buckets) -> set[tuple[str, str]]:
    return {
        (bucket, item.object_name)
        for bucket in buckets
        if s3.bucket_exists(bucket)
        for item in s3.list_objects(bucket, recursive=True)
    }


def fresh_then_cached(
    settings, client: TierClient, song: bytes, job_id: str, receiver=None, runner: Runner | None = None
) -> str:
    """Run `job_id` (a separation), then the same song under a second id (a result-cache hit), and assert the tier
    sees the same of both: the same object names, status fields and callback body, each with its own id. Returns
    the second id."""
    hit_id = f"hit-{job_id}"
    buckets = {client.output_bucket(job_id), client.output_bucket(hit_id)}
    client.submit(job_id, song)
    assert (runner.run_once(0) if runner else run(settings)).outcome == Outcome.DONE
    fresh_objects = objects(client.s3, buckets)
    fresh_record = client.record(job_id)
    fresh_body = receiver.requests[-1]["json"] if receiver is not None else None
    calls = len(receiver.requests) if receiver is not None else 0
    client.submit(hit_id, song)
    assert (runner.run_once(0) if runner else run(settings)).outcome == Outcome.DONE
    hit_record = client.record(hit_id)
    assert (hit_record.get("cached"), hit_record.get("cached_from")) == ("1", job_id)
    assert "cached" not in fresh_record
    hit_objects = objects(client.s3, buckets) - fresh_objects
    fresh_names = {
        (bucket.replace(job_id, "{id}"), key.replace(job_id, "{id}"))
        for bucket, key in fresh_objects
        if job_id in bucket + key and hit_id not in bucket + key
    }
    assert {(bucket.replace(hit_id, "{id}"), key.replace(hit_id, "{id}")) for bucket, key in hit_objects} == fresh_names
    assert comparable(hit_record, hit_id) == comparable(fresh_record, job_id)
    assert set(hit_record) - {"cached", "cached_from"} == set(fresh_record) - {"separating_at", "uploading_at"}
    if receiver is not None:
        assert len(receiver.requests) == calls + 1
        hit_body = receiver.requests[-1]["json"]
        assert comparable(hit_body, hit_id) == comparable(fresh_body, job_id)
        if isinstance(hit_body, dict) and "stems" in hit_body:
            assert set(hit_body) == set(fresh_body)  # one result shape (a fresh run says cached: false)
    assert client.status(hit_id) == client.status(job_id) == "done"
    assert client.download(hit_id, "bass") == client.download(job_id, "bass")
    return hit_id


# --- push side and id shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        {"name": "lpush-bare", "push": "lpush", "id_field": None},
        {"name": "rpush-hash", "push": "rpush", "id_field": "hash"},
        {"name": "lpush-songhash", "push": "lpush", "id_field": "songhash"},
    ],
)
def test_push_side_and_id_field(make_settings, redis_client, s3, short_song, shape):
    settings = make_settings()
    client = tier(settings, redis_client, s3, **shape)
    fresh_then_cached(settings, client, short_song, "shape1")
    assert len(client.download("shape1", "vocals")) > 0


@pytest.mark.parametrize(
    ("push", "queue_pop", "first"),
    [("lpush", "right", "a"), ("lpush", "left", "b"), ("rpush", "left", "a"), ("rpush", "right", "b")],
)
def test_the_pop_side_decides_the_order_of_a_tiers_pushes(make_settings, redis_client, s3, push, queue_pop, first):
    settings = make_settings(queue_pop=queue_pop)
    client = tier(settings, redis_client, s3, push=push)
    client.submit("a", None)  # no input: each job fails at once, which is all the order needs
    client.submit("b", None)
    assert [run(settings).job_id for _ in range(2)] == [first, "b" if first == "a" else "a"]


# --- an empty or absent callback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("callback", [{}, None, "", [], {"url": None, "data": {"song": 1}}])
def test_an_empty_callback_is_no_callback(make_settings, redis_client, s3, short_song, callback):
    settings = make_settings()
    client = tier(settings, redis_client, s3, id_field="hash", fields={"callback": callback})
    hit_id = fresh_then_cached(settings, client, short_song, "nocb")
    assert dead_letters(redis_client, settings) == []
    notes = [line for line in log_lines(redis_client, settings) if "no callback" in line]
    assert len(notes) == (0 if callback is None else 2)
    assert all(".worker.info:job nocb: " in line for line in notes[:1])
    assert all(f".worker.info:job {hit_id}: " in line for line in notes[1:])


# --- model names a tier made up, or models we do not serve -------------------------------------------------------


def test_model_aliases_run_the_served_model_and_report_both_names(
    make_settings, redis_client, s3, short_song, receiver
):
    settings = make_settings(
        demucs_models="tiny2", model_aliases="default:tiny, mdx_extra_q:tiny2", callback_allow_hosts="127.0.0.1/32"
    )
    for job_id, asked, runs in (("alias1", "default", "tiny"), ("alias2", "mdx_extra_q", "tiny2")):
        client = tier(settings, redis_client, s3, fields={"model": asked, "callback": receiver.url})
        fresh_then_cached(settings, client, short_song, job_id, receiver)
        record = client.record(job_id)
        assert (record["model"], record["model_requested"]) == (runs, asked)
        body = receiver.requests[-2]["json"]
        assert (body["id"], body["model"], body["model_requested"]) == (job_id, runs, asked)
        assert any(
            f"job {job_id}: model '{asked}' runs as '{runs}' (MODEL_ALIASES)" in line
            for line in log_lines(redis_client, settings)
        )


def test_unknown_model_default_runs_the_default_model(make_settings, redis_client, s3, short_song):
    settings = make_settings(unknown_model="default")
    client = tier(settings, redis_client, s3, fields={"model": "mdx_extra_q"})
    fresh_then_cached(settings, client, short_song, "unk1")
    record = client.record("unk1")
    assert (record["state"], record["model"], record["model_requested"]) == ("done", "tiny", "mdx_extra_q")
    assert any(
        ".worker.info:job unk1: model 'mdx_extra_q' is not served; running 'tiny' (UNKNOWN_MODEL=default)" in line
        for line in log_lines(redis_client, settings)
    )


def test_unknown_model_reject_is_permanent_and_names_the_models(make_settings, redis_client, s3):
    settings = make_settings(model_aliases="default:tiny")
    client = tier(settings, redis_client, s3, fields={"model": "mdx_extra_q"})
    client.submit("unk2", None)
    assert run(settings).outcome == Outcome.DEAD
    (entry,) = dead_letters(redis_client, settings)
    assert entry["permanent"] and "'mdx_extra_q' is not allowed; allowed: ['default', 'tiny']" in entry["error"]
    assert client.status("unk2") == "failed"


# --- the input location in the message ---------------------------------------------------------------------------


def test_bucket_and_key_in_the_message(make_settings, redis_client, s3, short_song, tier_bucket):
    settings = make_settings(input_buckets=tier_bucket)
    client = tier(settings, redis_client, s3, bucket=tier_bucket, key="users/42/{id} (final mix) ✓.mp3")
    fresh_then_cached(settings, client, short_song, "where1")
    assert any(
        f"downloaded {tier_bucket}/users/42/where1 (final mix) ✓.mp3" in line
        for line in log_lines(redis_client, settings)
    )
    assert not s3.bucket_exists(settings.input_bucket)  # INPUT_BUCKET was never read


def test_object_name_is_read_as_the_key(make_settings, redis_client, s3, short_song):
    settings = make_settings()
    client = tier(settings, redis_client, s3, key="uploads/{id}/original.mp3", key_field="object_name")
    fresh_then_cached(settings, client, short_song, "objname1")
    assert any(
        f"downloaded {settings.input_bucket}/uploads/objname1/original.mp3" in line
        for line in log_lines(redis_client, settings)
    )


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        (
            {"key": "../{id}.mp3", "key_field": "object_name"},
            "object_name '../where2.mp3' must not contain a '.' or '..'",
        ),
        ({"key": "/{id}.mp3", "key_field": "object_name"}, "object_name '/where2.mp3' must not start with '/'"),
        (
            {"id_field": "songhash", "fields": {"key": "a.mp3", "object_name": "b.mp3"}},
            "key 'a.mp3' and object_name 'b.mp3' name different objects",
        ),
        ({"bucket": "not-listed", "key": "{id}.mp3"}, "bucket 'not-listed' is not an input bucket"),
        ({"key": "../{id}.mp3"}, "must not contain a '.' or '..' path segment"),
        ({"key": "/{id}.mp3"}, "must not start with '/'"),
        ({"key": "{id}\u0007.mp3"}, "contains control characters"),
        ({"key": "{id}" + "x" * 1100}, "over the 1024 an object key may have"),
    ],
)
def test_an_unsafe_input_location_is_rejected_for_good(make_settings, redis_client, s3, shape, reason):
    settings = make_settings()
    client = tier(settings, redis_client, s3, **shape)
    client.submit("where2", None)
    assert run(settings).outcome == Outcome.DEAD
    (entry,) = dead_letters(redis_client, settings)
    assert entry["permanent"] and reason in entry["error"]
    assert client.status("where2") == "failed" and reason in client.record("where2")["error"]


# --- where a tier keeps things: its list, its bucket and keys -----------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        {"queue_key": "toWorkers", "queue_pop": "right"},
        {"input_bucket": "audio-tracks", "input_key": "{id}/original.mp3", "output_key": "{id}/{stem}.{ext}"},
        {"input_bucket": "queues"},
    ],
    ids=["list-toWorkers", "audio-tracks", "bare-id-queues"],
)
def test_a_tiers_layout_by_settings(make_settings, redis_client, s3, short_song, song_buckets, layout):
    settings = make_settings(**layout)
    song_buckets.append(settings.input_bucket)
    client = tier(
        settings,
        redis_client,
        s3,
        push="lpush" if "queue_pop" in layout else "rpush",
        id_field=None if layout.get("input_bucket") == "queues" else "hash",
    )
    hit_id = fresh_then_cached(settings, client, short_song, "layout1")
    for job_id in ("layout1", hit_id):
        assert s3.stat_object(settings.input_bucket, client.input_location(job_id)[1]).size > 0
        assert s3.stat_object(settings.output_bucket, client.stem_key(job_id, "vocals")).size > 0
    assert redis_client.llen(settings.queue_key) == 0


# --- a bucket per song -------------------------------------------------------------------------------------------


@pytest.fixture
def song_buckets(s3):
    """Buckets named after songs, emptied and removed afterwards (each holds SeaweedFS volumes)."""
    names: list[str] = []
    yield names
    for name in names:
        if s3.bucket_exists(name):
            for item in s3.list_objects(name, recursive=True):
                s3.remove_object(name, item.object_name)
            s3.remove_bucket(name)


def test_a_bucket_named_after_the_song(make_settings, redis_client, s3, short_song, song_buckets):
    settings = make_settings(input_bucket="{id}", output_bucket="{id}", output_key="{id}/{stem}.{ext}")
    song_buckets += ["persong1", "hit-persong1"]
    client = tier(settings, redis_client, s3, upload_bucket="{id}", key="{id}/{id}.mp3")
    hit_id = fresh_then_cached(settings, client, short_song, "persong1")
    for job_id in ("persong1", hit_id):
        assert {item.object_name for item in s3.list_objects(job_id, recursive=True)} == {
            f"{job_id}/{job_id}.mp3",
            *(f"{job_id}/{stem}.mp3" for stem in ("bass", "drums", "other", "vocals")),
        }
    assert any("downloaded persong1/persong1/persong1.mp3" in line for line in log_lines(redis_client, settings))


def test_a_message_may_name_its_own_songs_bucket(make_settings, redis_client, s3, short_song, song_buckets):
    settings = make_settings(input_bucket="{id}")
    song_buckets.append("named1")
    client = tier(settings, redis_client, s3, bucket="{id}", key="{id}.mp3")
    client.submit("named1", short_song)
    assert run(settings).outcome == Outcome.DONE and client.status("named1") == "done"


@pytest.mark.parametrize(
    ("job_id", "bucket", "reason"),
    [
        ("Song1", None, "INPUT_BUCKET '{id}' gives bucket 'Song1' for this job, which may only hold lowercase"),
        ("song_1", None, "gives bucket 'song_1' for this job"),
        ("ab", None, "gives bucket 'ab' for this job, which is 2 characters"),
        ("song1", "song2", "bucket 'song2' is not an input bucket"),  # only its own song's bucket
        ("song1", "other.bucket", "bucket 'other.bucket' is not an input bucket"),  # not even of the template's shape
    ],
)
def test_an_id_that_names_no_valid_bucket_is_rejected_for_good(make_settings, redis_client, s3, job_id, bucket, reason):
    settings = make_settings(input_bucket="{id}")
    client = tier(settings, redis_client, s3, bucket=bucket, key="{id}.mp3" if bucket else None)
    client.submit(job_id, None)
    assert run(settings).outcome == Outcome.DEAD
    (entry,) = dead_letters(redis_client, settings)
    assert entry["permanent"] and reason in entry["error"]
    assert client.status(job_id) == "failed" and reason in client.record(job_id)["error"]


# --- a tier's own fields in the status hash ----------------------------------------------------------------------


class CommandLog(threading.Thread):
    """Every command the Redis server runs meanwhile (MONITOR), to see each state the status hash passes through."""

    STOP = "stemworker-test-monitor-stop"

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        # A connection of its own that waits as long as the job takes (MONITOR is quiet while a model runs).
        self.client = redis.Redis.from_url(url, socket_timeout=None)
        self.commands: list[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as monitor:
            self.ready.set()
            for command in monitor.listen():
                if self.STOP in command["command"]:
                    return
                self.commands.append(command["command"])

    def __enter__(self) -> CommandLog:
        self.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        with redis.Redis.from_url(self.url) as other:
            other.echo(self.STOP)
        self.join(10)
        self.client.close()


def test_a_tiers_status_field_shows_our_state_and_its_fields_survive(make_settings, redis_client, s3, short_song):
    settings = make_settings(state_fields="state,status")
    own = {"status": "queued", "filename": "My Song.mp3", "user": "42"}
    client = tier(settings, redis_client, s3, own_status=own, status_field="status")
    key = client.status_key("own1")
    # A first submission whose upload never arrived: it fails, and the tier's endpoint says so.
    client.submit("own1", None)
    assert run(settings).outcome == Outcome.DEAD
    record = client.record("own1")
    assert (record["status"], record["state"], record["filename"], record["user"]) == (
        "failed",
        "failed",
        "My Song.mp3",
        "42",
    )
    assert "error" in record and redis_client.ttl(key) == -1  # the tier's hash keeps no expiry of ours
    # The tier submits again: a fresh run clears only the worker's own fields (the old error goes).
    with CommandLog(settings.redis_connection_url) as commands:
        fresh_then_cached(settings, client, short_song, "own1")
    record = client.record("own1")
    assert (record["status"], record["state"], record["filename"], record["user"]) == (
        "done",
        "done",
        "My Song.mp3",
        "42",
    )
    assert "error" not in record and "failed_at" not in record and redis_client.ttl(key) == -1
    writes = [command for command in commands.commands if key in command]
    for state in ("downloading", "separating", "uploading", "done"):
        assert any(re.search(rf"\bstatus\b\W+{state}\b", command) for command in writes), state
    # Everything in the hash is the tier's or listed as the worker's own (a new field must join OWN_FIELDS).
    assert set(record) - set(own) <= OWN_FIELDS | {"status"}


def test_the_worker_sets_an_expiry_only_on_hashes_it_created(make_settings, redis_client, s3, short_song):
    settings = make_settings()
    client = tier(settings, redis_client, s3)
    client.submit("ttl1", None)
    assert run(settings).outcome == Outcome.DEAD
    assert 0 < redis_client.ttl(client.status_key("ttl1")) <= settings.status_ttl_s


DAY_S = 86400


def test_a_tiers_own_expiry_is_kept_unless_status_ttl_is_set(make_settings, redis_client, s3, short_song):
    tier_shape = {"own_status": {"status": "queued", "user": "42"}, "own_status_ttl_s": DAY_S, "status_field": "status"}
    settings = make_settings(status_key="job:{id}", state_fields="status")
    client = tier(settings, redis_client, s3, **tier_shape)
    hit_id = fresh_then_cached(settings, client, short_song, "exp1")
    for job_id in ("exp1", hit_id):
        assert DAY_S - 60 < redis_client.ttl(f"job:{job_id}") <= DAY_S
    # Set explicitly, STATUS_TTL_S replaces the tier's expiry (as before, and only then).
    explicit = make_settings(status_key="job:{id}", state_fields="status", status_ttl_s=3 * DAY_S)
    client = tier(explicit, redis_client, s3, **tier_shape)
    client.submit("exp2", short_song)
    assert run(explicit).outcome == Outcome.DONE and client.status("exp2") == "done"
    assert 3 * DAY_S - 60 < redis_client.ttl("job:exp2") <= 3 * DAY_S


def test_state_map_renames_or_leaves_out_the_intermediate_states(make_settings, redis_client, s3, short_song):
    settings = make_settings(
        state_fields="state,status", state_map="downloading:processing, separating:processing, uploading:"
    )
    client = tier(settings, redis_client, s3, own_status={"status": "queued"}, status_field="status")
    key = client.status_key("map1")
    with CommandLog(settings.redis_connection_url) as commands:
        fresh_then_cached(settings, client, short_song, "map1")
    writes = [command for command in commands.commands if key in command]
    names = {*(state.value for state in State), "processing"}  # what a field/value pair may hold (not a field)

    def values(field: str) -> set[str]:
        return {value for command in writes for value in re.findall(rf"\b{field} (\w+)", command)} & names

    assert values("status") == {"queued", "processing", "done"}
    assert values("state") == {"queued", "downloading", "separating", "uploading", "done"}  # the worker's own
    assert client.record("map1")["state"] == "done"


# --- a stem published under two names ----------------------------------------------------------------------------


def test_a_stem_under_two_names_is_one_upload_and_a_server_side_copy(make_settings, redis_client, s3, short_song):
    settings = make_settings(stem_aliases="bass:base+bass")
    spells_base = tier(settings, redis_client, s3, name="base-tier", stem_names={"bass": "base"})
    spells_bass = tier(settings, redis_client, s3, name="bass-tier")
    runner = Runner(settings)
    calls: list[tuple[str, str]] = []
    store = runner.worker.store
    real_upload, real_copy = store.upload, store.copy
    store.upload = lambda bucket, key, *a: calls.append(("upload", key)) or real_upload(bucket, key, *a)
    store.copy = lambda bucket, source, dest, **kw: (
        calls.append(("copy", dest)) or real_copy(bucket, source, dest, **kw)
    )
    hit_id = fresh_then_cached(settings, spells_base, short_song, "twice", runner=runner)
    for job_id in ("twice", hit_id):
        base, bass = spells_base.download(job_id, "bass"), spells_bass.download(job_id, "bass")
        assert base == bass and len(base) > 0
    assert sorted(calls[:5]) == [
        ("copy", "twice-bass.mp3"),
        ("upload", "twice-base.mp3"),
        ("upload", "twice-drums.mp3"),
        ("upload", "twice-other.mp3"),
        ("upload", "twice-vocals.mp3"),
    ]
    # The hit copies every published name from the recorded stems (the bass twice: `base` and `bass`).
    assert sorted(calls[5:]) == [
        ("copy", f"{hit_id}-{name}.mp3") for name in ("base", "bass", "drums", "other", "vocals")
    ]
    assert json.loads(spells_base.record(hit_id)["outputs"])["bass"]["keys"] == [
        f"{hit_id}-base.mp3",
        f"{hit_id}-bass.mp3",
    ]
    outputs = json.loads(spells_base.record("twice")["outputs"])
    assert outputs["bass"] == {
        "bucket": settings.output_bucket,
        "key": "twice-base.mp3",
        "keys": ["twice-base.mp3", "twice-bass.mp3"],
    }
    assert outputs["vocals"] == {"bucket": settings.output_bucket, "key": "twice-vocals.mp3"}


# --- loopback and in-cluster callback receivers ------------------------------------------------------------------


def test_a_loopback_receiver_is_reached_when_its_network_is_allowed(
    make_settings, redis_client, s3, short_song, receiver
):
    url = f"http://localhost:{receiver.port}/hook"
    settings = make_settings(callback_allow_hosts="10.0.0.0/8, 127.0.0.1/32")
    client = tier(settings, redis_client, s3, fields={"callback": url})
    fresh_then_cached(settings, client, short_song, "loop1", receiver)
    assert [request["json"]["state"] for request in receiver.requests] == ["done", "done"]
    # Without the network entry the same receiver is refused (the job itself is unaffected).
    refused = make_settings(callback_allow_hosts="10.0.0.0/8")
    tier(refused, redis_client, s3, fields={"callback": url}).submit("loop2", None)
    assert run(refused).outcome == Outcome.DEAD
    assert len(receiver.requests) == 2
    assert any(
        "job loop2: callback skipped: address localhost (127.0.0.1) is loopback" in line
        for line in log_lines(redis_client, settings)
    )


# --- webhook-id per submission, stable per delivery --------------------------------------------------------------


def test_two_submissions_of_one_message_get_two_webhook_ids(make_settings, redis_client, s3, short_song, receiver):
    settings = make_settings(callback_allow_hosts="127.0.0.1/32")
    client = tier(settings, redis_client, s3, fields={"callback": receiver.url})
    first = client.submit("again", short_song)
    assert run(settings).outcome == Outcome.DONE
    assert client.submit("again", None) == first  # the very same bytes, pushed again
    assert run(settings).outcome == Outcome.DONE
    ids = [request["headers"]["webhook-id"] for request in receiver.requests]
    assert len(ids) == 2 and ids[0] != ids[1]


def test_a_retried_delivery_keeps_its_webhook_id(make_settings, redis_client, s3, short_song, receiver, tmp_path: Path):
    settings = make_settings(callback_allow_hosts="127.0.0.1/32")
    client = tier(settings, redis_client, s3, fields={"callback": receiver.url})
    client.submit("retry1", short_song)
    empty_repo = tmp_path / "no-models"
    empty_repo.mkdir()
    broken = make_settings(callback_allow_hosts="127.0.0.1/32", demucs_repo=str(empty_repo))
    assert run(broken).outcome == Outcome.REQUEUED  # the model cannot load: a transient failure
    first_id = client.record("retry1")["event_id"]
    assert receiver.requests == []
    assert run(settings).outcome == Outcome.DONE
    assert [request["headers"]["webhook-id"] for request in receiver.requests] == [first_id]
    assert client.record("retry1")["attempts"] == "2"
