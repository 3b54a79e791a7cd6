"""WorkQueue's lease bookkeeping against the real Redis: no keyspace scans, exact lease and orphan handling,
fencing of a runner whose lease was reaped, and the key names Redis Cluster needs."""

from __future__ import annotations

import re
import threading
import uuid

import pytest
import redis
from redis.crc import key_slot
from support import wait_for

from function import keys, queue_scripts
from function.errors import LeaseLost
from function.fencing import FencedStatusRecord
from function.queue import WorkQueue
from function.runner import Heartbeat
from function.status import State


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def expire_lease(client: redis.Redis, token: str) -> None:
    """What a runner that stops renewing looks like once LEASE_S has passed."""
    client.zadd("toWorker:leases", {token: 0})


@pytest.fixture
def restricted_client(services, redis_client):
    """A client logged in as an ACL user that may run everything but KEYS and SCAN (Lua included)."""
    user, password = f"noscan-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-keys", "-scan"]
    )
    client = redis.Redis.from_url(services.env()["REDIS_URL"], username=user, password=password)
    yield client
    client.close()
    redis_client.acl_deluser(user)


def test_queue_never_scans_the_keyspace(redis_client, restricted_client):
    # The restricted user really cannot scan: this test fails if the worker ever does.
    with pytest.raises(redis.exceptions.NoPermissionError):
        restricted_client.keys("*")
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        restricted_client.eval("return redis.call('SCAN', 0)", 0)
    redis_client.mset({f"rest:{n}": n for n in range(2000)})
    redis_client.config_resetstat()
    queue = WorkQueue(restricted_client, "toWorker", lease_s=30, orphan_grace_s=0)
    redis_client.rpush("toWorker", "a", "b", "c", "d")
    done, requeued, dead, dies = (queue.claim(1) for _ in range(4))
    assert done and requeued and dead and dies
    queue.renew(done)
    queue.complete(done)
    queue.requeue(requeued, count_attempt=False)
    queue.dead_letter(dead, {"error": "bad"})
    expire_lease(redis_client, dies.token)
    assert queue.reap() == 1  # the expired lease
    redis_client.lpush("toWorker:processing", "never-leased")
    assert queue.reap() == 0 and queue.reap() == 1  # marked, then requeued
    assert sorted(redis_client.lrange("toWorker", 0, -1)) == [b"b", b"d", b"never-leased"]
    stats = redis_client.info("commandstats")
    assert "cmdstat_keys" not in stats and "cmdstat_scan" not in stats, stats
    assert stats["cmdstat_evalsha"]["calls"] >= 8  # the scripts did run, as the restricted user


def test_every_key_a_script_touches_is_declared():
    scripts = {
        name: getattr(queue_scripts, name) for name in ("CLAIM", "RENEW", "FINISH", "WRITE_HASH_IF_LEASED", "REAP")
    }
    keyless = {"TIME"}
    for name, source in scripts.items():
        calls = re.findall(r"redis\.call\('(\w+)'(?:, ([^,)]+))?", source)
        assert calls, name
        for command, first_arg in calls:
            if command in keyless:
                continue
            assert re.fullmatch(r"KEYS\[\d\]", first_arg), f"{name}: {command} {first_arg}"
        assert "'KEYS'" not in source and "'SCAN'" not in source


def test_expired_lease_is_requeued_at_once_and_a_live_one_never(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30, orphan_grace_s=60)
    redis_client.lpush("toWorker", "live", "orphan")
    orphan, live = queue.claim(1), queue.claim(1)
    assert orphan is not None and live is not None
    expire_lease(redis_client, orphan.token)
    assert queue.reap() == 1  # the lease's expiry was the wait: no orphan grace on top
    assert redis_client.lrange("toWorker", 0, -1) == [b"orphan"]
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"live"]
    assert redis_client.zrange("toWorker:leases", 0, -1) == [live.token.encode()]
    assert redis_client.hkeys("toWorker:leased") == [live.token.encode()]
    for _ in range(5):
        assert queue.reap() == 0


def test_claim_without_lease_yet_is_not_reaped_within_grace(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30, orphan_grace_s=60)
    redis_client.lpush("toWorker:processing", "just-claimed")  # BLMOVE done, lease not yet written
    for _ in range(10):
        assert queue.reap() == 0
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"just-claimed"]
    assert redis_client.hlen("toWorker:orphans") == 1


def test_lease_written_within_grace_clears_the_orphan_mark(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30, orphan_grace_s=0)
    redis_client.rpush("toWorker", "m")
    redis_client.lmove("toWorker", "toWorker:processing", "LEFT", "LEFT")  # the runner's BLMOVE ...
    assert queue.reap() == 0 and redis_client.hlen("toWorker:orphans") == 1  # ... seen without a lease
    claim = queue._claim(
        keys=[
            queue.processing_key,
            queue.leases_key,
            queue.leased_key,
            queue.attempts_key,
            queue.dead_key,
            queue.dataset_key,
        ],
        args=["t1", b"m", "d", 30, "now", 3, "marker", "{}"],
    )  # ... then its lease write lands
    assert claim is not None
    assert queue.reap() == 0 and redis_client.hlen("toWorker:orphans") == 0
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"m"]


def test_concurrent_reapers_requeue_an_orphan_once(redis_client):
    redis_client.lpush("toWorker:processing", "orphan")
    queues = [WorkQueue(redis_client, "toWorker", orphan_grace_s=0) for _ in range(8)]
    queues[0].reap()  # first sighting
    moved: list[int] = []
    threads = [threading.Thread(target=lambda q=q: moved.append(q.reap())) for q in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(moved) == 1
    assert redis_client.lrange("toWorker", 0, -1) == [b"orphan"]
    assert redis_client.llen("toWorker:processing") == 0


def test_concurrent_reapers_requeue_an_expired_lease_once(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30)
    redis_client.rpush("toWorker", "m")
    claim = queue.claim(1)
    assert claim is not None
    expire_lease(redis_client, claim.token)
    moved: list[int] = []
    threads = [
        threading.Thread(target=lambda: moved.append(WorkQueue(redis_client, "toWorker").reap())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(moved) == 1 and redis_client.lrange("toWorker", 0, -1) == [b"m"]


def test_a_message_copied_twice_in_processing(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30, orphan_grace_s=0)
    redis_client.rpush("toWorker", "same", "same")
    first, second = queue.claim(1), queue.claim(1)
    assert first is not None and second is not None and first.token != second.token
    assert first.attempts == 1 and second.attempts == 2  # one count per message body
    expire_lease(redis_client, first.token)  # the first runner dies
    assert queue.reap() == 1
    assert redis_client.lrange("toWorker", 0, -1) == [b"same"]
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"same"]  # the second runner's copy stays
    for _ in range(3):
        assert queue.reap() == 0
    queue.complete(second)
    assert redis_client.llen("toWorker:processing") == 0
    third = queue.claim(1)
    assert third is not None
    redis_client.lpush("toWorker:processing", "same")  # and a fourth runner is between BLMOVE and its lease
    assert queue.reap() == 0  # one copy has a lease, the other is marked ...
    assert queue.reap() == 1  # ... and requeued once the grace (0 s) is over; the leased copy stays
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"same"]
    queue.complete(third)
    assert redis_client.llen("toWorker:processing") == 0 and redis_client.zcard("toWorker:leases") == 0


def test_heartbeat_renews_the_lease(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=2)
    redis_client.rpush("toWorker", "slow")
    claim = queue.claim(1)
    assert claim is not None
    first_deadline = redis_client.zscore("toWorker:leases", claim.token)
    heartbeat = Heartbeat(queue, claim)
    heartbeat.start()
    try:
        wait_for(lambda: redis_now(redis_client) > first_deadline + 1, 10, "the first deadline to pass")
        assert queue.reap() == 0 and queue.holds(claim)
        assert redis_client.zscore("toWorker:leases", claim.token) > first_deadline
    finally:
        heartbeat.stop()
    queue.complete(claim)


def test_runner_whose_lease_was_reaped_is_fenced(redis_client):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30)
    redis_client.rpush("toWorker", "job1")
    zombie = queue.claim(1)
    assert zombie is not None
    zombie_status = FencedStatusRecord(redis_client, "status:job1", 60, ("state",), queue, zombie)
    zombie_status.start(attempts=1)
    expire_lease(redis_client, zombie.token)  # cut off for longer than LEASE_S ...
    assert queue.reap() == 1
    owner = queue.claim(1)  # ... and the message is taken by another runner, which finishes it
    assert owner is not None
    owner_status = FencedStatusRecord(redis_client, "status:job1", 60, ("state",), queue, owner)
    owner_status.start(attempts=2)
    owner_status.update(State.DONE)
    with pytest.raises(LeaseLost):
        queue.renew(zombie)
    with pytest.raises(LeaseLost):
        zombie_status.update(State.FAILED, error="too late")
    for ack in (queue.complete, queue.requeue, lambda c: queue.dead_letter(c, {"error": "x"})):
        with pytest.raises(LeaseLost):
            ack(zombie)
    assert redis_client.hget("status:job1", "state") == b"done"
    assert redis_client.lrange("toWorker:processing", 0, -1) == [b"job1"]  # the owner's copy was not acked away
    assert redis_client.llen("toWorker") == 0 and redis_client.llen("toWorker:dead") == 0
    queue.complete(owner)
    assert redis_client.llen("toWorker:processing") == 0


def test_claim_reaped_before_its_lease_was_written_is_refused(redis_client, monkeypatch):
    queue = WorkQueue(redis_client, "toWorker", lease_s=30, orphan_grace_s=0)
    reaper = WorkQueue(redis.Redis(connection_pool=redis_client.connection_pool), "toWorker", orphan_grace_s=0)
    real_blmove = queue.client.blmove

    def slow_blmove(*args, **kwargs):
        moved = real_blmove(*args, **kwargs)
        reaper.reap()  # the lease write is late (a Redis outage): two reaps mark and requeue the copy
        reaper.reap()
        return moved

    monkeypatch.setattr(queue.client, "blmove", slow_blmove)
    redis_client.rpush("toWorker", "late")
    with pytest.raises(LeaseLost, match="before its lease was written"):
        queue.claim(1)
    assert redis_client.lrange("toWorker", 0, -1) == [b"late"]
    assert redis_client.llen("toWorker:processing") == 0 and redis_client.zcard("toWorker:leases") == 0
    assert redis_client.hlen("toWorker:attempts") == 0  # it never ran, so it is not counted


def test_a_retried_claim_script_counts_once(redis_client):
    queue = WorkQueue(redis_client, "toWorker")
    redis_client.rpush("toWorker:processing", "m")
    call = {
        "keys": [
            queue.processing_key,
            queue.leases_key,
            queue.leased_key,
            queue.attempts_key,
            queue.dead_key,
            queue.dataset_key,
        ],
        "args": ["tok", b"m", "dg", 30, "t0", 3, "marker", "{}"],
    }
    assert queue._claim(**call)[0] == 1
    assert queue._claim(**call)[0] == 1  # the reply of the first was lost and the client retried
    assert redis_client.hget("toWorker:attempts", "dg") == b"1"


def test_old_form_lease_keys_are_not_leases(redis_client):
    """Migration: a lease written by the previous release (`<queue>:lease:<digest>:<token>`) is invisible to this
    reaper, so its message is treated as never leased: requeued after ORPHAN_GRACE_S (docs/reliability.md)."""
    queue = WorkQueue(redis_client, "toWorker", orphan_grace_s=0)
    redis_client.lpush("toWorker:processing", "old")
    redis_client.set("toWorker:lease:0123abcd:tok", "1", ex=60)
    assert queue.reap() == 0 and queue.reap() == 1
    assert redis_client.lrange("toWorker", 0, -1) == [b"old"]


def test_key_names_and_cluster_slots():
    queue = WorkQueue(redis.Redis(), "toWorker")
    assert (queue.queue_key, queue.processing_key, queue.dead_key) == (
        "toWorker",
        "toWorker:processing",
        "toWorker:dead",
    )
    tagged = WorkQueue(redis.Redis(), "{toWorker}")
    names = [
        tagged.queue_key,
        tagged.processing_key,
        tagged.dead_key,
        tagged.leases_key,
        tagged.leased_key,
        tagged.attempts_key,
        tagged.orphans_key,
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1  # a hash-tagged queue is Cluster-safe
    assert key_slot(b"toWorker") != key_slot(keys.processing_key("toWorker").encode())  # the default is not
