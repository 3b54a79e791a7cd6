"""A call bounded by the wall clock, whatever it blocks on.

A socket timeout bounds one read, not a request: a peer that answers a byte at a time, or a Redis that accepts and
never replies, can hold a call far longer. `run_within` runs the call on a daemon thread and waits for it at most
`budget_s`; past that the caller gets `DeadlineExceeded` at once (and may cut the call's sockets so the thread ends
too), while the thread runs on until its own timeouts end it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call had not returned when its budget ran out."""


def run_within(call: Callable[[], T], budget_s: float, name: str) -> T:
    """`call()`'s result or exception, if it ends within `budget_s` seconds; DeadlineExceeded otherwise."""
    done = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as err:  # handed to the waiting thread as it is
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(budget_s):
        raise DeadlineExceeded(f"{name} did not end within {budget_s:g} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
