"""The usage meter: what every LM call cost, per LM and per block of work.

Every :class:`cuecard.clients.lm.CuecardLM` owns a :class:`UsageMeter` (``lm.meter``) that counts all its
calls. A *block of work* is opened with :func:`track`; every call made by any cuecard LM inside the
block (in this thread, or in threads started with the block's context) is added to it too, so a
teleprompter can ask "what did the proposal step cost" without knowing which LMs were used.

Example:
    >>> from cuecard.clients.usage import track
    >>> with track("demo") as block:
    ...     pass  # run programs, compile, ...
    >>> block.usage.calls
    0
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from pydantic import BaseModel, Field

from ..errors import BudgetExhausted
from ..stopping import StopReason


class Usage(BaseModel):
    """Counters of LM use. Tokens and cost are counted for calls that reached a model.

    ``calls`` counts every request asked for: served by the model, by DSPy's cache, or replayed from
    the run's own record (a resumed or repeated compile), so a run stops at the same point whatever
    was stored before; ``model_calls`` counts only those that reached a model
    (``calls = cache_hits + replayed + model_calls + errors``).
    """

    calls: int = 0
    cache_hits: int = 0
    replayed: int = 0
    model_calls: int = 0
    errors: int = 0
    parse_failures: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lm_seconds: float = 0.0
    cost: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields})

    def __sub__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) - getattr(other, name) for name in Usage.model_fields})


class CallRecord(BaseModel):
    """One LM request as the meter sees it."""

    model: str
    requests: int = Field(1, ge=1, description="completions asked for (a call with n=3 asks for 3)")
    cache_hit: bool = False
    replayed: bool = Field(False, description="served from the run's record, not from an LM")
    error: bool = False
    truncated: int = Field(0, description="answers cut at the token cap (finish reason 'length')")
    max_tokens: int | None = Field(None, description="the token cap the request was sent with")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0

    def as_usage(self) -> Usage:
        reached = not self.cache_hit and not self.error and not self.replayed
        return Usage(
            calls=self.requests,
            cache_hits=self.requests if self.cache_hit else 0,
            replayed=self.requests if self.replayed else 0,
            model_calls=self.requests if reached else 0,
            errors=int(self.error),
            truncated=self.truncated,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            lm_seconds=self.seconds,
            cost=self.cost,
        )


class UsageMeter:
    """A thread-safe running total of :class:`Usage`, split by model name.

    Copies of an LM (``lm.copy(temperature=0.9)``) share their meter, and so does a deep copy: the
    meter counts a model's use, not an object's.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._by_model: dict[str, Usage] = {}
        self.parse_failure_example: str | None = None
        """The first answer that could not be parsed (one line, shortened), to show the user what went wrong."""
        self.truncated_caps: set[int] = set()
        """The token caps at which answers were cut (``usage.truncated`` counts them)."""
        self.truncated_at: Counter[int] = Counter()
        """How many answers were cut at each token cap (one meter's count less another's: who was cut where)."""

    def __deepcopy__(self, memo: dict) -> UsageMeter:
        return self

    def add(self, record: CallRecord) -> None:
        self._add(record.model, record.as_usage())
        if record.truncated and record.max_tokens:
            with self._lock:
                self.truncated_caps.add(record.max_tokens)
                self.truncated_at[record.max_tokens] += record.truncated

    def add_parse_failure(self, model: str, example: str | None = None) -> None:
        self._add(model, Usage(parse_failures=1))
        if example is not None and self.parse_failure_example is None:
            self.parse_failure_example = example

    def _add(self, model: str, usage: Usage) -> None:
        with self._lock:
            self._by_model[model] = self._by_model.get(model, Usage()) + usage

    @property
    def usage(self) -> Usage:
        """The total over every model this meter has seen."""
        with self._lock:
            return sum(self._by_model.values(), Usage())

    @property
    def by_model(self) -> dict[str, Usage]:
        with self._lock:
            return dict(self._by_model)

    def reset(self) -> None:
        with self._lock:
            self._by_model.clear()
            self.parse_failure_example = None
            self.truncated_caps = set()
            self.truncated_at = Counter()


BUDGETS = {"light": 150, "medium": 600, "heavy": 2400}
"""The presets of ``auto=`` (every teleprompter) and ``--budget``: LM requests per compile; the teleprompter
plans its knobs for them."""


class Limits(BaseModel):
    """Caps on a block of work. ``None`` means no cap.

    ``max_calls`` counts every request asked for, whether a model, DSPy's cache or the run's own
    record answered it, so a run stops at the same point whether it starts cold, warm or resumed.
    ``max_model_calls``, ``max_tokens`` and ``max_cost`` count what was really spent on the run,
    by every process that worked on it (a resumed run counts what the killed one spent).
    """

    max_model_calls: int | None = Field(default=None, ge=1)
    max_calls: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, gt=0)

    def reached(self, usage: Usage, upcoming: int = 1, spent_before: Usage | None = None, *, block: str = "") -> StopReason | None:
        """The cap ``usage`` (plus ``spent_before``, earlier processes' spending) plus ``upcoming`` more
        requests would pass, as the stop reason it gives (which cap, its value, one line prefixed with
        ``block``), or None.

        >>> Limits(max_calls=2).reached(Usage(calls=2), block="run").detail
        'run: cap of 2 LM requests (cached, replayed or not) reached or about to be passed'
        """
        spent = usage + spent_before if spent_before is not None else usage
        if self.max_model_calls is not None and spent.model_calls + upcoming > self.max_model_calls:
            return self._reason(block, "max_model_calls", f"cap of {self.max_model_calls} LM calls that reach a model reached")
        if self.max_calls is not None and usage.calls + upcoming > self.max_calls:
            return self._reason(block, "max_calls", f"cap of {self.max_calls} LM requests (cached, replayed or not) reached or about to be passed")
        if self.max_tokens is not None and spent.total_tokens >= self.max_tokens:
            return self._reason(block, "max_tokens", f"token cap of {self.max_tokens} reached")
        if self.max_cost is not None and spent.cost >= self.max_cost:
            return self._reason(block, "max_cost", f"cost cap of ${self.max_cost:.4f} reached")
        return None

    def exceeded_by(self, usage: Usage, upcoming: int = 1, spent_before: Usage | None = None) -> str | None:
        """Which cap ``usage`` plus ``upcoming`` more requests would pass, in words (see :meth:`reached`), or None."""
        reason = self.reached(usage, upcoming, spent_before)
        return None if reason is None else reason.detail

    def _reason(self, block: str, limit: str, text: str) -> StopReason:
        return StopReason.cap(f"{block}: {text}" if block else text, limit=limit, limit_value=getattr(self, limit))


class Room(NamedTuple):
    """What a block's caps leave this process (see :meth:`Block.room`); None where there is no such cap."""

    requests: int | None
    """LM requests left under ``max_calls`` (cached, replayed or not)."""
    model_calls: int | None
    """Model calls left under ``max_model_calls``: over every process of the run, other processes'
    reservations counted as spent, this process's own unused ones as its to use."""

    def allows(self, wanted: int) -> int:
        """How many of ``wanted`` requests fit under both (each may reach a model).

        >>> Room(requests=5, model_calls=2).allows(4)
        2
        """
        return min([wanted, *(left for left in self if left is not None)])


class SharedSpend(Protocol):
    """A run's count of model calls shared by every process working on it (see
    :class:`cuecard.engine.sharing.SQLClaims`): calls are reserved in it before they go out."""

    def reserve(self, wanted: int, cap: int, used: int) -> int:
        """Reserve up to ``wanted`` model calls without the run passing ``cap``; how many were granted.
        ``used`` is how many of this process's reservations it has spent so far."""
        ...

    def give_back(self, unused: int, used: int) -> None:
        """Return ``unused`` reserved calls to the run."""
        ...

    def run_reserved(self) -> int:
        """Model calls the run's count holds: made or reserved, by every process."""
        ...


class Block(UsageMeter):
    """A block of work opened by :func:`track`; may carry :class:`Limits`.

    ``spent_before`` is what earlier processes of the same run spent (read from the run's storage):
    caps on model calls, tokens and dollars include it. With ``spend`` (a run shared by several
    processes), each call that may reach a model is first reserved in the run's shared count, up to
    ``reserve_batch`` at a time, so the processes together never pass ``max_model_calls``; what a
    process reserved and did not use goes back with :meth:`give_back`.
    """

    def __init__(
        self,
        name: str = "",
        limits: Limits | None = None,
        spent_before: Usage | None = None,
        *,
        spend: SharedSpend | None = None,
        reserve_batch: int = 1,
    ) -> None:
        super().__init__(name)
        self.limits = limits or Limits()
        self.spent_before = spent_before or Usage()
        self.spend = spend
        self.reserve_batch = max(1, reserve_batch)
        self._spend_lock = threading.Lock()
        self._in_flight = 0
        self._reserved = 0
        """Model calls this process reserved in ``spend`` and has not given back (used ones included)."""

    def check(self, upcoming: int = 1) -> None:
        """Raise :class:`BudgetExhausted` when ``upcoming`` more requests would pass a cap of this block."""
        reason = self.limits.reached(self.usage, upcoming, self.spent_before, block=self.name or "block")
        if reason is not None:
            raise BudgetExhausted(reason)

    def start_calls(self, upcoming: int = 1) -> None:
        """Before ``upcoming`` requests that may reach a model: check the caps, counting the requests other
        threads have under way, and hold ``upcoming`` model calls (reserved in ``spend`` when shared)."""
        self.check(upcoming)
        cap = self.limits.max_model_calls
        if cap is None:
            return
        with self._spend_lock:
            used = self.usage.model_calls
            if self.spend is None:
                if self.spent_before.model_calls + used + self._in_flight + upcoming > cap:
                    raise BudgetExhausted(self.limits._reason(self.name or "block", "max_model_calls",
                                                              f"cap of {cap} LM calls that reach a model reached"))
            else:
                need = used + self._in_flight + upcoming - self._reserved
                if need > 0:
                    granted = self.spend.reserve(max(need, self.reserve_batch), cap, used)
                    self._reserved += granted
                    if granted < need:
                        raise BudgetExhausted(self.limits._reason(
                            self.name or "block", "max_model_calls",
                            f"cap of {cap} LM calls that reach a model reached (counted over every process of the run)",
                        ))
            self._in_flight += upcoming

    def room(self, *, model_calls: bool = True) -> Room:
        """What the caps leave this process: requests under ``max_calls``, and model calls under
        ``max_model_calls`` counted as :meth:`start_calls` counts them (the calls under way in other
        threads; in a run shared by several processes, the run's count, where other processes'
        reservations are spent, plus this process's reservations not used yet). ``model_calls=False``
        leaves the model calls out (no read of the run's shared count).

        Example:
            >>> Block("run", Limits(max_calls=10)).room()
            Room(requests=10, model_calls=None)
        """
        cap = self.limits.max_calls
        requests = None if cap is None else max(0, cap - self.usage.calls)
        cap = self.limits.max_model_calls
        if cap is None or not model_calls:
            return Room(requests, None)
        with self._spend_lock:
            used = self.usage.model_calls
            if self.spend is None:
                left = cap - self.spent_before.model_calls - used - self._in_flight
            else:
                left = cap - self.spend.run_reserved() + self._reserved - used - self._in_flight
        return Room(requests, max(0, left))

    def end_calls(self, upcoming: int = 1) -> None:
        """The requests of :meth:`start_calls` are over (their use is recorded)."""
        if self.limits.max_model_calls is None:
            return
        with self._spend_lock:
            self._in_flight -= upcoming

    def give_back(self) -> None:
        """Return to the run's shared count the model calls reserved and not used (none under way)."""
        if self.spend is None:
            return
        with self._spend_lock:
            used = self.usage.model_calls
            unused = self._reserved - used - self._in_flight
            if unused > 0:
                self.spend.give_back(unused, used)
                self._reserved -= unused


_active_blocks: contextvars.ContextVar[tuple[Block, ...]] = contextvars.ContextVar(
    "cuecard_usage_blocks", default=()
)


@contextlib.contextmanager
def track(name: str = "", limits: Limits | None = None) -> Iterator[Block]:
    """Open a block of work; every cuecard LM call inside it is added to the yielded :class:`Block`.

    Blocks nest: a call counts in every open block. With ``limits``, a call that would start after a
    cap has been reached raises :class:`~cuecard.errors.BudgetExhausted` instead of reaching the model.
    """
    with activate(Block(name, limits)) as block:
        yield block


@contextlib.contextmanager
def activate(block: Block) -> Iterator[Block]:
    """Make an existing block count the calls made inside (again); a block already open is not doubled."""
    active = _active_blocks.get()
    if any(open_block is block for open_block in active):
        yield block
        return
    token = _active_blocks.set(active + (block,))
    try:
        yield block
    finally:
        _active_blocks.reset(token)


def active_blocks() -> tuple[Block, ...]:
    return _active_blocks.get()


def check_limits(upcoming: int = 1) -> None:
    """Raise when ``upcoming`` more requests would pass a cap of any open block."""
    for block in _active_blocks.get():
        block.check(upcoming)


@contextlib.contextmanager
def model_call(requests: int = 1) -> Iterator[None]:
    """Around ``requests`` requests that may reach a model: raise :class:`BudgetExhausted` before them when
    they would pass a cap of an open block (counting the requests other threads have under way, and,
    in a run shared by several processes, reserving them in the run's count). Record the call's use
    inside, so a finished call is counted before its place is freed.

    >>> with model_call():
    ...     pass  # ask the model, then record(meter, CallRecord(...))
    """
    started: list[Block] = []
    try:
        for block in _active_blocks.get():
            block.start_calls(requests)
            started.append(block)
        yield
    finally:
        for block in started:
            block.end_calls(requests)


def record(meter: UsageMeter | None, call: CallRecord) -> None:
    """Add one call to the LM's own meter and to every open block."""
    if meter is not None:
        meter.add(call)
    for block in _active_blocks.get():
        block.add(call)


def record_parse_failure(meter: UsageMeter | None, model: str, answer: str | None = None, fields: str = "") -> None:
    """Count an answer the adapter could not read as the output fields; the first one is kept as an example
    (``fields``: what it was read as), one line and at most 200 characters."""
    example = None
    if answer is not None:
        line = " ".join(answer.split())
        example = f"{fields}: {line[:200]!r}" if fields else repr(line[:200])
    if meter is not None:
        meter.add_parse_failure(model, example)
    for block in _active_blocks.get():
        block.add_parse_failure(model, example)
