"""Run calls on worker threads, each with its own time limit; a call that hangs is abandoned alone.

``concurrent.futures`` cannot abandon a thread: a pool waits for a hung call when it shuts down,
and ``future.result(timeout)`` counts from when the caller starts waiting, not from when the call
started, so calls queued behind others time out without having hung. Here every call's clock
starts when a worker picks it up, a late call is marked :data:`TIMED_OUT` and left running on its
own daemon thread (its result is ignored), and a fresh worker takes its place.

Example:
    >>> import time
    >>> run_with_deadlines([lambda: 1, lambda: time.sleep(5), lambda: 3], threads=2, timeout=0.2)
    [1, TIMED_OUT, 3]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


class _TimedOut:
    def __repr__(self) -> str:
        return "TIMED_OUT"


TIMED_OUT: Any = _TimedOut()
"""The result of a call abandoned after its time limit."""


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def run_with_deadlines(calls: Sequence[Callable[[], Any]], *, threads: int, timeout: float | None) -> list[Any]:
    """Each call's result in order; an exception a call raises is raised here once every call is done.

    ``timeout`` is per call, from the moment the call starts (``None``: no limit).
    """
    if not calls:
        return []
    pending = list(range(len(calls)))
    results: list[Any] = [None] * len(calls)
    done = [False] * len(calls)
    started: dict[int, float] = {}
    condition = threading.Condition()

    def worker() -> None:
        while True:
            with condition:
                if not pending:
                    return
                index = pending.pop(0)
                started[index] = time.monotonic()
            try:
                value: Any = calls[index]()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                value = _Raised(exc)
            with condition:
                if done[index]:  # abandoned after its time limit: a replacement worker exists
                    return
                results[index], done[index] = value, True
                started.pop(index, None)
                condition.notify_all()

    def spawn() -> None:
        threading.Thread(target=worker, daemon=True, name="cuecard-call").start()

    for _ in range(min(max(1, threads), len(calls))):
        spawn()
    with condition:
        while not all(done):
            wait = None
            if timeout is not None and started:
                now = time.monotonic()
                for index, begun in list(started.items()):
                    if now - begun >= timeout:
                        results[index], done[index] = TIMED_OUT, True
                        del started[index]
                        if pending:
                            spawn()
                wait = max(0.01, min((begun + timeout - now for begun in started.values()), default=timeout))
            if not all(done):
                condition.wait(wait)
    for value in results:
        if isinstance(value, _Raised):
            raise value.error
    return results


def call_with_deadline(call: Callable[[], Any], timeout: float | None) -> Any:
    """``call()``, or :data:`TIMED_OUT` when it takes longer than ``timeout`` seconds (then abandoned)."""
    if timeout is None:
        return call()
    return run_with_deadlines([call], threads=1, timeout=timeout)[0]


__all__ = ["TIMED_OUT", "call_with_deadline", "run_with_deadlines"]
