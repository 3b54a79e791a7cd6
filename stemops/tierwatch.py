"""Observe a REST tier's Redis commands while a person submits one song through it (`stemworker doctor --watch`).

MONITOR where the server allows it: every command, with its arguments. Where MONITOR is refused (an ACL without
+monitor, a managed Redis that renames it), keyspace notifications: the key and the command's name of every write,
whose values are then read back (LINDEX, HGETALL, TTL: reads only). A server whose notifications are off has them
turned on for the watch (CONFIG SET notify-keyspace-events) and restored afterwards; a server that allows neither
gets one error saying what to allow. Nothing here writes a key: the tier's data is never popped or changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

PUSHES = frozenset({"LPUSH", "RPUSH", "LPUSHX", "RPUSHX"})
HASH_WRITES = frozenset({"HSET", "HMSET", "HSETNX"})
EXPIRES = frozenset({"EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"})
# Ways some tiers hand a job over that a worker reading a list never sees (and SET: a status kept as a string).
OTHER_HANDOFFS = frozenset({"XADD", "ZADD", "PUBLISH", "SADD", "SET", "SETEX", "PSETEX", "SETNX"})
# What the watch keeps of a busy server's commands (the rest is skipped): at most MAX_KEPT of these.
KEPT = PUSHES | HASH_WRITES | EXPIRES | OTHER_HANDOFFS
MAX_KEPT = 100_000
# After the first push is seen, commands are still collected this long: a tier may write its status hash after it
# pushes the message.
GRACE_S = 1.5
POLL_S = 0.25
# Keyspace notification classes the watch needs: K (keyspace channel), l (lists), h (hashes), g (EXPIRE and DEL),
# and to name what a tier uses instead of a list: $ (strings), z (sorted sets), s (sets), t (streams).
NOTIFY_FLAGS = "Klhg$zst"


class WatchUnavailable(Exception):
    """Neither MONITOR nor keyspace notifications can be used on this server."""


class NothingSeen(Exception):
    """No push was seen before the deadline."""


@dataclass(frozen=True)
class Command:
    """One Redis command the tier ran (name upper-cased, arguments as sent)."""

    name: str
    args: tuple[bytes, ...]

    @property
    def key(self) -> bytes | None:
        return self.args[0] if self.args else None


ESCAPES = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("a"): b"\a",
    ord("b"): b"\b",
    ord('"'): b'"',
    ord("\\"): b"\\",
}


def parse_monitor_line(line: bytes) -> Command | None:
    """A MONITOR line (`1700000000.1 [0 127.0.0.1:5000] "LPUSH" "q" "{\\"id\\": 1}"`) as a Command; None for a
    line that is not one. The arguments are quoted as Redis' sdscatrepr writes them."""
    start = line.find(b'] "')
    if start < 0:
        return None
    args: list[bytes] = []
    i, n = start + 2, len(line)
    while i < n:
        if line[i] != ord('"'):
            i += 1
            continue
        i += 1
        out = bytearray()
        while i < n and line[i] != ord('"'):
            if line[i] == ord("\\") and i + 1 < n:
                nxt = line[i + 1]
                if nxt == ord("x") and i + 3 < n:
                    out.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                    continue
                out += ESCAPES.get(nxt, bytes([nxt]))
                i += 2
                continue
            out.append(line[i])
            i += 1
        args.append(bytes(out))
        i += 1
    if not args:
        return None
    return Command(args[0].decode("utf-8", "replace").upper(), tuple(args[1:]))


def _collect(read: Callable[[float], list[Command]], timeout_s: float, stop: Callable[[], bool]) -> list[Command]:
    """Call `read(wait_s)` until a push has been seen and GRACE_S more has passed, or until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    seen: list[Command] = []
    pushed_at: float | None = None
    while not stop():
        now = time.monotonic()
        end = deadline if pushed_at is None else min(deadline, pushed_at + GRACE_S)
        if now >= end:
            break
        batch = read(min(POLL_S, end - now))
        seen += [command for command in batch if command.name in KEPT][: MAX_KEPT - len(seen)]
        if pushed_at is None and any(command.name in PUSHES for command in batch):
            pushed_at = time.monotonic()
    if pushed_at is None:
        writes = sorted(
            {
                f"{command.name} {command.key.decode('utf-8', 'replace')}"
                for command in seen
                if command.key is not None and command.name in {"XADD", "ZADD", "PUBLISH", "SADD"}
            }
        )
        also = (
            (
                f"; it saw {', '.join(writes[:5])}, but stemworker reads its jobs from a Redis list (LPUSH or "
                "RPUSH), not from a stream, a sorted set or a channel"
            )
            if writes
            else ""
        )
        raise NothingSeen(
            f"no LPUSH or RPUSH was seen in {timeout_s:g} s: submit one song through the tier while "
            f"doctor watches (or give it longer with --timeout){also}"
        )
    return seen


def watch_monitor(
    client: redis.Redis, timeout_s: float, ready: Callable[[], None], stop: Callable[[], bool]
) -> list[Command]:
    """The commands every client runs, through MONITOR on a connection of its own. Raises redis.ResponseError when
    MONITOR is refused."""
    connection: Any = client.connection_pool.make_connection()  # redis-py leaves connect/send_command untyped
    try:
        connection.connect()
        connection.send_command("MONITOR")
        answer = connection.read_response()
        if isinstance(answer, Exception):
            raise answer
        ready()

        def read(wait_s: float) -> list[Command]:
            found: list[Command] = []
            if not connection.can_read(timeout=wait_s):
                return found
            while True:
                line = connection.read_response(disable_decoding=True)
                command = parse_monitor_line(line if isinstance(line, bytes) else str(line).encode())
                if command is not None:
                    found.append(command)
                if not connection.can_read(timeout=0):
                    return found

        return _collect(read, timeout_s, stop)
    finally:
        connection.disconnect()


def _notify_flags(client: redis.Redis) -> str | None:
    try:
        value = client.config_get("notify-keyspace-events").get("notify-keyspace-events")
    except redis.ResponseError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _covers(flags: str, wanted: str) -> bool:
    expanded = flags.replace("A", "g$lshzxetd")
    return all(flag in expanded for flag in wanted)


def watch_keyspace(
    client: redis.Redis, timeout_s: float, ready: Callable[[], None], stop: Callable[[], bool]
) -> tuple[list[Command], str]:
    """The tier's writes through keyspace notifications, each read back as the Command that made it (a push's
    value by LINDEX at the end it was pushed to, a hash by HGETALL, an expiry by TTL). Returns the commands and a
    note on what was done to the server's notification setting."""
    before = _notify_flags(client)
    note = f"keyspace notifications were already on ({before!r})"
    changed = False
    if before is None or not _covers(before, NOTIFY_FLAGS):
        wanted = "".join(dict.fromkeys((before or "") + NOTIFY_FLAGS))
        try:
            client.config_set("notify-keyspace-events", wanted)
        except redis.ResponseError as err:
            raise WatchUnavailable(
                "MONITOR is not allowed, and keyspace notifications are off and cannot be turned on "
                f"({err}). Allow one of them for the watch: an ACL with +monitor, or notify-keyspace-events "
                f"{NOTIFY_FLAGS!r} (redis-cli CONFIG SET notify-keyspace-events {NOTIFY_FLAGS})"
            ) from None
        changed = True
        note = f"keyspace notifications turned on ({wanted!r}) for the watch, then set back to {before or ''!r}"
    db = client.connection_pool.connection_kwargs.get("db", 0)
    prefix = f"__keyspace@{db}__:".encode()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.psubscribe(prefix + b"*")
        pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        ready()

        def read(wait_s: float) -> list[Command]:
            found = []
            message = pubsub.get_message(timeout=wait_s)
            while message is not None:
                key = bytes(message["channel"])[len(prefix) :]
                event = bytes(message["data"]).decode().upper()
                command = _read_back(client, key, event)
                if command is not None:
                    found.append(command)
                message = pubsub.get_message(timeout=0)
            return found

        return _collect(read, timeout_s, stop), note
    finally:
        pubsub.close()
        if changed:
            client.config_set("notify-keyspace-events", before or "")


def _read_back(client: redis.Redis, key: bytes, event: str) -> Command | None:
    """The command a keyspace event stands for, with the values read back (reads only)."""
    if event in PUSHES:
        value = client.lindex(key, 0 if event.startswith("L") else -1)
        return Command(event, (key, _bytes(value))) if value is not None else Command(event, (key,))
    if event in HASH_WRITES:
        pairs = [_bytes(item) for pair in client.hgetall(key).items() for item in pair]
        return Command("HSET", (key, *pairs))
    if event in EXPIRES:
        return Command("EXPIRE", (key, str(client.ttl(key)).encode()))
    if event.upper() in OTHER_HANDOFFS:
        return Command(event.upper(), (key,))
    return None


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def watch(
    client: redis.Redis,
    timeout_s: float,
    ready: Callable[[], None] = lambda: None,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[str, list[Command]]:
    """What the tier ran between now and its first push (plus GRACE_S): ("monitor" or a keyspace note, commands).
    `ready` is called once the watch is listening (submit then)."""
    try:
        return "MONITOR", watch_monitor(client, timeout_s, ready, stop)
    except redis.ResponseError as refused:
        commands, note = watch_keyspace(client, timeout_s, ready, stop)
        return f"keyspace notifications (MONITOR refused: {refused}); {note}", commands
