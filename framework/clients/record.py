"""The run's record of LM replies: a resumed or repeated compile replays them instead of asking again.

While a compile runs, every request a cuecard LM makes outside the scoring of pool examples (the
prompt model's proposals, minibatch runs, traces) is kept in the run's storage under a key made
of the model and the whole request (messages, temperature, rollout id, seed...). A rerun of the
same run, after a kill, a cap or a finished compile, gets each reply back from the record: the same
proposals, no LM call, and the search takes exactly the same path. Pool evaluations are not
recorded here: their scores are stored in the candidates' trials.

A replayed request still counts as a request asked for (``Usage.calls``, ``Usage.replayed``), so a
cap on requests stops a resumed run where the uninterrupted run would have stopped.

Example:
    >>> from cuecard.clients.testing import scripted_lm
    >>> record = MemoryRecord()
    >>> lm = scripted_lm(lambda messages: "hello")
    >>> with recording(record):
    ...     first = lm("Say hello.")
    ...     again = lm("Say hello.")
    >>> first == again, len(lm.engine.requests)
    (True, 1)
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator
from typing import Any, Protocol

from pydantic import BaseModel

from ..identity import _answer_setting, digest


class StoredReply(BaseModel):
    """One recorded LM request: its outputs and how many completions it asked for."""

    outputs: list[Any]
    requests: int = 1


class Record(Protocol):
    """Where replies are kept (the engine keeps them in the run's study)."""

    def get(self, key: str) -> StoredReply | None: ...

    def put(self, key: str, reply: StoredReply) -> None: ...


class MemoryRecord:
    """A record held in memory (tests, and runs without storage)."""

    def __init__(self) -> None:
        self.replies: dict[str, StoredReply] = {}

    def get(self, key: str) -> StoredReply | None:
        return self.replies.get(key)

    def put(self, key: str, reply: StoredReply) -> None:
        self.replies[key] = reply


_active: contextvars.ContextVar[Record | None] = contextvars.ContextVar("cuecard_record", default=None)


@contextlib.contextmanager
def recording(record: Record | None) -> Iterator[Record | None]:
    """Replay and record the LM requests made inside (``None``: neither)."""
    token = _active.set(record)
    try:
        yield record
    finally:
        _active.reset(token)


def not_recorded() -> contextlib.AbstractContextManager[Record | None]:
    """Inside, requests are neither replayed nor recorded (pool evaluations store their scores instead)."""
    return recording(None)


def active_record() -> Record | None:
    return _active.get()


def request_key(model: str, request: dict[str, Any]) -> str:
    """The record key of a request: the model and every setting that changes its reply, never a key."""
    kept = {k: v for k, v in request.items() if _answer_setting(k)}
    return digest({"model": model, "request": kept}, length=32)


def storable(outputs: Any) -> list[Any] | None:
    """The outputs as JSON data, or None when they cannot be stored."""
    try:
        return json.loads(json.dumps(list(outputs)))
    except (TypeError, ValueError):
        return None


__all__ = ["MemoryRecord", "Record", "StoredReply", "active_record", "not_recorded", "recording", "request_key", "storable"]
