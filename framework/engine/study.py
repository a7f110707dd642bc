"""The shared evaluation engine: every candidate is an Optuna trial.

A teleprompter proposes candidates (full assignments of instructions to predictors) and hands them
to an :class:`Engine`; a :mod:`policy <cuecard.policies>` decides which candidate is scored on
which examples; the engine runs the evaluator, stores every example's score in the trial, and
reports the running score after k examples as the trial's intermediate value at step k, so Optuna's
pruners and dashboard see the search as it happens.

Exact resume. A run is identified by its :class:`~cuecard.identity.RunIdentity`; a stored score is
reused only under an equal identity. Decisions are made on the scores the search has *seen* in this
process, in the order it asked for them: a score already in the storage (written before a kill, or
by another process) is read back when the search reaches it, never before, so a resumed run takes
exactly the path of an uninterrupted one, spends no evaluation twice, and counts the read-back
evaluations and their LM requests against its budgets as the first run did. Every other LM reply
of the compile (proposals, minibatch runs, traces) is kept in the run's record and replayed
(:mod:`cuecard.clients.record`). A failed evaluation is stored as a failure with its reason, counts as 0 for
the decision in progress, and is retried by the next run.

Example:
    >>> import dspy
    >>> from cuecard.clients.testing import scripted_lm
    >>> from cuecard.engine.evaluate import Evaluator
    >>> from cuecard.engine.policies import FullEvaluation
    >>> program = dspy.Predict(dspy.Signature("q -> a", "Answer."))
    >>> lm = scripted_lm(lambda messages: "yes")
    >>> data = [dspy.Example(q=str(i), a="yes").with_inputs("q") for i in range(4)]
    >>> engine = Engine(Evaluator(program, lambda e, p, t=None: p.a == e.a, task_lm=lm), data,
    ...                 storage="sqlite:///:memory:", progress=False)
    >>> arm = engine.add_candidate({"self": "Answer yes."}, origin="seed")
    >>> engine.allocate(FullEvaluation()).best.mean
    1.0
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import dspy
import optuna
from pydantic import BaseModel, Field

from ..clients.record import StoredReply, not_recorded, recording
from ..clients.usage import Block, CallRecord, Limits, Usage, activate, record
from ..errors import BudgetExhausted, ConfigError, RunConfigMismatch, StorageError
from ..identity import (
    RunIdentity,
    adapter_identity,
    data_fingerprint,
    lm_identity,
    metric_identity,
    program_structure,
)
from ..program import candidate_key
from ..redact import redact_text, redact_url
from ..stopping import StopKind, StopReason
from .acceptance import Acceptance, AcceptanceRule
from .evaluate import ExampleScore, Metric, Objective, TracedRun, describe_failures, failure_reason
from .policies import Allocation, EvaluationBudgetSpent, Policy, rank
from .rescoring import check_stored_scores
from .sharing import CREATE, open_claims
from .store import RunStore, StoredTrial

logger = logging.getLogger(__name__)

ATTR = "cuecard."
CANDIDATE = ATTR + "candidate"
IDENTITY = ATTR + "run"
STATUS = ATTR + "status"
SPENT = ATTR + "spent."
REPLY = "r."
REPLY_CLAIM = "reply:"
SCORE = "s."
DETAIL = "x."
FAILURE = "f."
STORE_BATCH = 4
"""Scores stored in one transaction at most (or one per thread, with more threads)..."""
STORE_EVERY = 1.0
"""... unless this many seconds have passed since the last store."""
CLAIM_SHARE = 6
"""A claim takes at most this fraction (1/6) of the pairs of a pool still unclaimed."""


class Scorer(Protocol):
    """What the engine needs from an evaluator (:class:`~cuecard.engine.evaluate.Evaluator` is one): score a candidate on
    ``(index, example)`` pairs, and what the run's identity and the caps read. A scorer of your own may subclass
    it and write only :meth:`run`: the other members then keep their defaults (no program, model or adapter to
    name, one thread, no failure check, no traced run). A scorer may also offer ``run_many`` (several candidates
    as one pool, as the evaluator's), which the engine uses when it is there.

    Example:
        >>> class Constant(Scorer):
        ...     def run(self, candidate, examples):
        ...         return [ExampleScore(index=index, score=1.0) for index, _ in examples]
        >>> results, stop = Constant().run_partial({"self": "Answer."}, [(0, None)])
        >>> [result.score for result in results], stop
        ([1.0], None)
    """

    program: dspy.Module | None = None
    """The program scored (its structure is part of the run identity)."""
    metric: Metric | None = None
    """The metric (part of the run identity; a run's stored predictions are scored again with it on opening)."""
    objective: Objective = "metric"
    task_lm: dspy.LM | None = None
    """The model the program runs on (its identity; the model read-back scores are counted for)."""
    adapter: dspy.Adapter | None = None
    num_threads: int = 1
    """Examples scored at once (how many results the engine stores together, and model calls reserved at a time)."""

    def run(self, candidate: Mapping[str, str], examples: Sequence[tuple[int, dspy.Example]]) -> list[ExampleScore]: ...

    def run_partial(
        self, candidate: Mapping[str, str], examples: Sequence[tuple[int, dspy.Example]]
    ) -> tuple[list[ExampleScore], BudgetExhausted | None]:
        """Like :meth:`run`, but a cap reached midway returns the examples finished before it with the stop."""
        return self.run(candidate, examples), None

    def trace(self, candidate: Mapping[str, str], example: dspy.Example) -> TracedRun:
        """One example run with every predictor's inputs and outputs kept (see :meth:`cuecard.engine.evaluate.Evaluator.trace`)."""
        raise ConfigError(f"the scorer {type(self).__name__} cannot trace a run of the program")

    def check_failures(self) -> None:
        """Raise :class:`~cuecard.errors.EvaluationFailed` when too many evaluations failed (default: never)."""


def missing_scorer_members(scorer: Any) -> list[str]:
    """The :class:`Scorer` members ``scorer`` lacks (a scorer that subclasses it lacks none)."""
    members = [*Scorer.__annotations__, *(name for name, value in vars(Scorer).items() if callable(value))]
    return [name for name in dict.fromkeys(members) if not name.startswith("_") and not hasattr(scorer, name)]


class CandidateRecord(BaseModel):
    """A candidate and its lineage, as stored in its trial's attributes."""

    key: str
    instructions: dict[str, str]
    parent: str | None = None
    round: int = 0
    origin: str = "seed"
    meta: dict[str, Any] = Field(default_factory=dict)


class StoredScore(BaseModel):
    """An example's stored score, the program's output on it, and the LM requests it took."""

    score: float
    output: dict[str, str] | None = None
    requests: int = 0
    exact: bool = Field(False, description="the prediction can be rebuilt: from `prediction`, else from `output`")
    prediction: dict[str, Any] | None = Field(None, description="the prediction's fields, when `output` does not hold them exactly")

    def rebuilt(self) -> dict[str, Any] | None:
        """The prediction's fields as the metric saw them, or None when they were not kept exactly."""
        if not self.exact:
            return None
        return self.prediction if self.prediction is not None else self.output


class Estimate(BaseModel):
    """A dry run's answer: example evaluations and LM calls an allocation would take at most."""

    candidates: int
    evaluations: int
    lm_calls: int


class RunStatus(BaseModel):
    """Where a run stands, as stored in its study (``cuecard runs`` shows it)."""

    state: str = Field(description="running, finished, stopped (a cap) or failed")
    reason: str | None = None
    stop: str | None = Field(None, description="why a finished search stopped before its end, if it did (one line)")
    failures: dict[str, int] = Field(default_factory=dict)
    updated: str = ""


@dataclass
class Arm:
    """One candidate of this process's search: its record, its trial, and its scores."""

    record: CandidateRecord
    trial_id: int
    stored: dict[int, StoredScore] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    open: bool = True
    reported: int = 0
    """Running scores this process stored (steps 1..reported)."""


def default_storage(run_dir: str | os.PathLike[str]) -> str:
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(path / 'study.db').resolve()}"


def evaluation_identity(scorer: Scorer, examples: Sequence[dspy.Example]) -> RunIdentity:
    """The identity of scoring with ``scorer`` (an :class:`~cuecard.engine.evaluate.Evaluator`) on ``examples``."""
    return RunIdentity(
        objective=scorer.objective,
        task_model=lm_identity(scorer.task_lm),
        adapter=adapter_identity(scorer.adapter),
        program=program_structure(scorer.program) if scorer.program is not None else None,
        metric=metric_identity(scorer.metric),
        data=data_fingerprint(examples),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _StoreRecord:
    """The run's record of LM replies, kept in the study (see :mod:`cuecard.clients.record`).

    When several processes work on one run, the first to reach a request claims it and asks the LM;
    the others wait for its reply to appear in the study (a dead or stalled claimer is taken over),
    so every proposal is asked for once and every process goes on with the same one.
    """

    def __init__(self, engine: Engine, replies: dict[str, StoredReply]) -> None:
        self.engine = engine
        self.replies = replies

    def get(self, key: str) -> StoredReply | None:
        reply = self.replies.get(key)
        claims = self.engine.claims
        if reply is not None or not claims.shared:
            return reply
        claim = REPLY_CLAIM + key[:48]
        while True:
            self.engine.refresh_run()
            if key in self.replies:
                return self.replies[key]
            if claims.claim(claim, CREATE):
                return None  # this process asks the LM; put() stores the reply for the others
            claims.wait(self.engine.claim_poll)

    def put(self, key: str, reply: StoredReply) -> None:
        self.replies[key] = reply
        self.engine.store.set_study_attr(REPLY + key, reply.model_dump())
        if self.engine.claims.shared:
            self.engine.notify()
        self.engine.save_spending()

    def abandon(self, key: str) -> None:
        """The call for ``key`` failed: give its claim back, so another process (or a later run) asks again."""
        if self.engine.claims.shared:
            self.engine.claims.release(REPLY_CLAIM + key[:48], [CREATE])


def check_run_name(name: str, what: str = "run_name") -> str:
    """``name`` if it is a plain name (it becomes a folder under ``runs/``), else a :class:`ConfigError`:
    no path separator, no ``..``, not empty.

    >>> check_run_name("ape-sentiment")
    'ape-sentiment'
    """
    text = str(name)
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if not text.strip() or ".." in text or "\0" in text or any(sep in text for sep in separators) or text == ".":
        raise ConfigError(f"{what} {text!r}: a run name is a name, not a path (no '/', '\\' or '..')")
    return text


class Engine:
    """Scores candidates through Optuna trials with a policy; shared by every teleprompter.

    Args:
        scorer: the :class:`~cuecard.engine.evaluate.Evaluator`, or any :class:`Scorer`.
        examples: the example pool, in the order every arm walks through it.
        name: the study name (one run).
        storage: an Optuna storage URL; default a SQLite file ``study.db`` in ``run_dir``.
        run_dir: where the default storage lives (default ``runs/<name>``).
        identity: what makes this run this run (:class:`~cuecard.identity.RunIdentity`, default:
            the evaluator's model, adapter, program, metric and the pool); a stored run with another
            identity is refused with :class:`~cuecard.errors.RunConfigMismatch` naming what differs.
        limits: caps on LM calls, tokens and dollars for everything run inside :meth:`session`.
        max_evaluations: a cap on example evaluations over the whole run.
        progress: show a progress bar.
        calls_per_example: LM calls one example evaluation takes (for estimates and caps).
        claim_timeout: seconds without a heartbeat after which another process's claim on an
            evaluation is taken over (a claim of a dead process on the same host is taken over at once).

    Several processes may run the same study on one database storage (SQLite file, PostgreSQL):
    each candidate gets one trial and each example evaluation is done by one process, the others
    read its score back (see :mod:`cuecard.engine.sharing`).
    """

    def __init__(
        self,
        scorer: Scorer,
        examples: Sequence[dspy.Example],
        *,
        name: str = "cuecard",
        storage: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        identity: RunIdentity | Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        max_evaluations: int | None = None,
        progress: bool = True,
        calls_per_example: int = 1,
        claim_timeout: float = 60.0,
    ) -> None:
        if not examples:
            raise ConfigError("The example pool is empty")
        missing = missing_scorer_members(scorer)
        if missing:
            raise ConfigError(f"The scorer {type(scorer).__name__} lacks {', '.join(missing)}: see cuecard.engine.study.Scorer (subclass it for the defaults)")
        check_run_name(name)
        limits = limits or Limits()
        if max_evaluations is not None and max_evaluations < 1:
            raise ConfigError(f"max_evaluations={max_evaluations} is smaller than one example evaluation")
        for cap in (limits.max_model_calls, limits.max_calls):
            if cap is not None and cap < calls_per_example:
                raise ConfigError(
                    f"An LM-call cap of {cap} is smaller than one example evaluation ({calls_per_example} call(s))"
                )
        self.scorer = scorer
        self.examples = list(examples)
        self.name = name
        self.max_evaluations = max_evaluations
        self.progress = progress
        self.calls_per_example = calls_per_example
        self.storage_url = storage or default_storage(run_dir or Path("runs") / name)
        self.store = RunStore(self.storage_url, name)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        attrs = self.store.study_attrs()
        self.identity = self._check_identity(identity, attrs)
        self.spent_before = self._spent_by_others(attrs)
        self.block = Block(name, limits, spent_before=self.spent_before["all"])
        self.prompt_block = Block(f"{name}: prompt model")
        self.record = _StoreRecord(
            self, {key[len(REPLY):]: StoredReply(**value) for key, value in attrs.items() if key.startswith(REPLY)}
        )
        self.arms: list[Arm] = []
        self._by_key: dict[str, int] = {}
        self._trials: dict[str, StoredTrial] = {}
        self.evaluations = 0
        """Example scores the search has looked at in this process (computed or read back): its position."""
        self.computed = 0
        """Example evaluations this process ran itself."""
        self.read_back = 0
        """Example scores read back from the storage (an earlier run, or another process)."""
        self.side_evaluations = 0
        self.failures: Counter[str] = Counter()
        self.claims = open_claims(self.storage_url, name, stale_after=claim_timeout)
        if self.claims.shared and limits.max_model_calls is not None:
            # model calls are reserved in the run's shared count, a few at a time (see cuecard.engine.sharing)
            self.claims.join_spend(self.spent_before["all"].model_calls, working=False)
            self.block.spend = self.claims
            self.block.reserve_batch = max(4, scorer.num_threads)
        self.claim_poll = 0.2
        self.finish_wait = claim_timeout
        """Seconds :meth:`finish` waits at most for the run's other processes to end their compile."""
        self._pruner: optuna.pruners.BasePruner | None = None
        self._bar: Any = None
        self._best = 0.0
        self.phase = ""
        """What the search does now ("step 2/3"), shown on the progress bars."""
        self.proposals_planned: int | None = None
        """Prompt-model requests the search plans (the proposing bar's total), when the method can tell."""
        self.proposals_asked = 0
        self._proposal_bar: Any = None
        self._saved_at = 0.0
        self._load_trials(whole=True)
        check_stored_scores(self)

    # ---- run identity -------------------------------------------------------------------------
    def _check_identity(self, identity: RunIdentity | Mapping[str, Any] | None, attrs: dict[str, Any]) -> RunIdentity:
        if identity is None:
            identity = evaluation_identity(self.scorer, self.examples)
        elif not isinstance(identity, RunIdentity):
            identity = RunIdentity(extras={"config": dict(identity)}, data=data_fingerprint(self.examples))
        expected = {"identity": identity.as_stored(), "pool": data_fingerprint(self.examples)}
        stored = attrs.get(IDENTITY)
        if stored is None:
            self.store.set_study_attr(IDENTITY, expected)
            return identity
        if not isinstance(stored, dict) or "identity" not in stored:
            raise RunConfigMismatch(
                f"Run {self.name!r} in {redact_url(self.storage_url)} was made by an older cuecard and holds no run identity; "
                "use another run name"
            )
        differences = identity.differences(stored["identity"])
        if stored.get("pool") != expected["pool"]:
            differences.append(f"pool: the dev examples differ (fingerprint {expected['pool']} here, {stored.get('pool')} stored)")
        if differences:
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            raise RunConfigMismatch(
                f"Run {self.name!r} in {redact_url(self.storage_url)} exists with another identity: {shown}. Its scores "
                "cannot be reused: use another run name (or none: each identity gets its own)"
            )
        return identity

    def _load_trials(self, *, whole: bool = False) -> None:
        """Learn the run's stored candidates: with ``whole``, every trial as stored (at start: the scores are
        checked); else only the candidates' records (other processes' new ones, while the search runs)."""
        for trial in self.store.trials() if whole else self.store.trials_with(CANDIDATE):
            record = trial.attrs.get(CANDIDATE)
            if record is not None:
                self._trials.setdefault(record["key"], trial)

    @staticmethod
    def _arm_from_trial(trial: StoredTrial) -> Arm:
        arm = Arm(record=CandidateRecord(**trial.attrs[CANDIDATE]), trial_id=trial.trial_id, open=not trial.finished)
        _read_scores(arm, trial)
        return arm

    # ---- candidates ---------------------------------------------------------------------------
    @property
    def candidates(self) -> list[CandidateRecord]:
        """The candidates of this search, in the order they were added (arm ids index this list)."""
        return [arm.record for arm in self.arms]

    def add_candidate(
        self,
        instructions: Mapping[str, str],
        *,
        parent: str | None = None,
        round: int = 0,  # noqa: A002 - the name the papers use
        origin: str = "seed",
        meta: Mapping[str, Any] | None = None,
    ) -> int:
        """Add a candidate (a trial) and return its arm id; a candidate already in the run keeps its trial."""
        key = candidate_key(instructions)
        if key in self._by_key:
            return self._by_key[key]
        if key not in self._trials and self.claims.shared:
            self._load_trials()
            if key not in self._trials and not self.claims.claim(key, CREATE):
                self._wait_for_trial(key)
        trial = self._trials.get(key)
        if trial is not None:  # its record and scores, not the whole trial
            arm = self._arm_from_trial(self.store.score_attrs([trial.trial_id], (CANDIDATE, SCORE, DETAIL, FAILURE))[trial.trial_id])
        else:
            record = CandidateRecord(
                key=key, instructions=dict(instructions), parent=parent, round=round, origin=origin, meta=dict(meta or {})
            )
            texts = {name: text for name, text in record.instructions.items() if not name.endswith(".demos")}
            readable = {("instruction" if len(texts) == 1 else f"instruction.{name}"): text for name, text in texts.items()}
            attrs = {CANDIDATE: record.model_dump(), **readable}
            arm = Arm(record=record, trial_id=self.store.new_trial(attrs))
            self._trials[key] = StoredTrial(trial_id=arm.trial_id, number=-1, attrs=attrs, finished=False, state="RUNNING")  # as created: no read back
            if self.claims.shared:
                self.notify()
        self.arms.append(arm)
        self._by_key[key] = len(self.arms) - 1
        return len(self.arms) - 1

    def _wait_for_trial(self, key: str) -> None:
        """Another process is creating this candidate's trial: wait until it is there."""
        while key not in self._trials:
            self.claims.wait(self.claim_poll)
            self._load_trials()
            if key not in self._trials and self.claims.claim(key, CREATE):
                return  # its creator died: this process creates it

    def arm_of(self, instructions: Mapping[str, str]) -> int | None:
        return self._by_key.get(candidate_key(instructions))

    def arm_of_key(self, key: str) -> int:
        """The arm id of the candidate with this key (``KeyError`` if the search has none)."""
        return self._by_key[key]

    def scores(self, arm: int) -> dict[int, float]:
        """The arm's scores the search has seen (pool index -> score; a failure counts 0)."""
        return dict(self.arms[arm].seen)

    def errors(self, arm: int) -> dict[int, str]:
        """The arm's failed evaluations met in this process (pool index -> reason)."""
        return dict(self.arms[arm].errors)

    def outputs(self, arm: int) -> dict[int, dict[str, str] | None]:
        """The program's stored output on each pool example the arm was scored on."""
        return {index: stored.output for index, stored in self.arms[arm].stored.items()}

    def mean(self, arm: int, *, up_to: int | None = None) -> float:
        values = [v for i, v in self.arms[arm].seen.items() if up_to is None or i < up_to]
        return sum(values) / len(values) if values else 0.0

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, arm: int, indices: Sequence[int], *, budget: int | None = None) -> list[float]:
        """Score ``arm`` on pool examples ``indices``: stored scores are read back, missing ones computed.

        ``budget`` and ``max_evaluations`` count every score the search looks at for the first time
        in this process (computed or read back), so a resumed run stops where the first one did.
        """
        self.evaluate_many([(arm, indices)], budget=budget)
        state = self.arms[arm]
        return [state.seen[i] for i in indices if i in state.seen]

    def evaluate_many(self, requests: Sequence[tuple[int, Sequence[int]]], *, budget: int | None = None) -> bool:
        """Score several arms, each on its pool examples, as one pool of (candidate, example) pairs.

        The pairs are planned in the order a search scoring the arms one after another would meet
        them, and that plan is cut where ``budget``, ``max_evaluations`` or the cap on requests
        would have stopped it (each evaluation counted at ``calls_per_example`` requests); then every
        stored score of the plan is read back and the missing ones are computed together, on the
        evaluator's threads. Stored scores, decisions and where a cap stops are those of the serial
        order, so a resumed run takes the same path. Returns True when ``budget`` cut the plan (the
        search's own evaluation budget is spent); a cap raises :class:`BudgetExhausted` once the
        planned pairs are done.

        Example:
            >>> engine.evaluate_many([(0, range(5)), (1, range(5))])  # doctest: +SKIP
            False
        """
        plan, cut, stop = self._plan(requests, budget)
        if plan:
            if self.claims.shared:
                self._refresh_many(list(dict.fromkeys(a for a, i in plan if i not in self.arms[a].stored)))
            for arm, index in plan:
                if index in self.arms[arm].stored:
                    self._read_back(arm, index)
            missing = [(arm, index) for arm, index in plan if index not in self.arms[arm].seen]
            if missing:
                self.block.check()
                self._evaluate_claimed(missing)
        if stop is not None:
            raise stop
        return cut

    def _plan(
        self, requests: Sequence[tuple[int, Sequence[int]]], budget: int | None
    ) -> tuple[list[tuple[int, int]], bool, BudgetExhausted | None]:
        """The pairs a serial walk over ``requests`` would score before a budget or cap stops it;
        whether ``budget`` cut it; the cap's stop, if one was met."""
        plan: list[tuple[int, int]] = []
        planned: set[tuple[int, int]] = set()
        evaluations, calls = self.evaluations, self.block.usage.calls
        requests_left, per_example = self.block.room(model_calls=False).requests, self.calls_per_example
        for arm, indices in requests:
            seen = self.arms[arm].seen
            wanted = [i for i in dict.fromkeys(indices) if i not in seen and (arm, i) not in planned]
            if not wanted:
                continue
            if budget is not None:
                room = budget - len(plan)
                if room <= 0:
                    return plan, True, None
                if len(wanted) > room:
                    return plan + [(arm, i) for i in wanted[:room]], True, None
            if self.max_evaluations is not None:
                room = self.max_evaluations - evaluations
                if room <= 0:
                    return plan, False, BudgetExhausted(StopReason.cap(
                        f"{self.name}: cap of {self.max_evaluations} example evaluations reached",
                        limit="max_evaluations", limit_value=self.max_evaluations,
                    ))
                wanted = wanted[:room]
            if requests_left is not None:
                # every process reaches the same point of the run: no worker computes past the examples the
                # cap affords along the search's order, whichever it gets to first
                room = requests_left // per_example
                if room <= 0:
                    usage = self.block.usage.model_copy(update={"calls": calls})
                    reason = self.block.limits.reached(usage, per_example, self.block.spent_before, block=self.block.name or "block")
                    return plan, False, BudgetExhausted(reason or "")
                wanted = wanted[:room]
            plan += [(arm, i) for i in wanted]
            planned.update(plan[-len(wanted):])
            evaluations += len(wanted)
            calls += len(wanted) * per_example
            if requests_left is not None:
                requests_left -= len(wanted) * per_example
        return plan, False, None

    def _read_back(self, arm: int, index: int) -> None:
        """Use a stored score; its LM requests count against the caps as when it was computed."""
        stored = self.arms[arm].stored[index]
        if stored.requests:
            self.block.check(stored.requests)
            model = getattr(self.scorer.task_lm, "model", "task")
            with activate(self.block):
                record(None, CallRecord(model=model, requests=stored.requests, replayed=True))
        self.read_back += 1
        self._see(arm, index, stored.score)

    def _see(self, arm: int, index: int, score: float, error: str | None = None) -> None:
        state = self.arms[arm]
        state.seen[index] = score
        if error is not None:
            state.errors[index] = error
        self.evaluations += 1
        if self._bar is not None:
            self._bar.update(1)
            if len(state.seen) >= min(5, len(self.examples)):
                self._best = max(self._best, self.mean(arm))
            self._bar.set_postfix(best=f"{self._best:.3f}", lm_calls=self.block.usage.model_calls, refresh=False)

    def _evaluate_claimed(self, missing: list[tuple[int, int]]) -> None:
        """Compute the (arm, example) pairs as one pool across arms, each claimed by a thread as it starts
        on it (so workers sharing the run split a stage pair by pair, whatever their threads); then wait
        for the scores of the pairs other processes hold."""
        wait = self.claim_poll
        longest = 2.0 if self.claims.channel is not None else 0.8  # notified (PostgreSQL), else polled
        while missing:
            computed = self._compute(missing)
            missing = [(arm, index) for arm, index in missing if index not in self.arms[arm].seen]
            if missing and not computed:  # other live processes hold these claims: use what they store
                self.claims.wait(wait)  # on PostgreSQL, until a process stores scores
                wait = min(2 * wait, longest)  # back off while they work; a score read resets it
                self._refresh_many(list(dict.fromkeys(a for a, _ in missing)))
                for arm, index in missing:
                    state = self.arms[arm]
                    if index in state.stored and index not in state.seen:
                        self._read_back(arm, index)
                        wait = self.claim_poll
                    elif index in state.failed and index not in state.seen:
                        self._see(arm, index, 0.0, state.failed[index])
                missing = [(arm, index) for arm, index in missing if index not in self.arms[arm].seen]

    def _compute(self, pairs: list[tuple[int, int]]) -> int:
        """Run the pairs this process can claim together; store their scores as they come (a chunk at a
        time); give back claims on what was not done. Returns how many pairs this process computed.

        With other processes on the run, a thread about to score a pair not yet claimed claims it with
        the next pairs of the pool in one statement: at most as many as a store holds (one per thread,
        at least ``STORE_BATCH``), and at most a ``CLAIM_SHARE``-th of the pairs still unclaimed, so
        workers arriving together split even a small stage."""
        by_arm: dict[int, list[int]] = {}
        for arm, index in pairs:
            by_arm.setdefault(arm, []).append(index)
        arms = list(by_arm)
        jobs = [(self.arms[arm].record.instructions, [(i, self.examples[i]) for i in by_arm[arm]]) for arm in arms]
        claimed: set[tuple[int, int]] = set()
        pending: list[tuple[int, ExampleScore]] = []
        lock, claiming = threading.Lock(), threading.Lock()
        threads = max(1, self.scorer.num_threads)
        batch = max(STORE_BATCH, threads)
        flushed = [time.monotonic(), False]  # last flush, pool over
        order = [(job, index) for job, arm in enumerate(arms) for index in by_arm[arm]]
        position = {pair: number for number, pair in enumerate(order)}
        decided: dict[tuple[int, int], bool] = {}

        def flush() -> None:
            grouped: dict[int, list[ExampleScore]] = {}
            for arm, result in pending:
                grouped.setdefault(arm, []).append(result)
            pending.clear()
            if grouped:
                self._store_many(grouped)
            flushed[0] = time.monotonic()

        def claim_chunk(job: int, index: int) -> None:
            undecided = [pair for pair in order[position[(job, index)]:] if pair not in decided]
            size = max(1, min(batch, -(-len(undecided) // CLAIM_SHARE)))
            chunk = undecided[:size]
            keys = [(self.arms[arms[j]].record.key, i) for j, i in chunk]
            won = self.claims.claim_many(keys)
            for pair, key in zip(chunk, keys, strict=True):
                decided[pair] = key in won
            with lock:  # held from now on: given back at the end unless stored, even if no thread reaches it
                claimed.update((arms[j], i) for (j, i), key in zip(chunk, keys, strict=True) if key in won)

        def claim(job: int, index: int) -> bool:
            arm = arms[job]
            with claiming:
                if (job, index) not in decided:
                    claim_chunk(job, index)
                if not decided[(job, index)]:
                    return False
            if (self.arms[arm].record.key, index) in getattr(self.claims, "taken", ()):  # from a dead process: its
                with lock:  # score may be stored already
                    self._refresh(arm)
                    if index in self.arms[arm].stored:
                        return False
            with lock:
                claimed.add((arm, index))
            return True

        def on_done(job: int, result: ExampleScore) -> None:
            with lock:
                if flushed[1]:
                    return
                pending.append((arms[job], result))
                if len(pending) >= batch or time.monotonic() - flushed[0] > STORE_EVERY:
                    flush()

        claim_each = claim if self.claims.shared else None
        try:
            with activate(self.block), not_recorded():
                results, stop = self._run_many(jobs, claim_each, on_done)
        except BaseException:
            with lock:
                flushed[1] = True
            self._release({arm: [i for a, i in claimed if a == arm and i not in self.arms[arm].stored] for arm in arms})
            raise
        with lock:
            flushed[1] = True
            flush()
            late = {}
            for arm, scored in zip(arms, results, strict=True):
                late_here = [r for r in scored if r.index not in self.arms[arm].seen]  # timed out: returned only
                if late_here:
                    late[arm] = late_here
            if late:
                self._store_many(late)
        undone = {}
        for arm in arms:
            state = self.arms[arm]
            mine = [i for i in by_arm[arm] if (arm, i) in claimed or claim_each is None]
            undone[arm] = [i for i in mine if i not in state.stored]  # failed or not reached: free to retry
        self._release(undone)
        if stop is not None:
            raise stop
        self.scorer.check_failures()
        return sum(len(scored) for scored in results)

    def _release(self, undone: Mapping[int, list[int]]) -> None:
        """Give back this process's claims on the arms' pairs it did not store."""
        for arm, indices in undone.items():
            if indices:
                self.claims.release(self.arms[arm].record.key, indices)

    def _run_many(
        self,
        jobs: list[tuple[dict[str, str], list[tuple[int, dspy.Example]]]],
        claim: Any = None,
        on_done: Any = None,
    ) -> tuple[list[list[ExampleScore]], BudgetExhausted | None]:
        run_many = getattr(self.scorer, "run_many", None)
        if run_many is not None:
            return run_many(jobs, claim=claim, on_done=on_done)
        results: list[list[ExampleScore]] = []
        for job, (instructions, examples) in enumerate(jobs):
            wanted = [(i, e) for i, e in examples if claim is None or claim(job, i)]
            done, stop = self._run(instructions, wanted)
            results.append(done)
            if stop is not None:
                return results + [[] for _ in jobs[len(results):]], stop
        return results, None

    def _run(self, instructions: dict[str, str], examples: list[tuple[int, dspy.Example]]) -> tuple[list[ExampleScore], BudgetExhausted | None]:
        return self.scorer.run_partial(instructions, examples)

    def _refresh(self, arm: int) -> None:
        """Read scores other processes stored for this arm."""
        self._refresh_many([arm])

    def _refresh_many(self, arms: Sequence[int]) -> None:
        """Read scores other processes stored for these arms (their scores only, in one read)."""
        if not arms:
            return
        trials = self.store.score_attrs([self.arms[arm].trial_id for arm in arms], (SCORE, DETAIL, FAILURE))
        for arm in arms:
            state = self.arms[arm]
            trial = trials.get(state.trial_id)
            if trial is None:
                continue
            _read_scores(state, trial)
            if trial.finished:
                state.open = False

    def _store(self, arm: int, results: Sequence[ExampleScore]) -> None:
        self._store_many({arm: list(results)})

    def _store_many(self, grouped: Mapping[int, Sequence[ExampleScore]]) -> None:
        """Store the arms' results (scores, details, failures) and their running scores in one transaction."""
        writes: dict[int, tuple[dict[str, Any], dict[int, float]]] = {}
        for arm, results in grouped.items():
            state = self.arms[arm]
            attrs: dict[str, Any] = {}
            for result in results:
                self.computed += 1
                if result.failed:
                    reason = failure_reason(result.error or "")
                    self.failures[reason] += 1
                    state.failed[result.index] = result.error or ""
                    attrs[FAILURE + str(result.index)] = result.error
                else:
                    stored = _stored_score(result)
                    state.stored[result.index] = stored
                    state.failed.pop(result.index, None)
                    attrs[DETAIL + str(result.index)] = stored.model_dump(exclude={"score"}, exclude_defaults=True)  # first: a score is read
                    attrs[SCORE + str(result.index)] = result.score  # only once its detail is there
                self._see(arm, result.index, result.score, result.error)
            if state.open and attrs:
                writes[state.trial_id] = (attrs, self._running(arm))
        if writes:
            closed = self.store.write_trials(writes, notify=self.claims.channel)
            for arm in grouped:
                if self.arms[arm].trial_id in closed:
                    self.arms[arm].open = False
        self.save_spending()

    def _running(self, arm: int) -> dict[int, float]:
        """The running mean after k stored examples, at step k (what Optuna's pruners and dashboard read),
        for the steps not reported yet by this process."""
        state = self.arms[arm]
        total, values = 0.0, {}
        for step, index in enumerate(sorted(state.stored), start=1):
            total += state.stored[index].score
            if step > state.reported:
                values[step] = total / step
        state.reported = max(state.reported, len(state.stored))
        return values

    def trace(self, instructions: Mapping[str, str], example: dspy.Example) -> Any:
        """A traced run of one example (see :meth:`cuecard.engine.evaluate.Evaluator.trace`), under the run's caps."""
        self.block.check()
        with activate(self.block), recording(self.record):
            return self.scorer.trace(instructions, example)

    def run_on(self, instructions: Mapping[str, str], examples: Sequence[dspy.Example]) -> list[ExampleScore]:
        """Score instructions on examples outside the pool (a method's minibatch); scores are not stored,
        but the LM replies are kept in the run's record (a rerun replays them).

        LM caps apply as for pool evaluations; the evaluations count in ``self.side_evaluations``.
        """
        self.block.check()
        with activate(self.block), recording(self.record):
            results = self.scorer.run(instructions, list(enumerate(examples)))
        self.side_evaluations += len(results)
        return results

    def should_prune(self, arm: int) -> bool:
        state = self.arms[arm]
        if not state.open:
            return False
        return self.store.should_prune(state.trial_id, self._pruner)

    def record_rungs(self, arms: Sequence[int]) -> set[int]:
        """:meth:`should_prune` for a stage's arms at once (one read of the run's trials, one write): the arms the
        pruner would prune."""
        open_arms = {self.arms[arm].trial_id: arm for arm in arms if self.arms[arm].open}
        return {open_arms[trial_id] for trial_id in self.store.record_rungs(list(open_arms), self._pruner)}

    # ---- allocation ---------------------------------------------------------------------------
    def allocate(self, policy: Policy, arms: Sequence[int] | None = None, budget: int | None = None) -> Allocation:
        """Run ``policy`` over ``arms`` (default: every candidate) and return its ranking (arm ids of the run)."""
        chosen = list(range(len(self.arms))) if arms is None else list(arms)
        if not chosen:
            raise ConfigError("No candidate to evaluate")
        view = _ArmsView(self, chosen, budget)
        self._pruner = policy.pruner()
        total = self._planned_under_caps(policy.planned_evaluations(len(chosen), len(self.examples), budget))
        self.end_proposing()
        self.status(f"scoring {len(chosen)} candidate(s) with {policy.name}: at most {total} example evaluations")
        with self.scoring_bar(f"scoring {len(chosen)} with {policy.name}", total) as closing:
            allocation = policy.run(view, budget)
            closing["capped"] = allocation.capped
        ranking = [estimate.model_copy(update={"arm": chosen[estimate.arm]}) for estimate in allocation.ranking]
        return allocation.model_copy(update={"ranking": ranking})

    @contextmanager
    def scoring_bar(self, what: str, total: int) -> Iterator[dict[str, StopReason | None]]:
        """A progress bar for one phase of scoring, labelled with the search's step; it closes at 100% (its total
        becomes the evaluations made: a policy that prunes makes fewer than it may) or with the cap that stopped
        it early, set by the caller as ``closing["capped"]``, and stays on screen."""
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.end_proposing()
        label = f"{self.phase}: {what}" if self.phase else what
        self._bar = tqdm(total=total, desc=f"{self.name}: {label}", unit="ex", disable=not self.progress, leave=True)
        closing: dict[str, StopReason | None] = {"capped": None}
        try:
            with logging_redirect_tqdm():  # library warnings print above the bar, not through it
                yield closing
        except BudgetExhausted as exc:
            closing["capped"] = exc.reason
            raise
        finally:
            bar, self._bar = self._bar, None
            capped = closing["capped"]
            if capped is not None and bar.n < (bar.total or 0):
                bar.set_description_str(f"{self.name}: {label}: stopped early ({capped.detail})", refresh=False)
            elif bar.n != bar.total:
                bar.set_description_str(f"{self.name}: {label}: {bar.n} evaluations (of at most {bar.total})", refresh=False)
                bar.total = bar.n
            bar.close()

    def proposal_asked(self) -> None:
        """Count one prompt-model request on the proposing bar (opened at the first request of a phase)."""
        if not self.progress:
            self.proposals_asked += 1
            return
        if self._proposal_bar is None:
            from tqdm.auto import tqdm

            planned = self.proposals_planned
            total = planned if planned is not None and planned > self.proposals_asked else None
            label = f"{self.phase}: proposing" if self.phase else "proposing"
            self._proposal_bar = tqdm(total=total, initial=self.proposals_asked, desc=f"{self.name}: {label}",
                                      unit="request", leave=False)
        self.proposals_asked += 1
        self._proposal_bar.update(1)

    def end_proposing(self) -> None:
        """Close the proposing bar (scoring starts, or the search ends)."""
        if self._proposal_bar is not None:
            self._proposal_bar.close()
            self._proposal_bar = None

    def _planned_under_caps(self, evaluations: int) -> int:
        """``evaluations``, or fewer when a cap on requests or evaluations leaves room for fewer."""
        requests_left = self.block.room(model_calls=False).requests
        if requests_left is not None:
            evaluations = min(evaluations, requests_left // self.calls_per_example)
        if self.max_evaluations is not None:
            evaluations = min(evaluations, max(0, self.max_evaluations - self.evaluations))
        return evaluations

    def status(self, text: str) -> None:
        """A line saying what the run does now (with progress on), printed above any progress bar."""
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(f"cuecard: {self.name}: {text}", file=sys.stderr)

    def estimate(self, policy: Policy, n_candidates: int, budget: int | None = None) -> Estimate:
        """A dry run: the evaluations and LM calls an allocation over ``n_candidates`` would take at most."""
        evaluations = policy.planned_evaluations(n_candidates, len(self.examples), budget)
        return Estimate(candidates=n_candidates, evaluations=evaluations, lm_calls=evaluations * self.calls_per_example)

    @contextmanager
    def session(self) -> Iterator[Block]:
        """Count (and cap, with ``limits``) every LM call made inside, proposals included; replay and
        record the run's LM replies; mark the run as running in its storage."""
        self.set_status("running")
        if self.claims.shared:
            self.claims.join_spend(self.spent_before["all"].model_calls)
        try:
            with activate(self.block), recording(self.record):
                yield self.block
        finally:
            try:
                self.block.give_back()
            except Exception as exc:  # never lose a compile over its accounting; a dead process's is reclaimed
                logger.warning("could not give back the run's unused reservations: %s", redact_text(str(exc)))
            self.save_spending(force=True)
            if self.claims.shared:  # after the spending is saved: a process waiting for this one then reads it
                try:
                    self.claims.leave_spend()
                except Exception as exc:
                    logger.warning("could not mark this process's part of the run as ended: %s", redact_text(str(exc)))
            self.store.checkpoint()

    @contextmanager
    def proposing(self) -> Iterator[Block]:
        """Inside, LM calls are also counted as the prompt model's (the report splits task and prompt use)."""
        with activate(self.prompt_block):
            yield self.prompt_block

    # ---- what the run spent -------------------------------------------------------------------
    def _spent_by_others(self, attrs: dict[str, Any]) -> dict[str, Usage]:
        totals = {"all": Usage(), "prompt": Usage()}
        for key, value in attrs.items():
            if key.startswith(SPENT) and key != SPENT + self.owner and isinstance(value, dict):
                for part in totals:
                    totals[part] = totals[part] + Usage(**value.get(part, {}))
        return totals

    def save_spending(self, *, force: bool = False) -> None:
        """Write this process's real spending (not what it replayed) to the run's storage, at most once a
        second; when other processes share the run, read theirs, so caps on model calls, tokens and
        dollars hold for the whole run."""
        now = time.monotonic()
        if not force and now - self._saved_at < 1.0:
            return
        self._saved_at = now
        spent = {"all": _real(self.block.usage).model_dump(), "prompt": _real(self.prompt_block.usage).model_dump()}
        try:
            self.store.set_study_attr(SPENT + self.owner, spent)
            if self.claims.shared:
                self.refresh_run()
        except Exception as exc:  # never lose a compile over its accounting
            logger.warning("could not save the run's spending: %s", redact_text(str(exc)))

    def notify(self) -> None:
        """Wake the run's other processes waiting for something this one stored (PostgreSQL; they poll elsewhere)."""
        try:
            self.claims.notify()
        except Exception as exc:  # they find it on their next poll
            logger.info("could not notify the run's other processes: %s", redact_text(str(exc)))

    def refresh_run(self) -> None:
        """Read what other processes stored in the run's study: LM replies, and what they spent."""
        attrs = self.store.study_attrs()
        for key, value in attrs.items():
            if key.startswith(REPLY) and key[len(REPLY):] not in self.record.replies:
                self.record.replies[key[len(REPLY):]] = StoredReply(**value)
        self.spent_before = self._spent_by_others(attrs)
        self.block.spent_before = self.spent_before["all"]

    def run_usage(self) -> tuple[Usage, Usage]:
        """What the whole run spent (every process, this one included): (all, prompt model)."""
        return (
            self.spent_before["all"] + _real(self.block.usage),
            self.spent_before["prompt"] + _real(self.prompt_block.usage),
        )

    def _wait_for_others(self) -> None:
        """Wait (at most ``finish_wait`` seconds) until no other live process's compile of this run is under
        way, then read what they spent: the run's usage is then the same in every process's report."""
        if not self.claims.shared:
            return
        deadline = time.monotonic() + self.finish_wait
        said = False
        try:
            while others := self.claims.others_working():
                if time.monotonic() > deadline:
                    logger.warning("%d other process(es) still work on run %s: the run's usage reported here "
                                   "is what was stored by now", len(others), self.name)
                    break
                if not said:
                    self.status(f"waiting for {len(others)} other process(es) to end their part of the run")
                    said = True
                time.sleep(self.claim_poll)
            self.refresh_run()
        except Exception as exc:  # never lose a compile over its accounting
            logger.warning("could not read the run's usage: %s", redact_text(str(exc)))

    def calls_to_cover(self, arm: int) -> int:
        """LM requests scoring ``arm`` on every pool example it has not been scored on may take (what
        :meth:`compare` may still spend on the seed, for a search deciding whether to go on)."""
        return (len(self.examples) - len(self.arms[arm].seen)) * self.calls_per_example

    def compare(self, arm: int, seed_arm: int, rule: AcceptanceRule) -> Acceptance:
        """The rule's decision on ``arm`` against ``seed_arm``, on the same examples.

        Both are first scored on every pool example either was scored on (read back or computed, under
        the run's caps: a cap reached leaves the comparison to the examples both have). Failed
        evaluations are left out: a failure is not a score.
        """
        if arm == seed_arm:
            return Acceptance(accepted=True, rule=rule.name, reason="the seed itself is the best candidate")
        union = sorted(set(self.arms[arm].seen) | set(self.arms[seed_arm].seen))
        missing = sum(i not in self.arms[a].seen for a in (seed_arm, arm) for i in union)
        bar = self.scoring_bar("the winner against the seed", self._planned_under_caps(missing)) if missing else nullcontext()
        cut_short = None
        try:
            with activate(self.block), bar:
                self.evaluate_many([(seed_arm, union), (arm, union)])
        except BudgetExhausted as exc:
            cut_short = exc.reason
        candidate, seed = self.arms[arm], self.arms[seed_arm]
        decision = rule.decide(
            {i: s for i, s in candidate.seen.items() if i not in candidate.errors},
            {i: s for i, s in seed.seen.items() if i not in seed.errors},
        )
        return decision.model_copy(update={"cut_short": cut_short})

    # ---- the end of a run ---------------------------------------------------------------------
    def set_status(self, state: str, reason: str | None = None, stop: str | None = None) -> None:
        status = RunStatus(state=state, reason=reason, stop=stop, failures=dict(self.failures), updated=_now())
        self.store.set_study_attr(STATUS, status.model_dump())

    def ranking(self, arms: Sequence[int] | None = None, *, pruned: frozenset[int] = frozenset()) -> list[Any]:
        chosen = list(range(len(self.arms))) if arms is None else list(arms)
        view = _ArmsView(self, chosen, None)
        return [e.model_copy(update={"arm": chosen[e.arm]}) for e in rank(view, frozenset(chosen.index(a) for a in pruned if a in chosen))]

    def close(self) -> None:
        """End this process's part in the run's sharing: the claims' heartbeat stops and their connections (the
        notification listener's included) close. The compile calls it once the run is finished or failed."""
        self.claims.close()

    def finish(
        self,
        pruned: Sequence[int] = (),
        *,
        capped: StopReason | None = None,
        failed: str | None = None,
        stop_reason: StopReason | None = None,
    ) -> None:
        """Record how the search ended.

        A search that ran to its end closes its trials: ``COMPLETE`` with the mean score the search
        saw, ``PRUNED`` when eliminated or never scored (user attribute ``cuecard.status`` says
        which). Trials with failed evaluations stay open, so the next run can retry them and store
        the scores. A search stopped by a cap (``capped``, the cap's stop reason, or a ``stop_reason`` a
        larger cap lifts: a cap, or no room left under it) or by failures (``failed``) closes nothing:
        the same command with a larger cap continues and stores into the same trials. The run's status
        keeps the stop reason's one line (``cuecard runs`` shows it).
        """
        self.save_spending(force=True)
        if failed is not None:
            self.set_status("failed", failed)
            return
        self._wait_for_others()
        by_cap = stop_reason if stop_reason is not None and stop_reason.by_cap else capped
        if by_cap is not None:
            self.set_status("stopped", by_cap.text)
            return
        closes: list[tuple[int, str, float | None]] = []
        for number, state in enumerate(self.arms):
            if not state.open or state.failed:
                continue
            if not state.seen and not state.stored:
                self.store.set_trial_attrs(state.trial_id, {STATUS: "not scored"})
                closes.append((state.trial_id, "PRUNED", None))
            elif number in pruned:
                self.store.set_trial_attrs(state.trial_id, {STATUS: "pruned"})
                closes.append((state.trial_id, "PRUNED", None))
            else:
                seen = state.seen or {i: s.score for i, s in state.stored.items()}
                closes.append((state.trial_id, "COMPLETE", sum(seen.values()) / len(seen)))
            state.open = False
        self.store.close_many(closes)
        pending = open_failures(trial.attrs for trial in self.store.trials())  # every process's, as stored now
        reason = f"{pending} failed evaluation(s) left open: the next run retries them" if pending else None
        early = stop_reason is not None and stop_reason.kind != StopKind.FINISHED
        self.set_status("finished", reason, stop_reason.text if early else None)
        self.store.checkpoint()

    @property
    def failure_summary(self) -> str:
        return describe_failures(self.failures)


def _real(usage: Usage) -> Usage:
    """What was really spent: the requests that were not replayed from the run's record."""
    return usage.model_copy(update={"calls": usage.calls - usage.replayed, "replayed": 0})


def _stored_score(result: ExampleScore) -> StoredScore:
    """What a run keeps of a scored example: its score, its output as shown, its requests, and the
    exact prediction when JSON holds it (kept apart only when the shown output differs from it)."""
    output = _short_output(result.output)
    exact = result.prediction is not None
    prediction = result.prediction if exact and result.prediction != output else None
    return StoredScore(score=result.score, output=output, requests=result.requests, exact=exact, prediction=prediction)


def _short_output(output: dict[str, str] | None, limit: int = 2000) -> dict[str, str] | None:
    if output is None:
        return None
    return {key: value if len(value) <= limit else value[:limit] + "..." for key, value in output.items()}


def open_failures(trials_attrs: Iterable[Mapping[str, Any]]) -> int:
    """Failed evaluations a run's trials hold with no score stored since (what its next run retries)."""
    return sum(
        1
        for attrs in trials_attrs
        for name in attrs
        if name.startswith(FAILURE) and SCORE + name[len(FAILURE):] not in attrs
    )


def _read_scores(arm: Arm, trial: StoredTrial) -> None:
    for name, value in trial.attrs.items():
        if name.startswith(SCORE):
            index = int(name[len(SCORE):])
            detail = trial.attrs.get(DETAIL + str(index))
            if detail is None:
                continue  # another process is writing it (detail first, then score): read it next time
            arm.stored[index] = StoredScore(score=float(value), **detail)
            arm.failed.pop(index, None)
        elif name.startswith(FAILURE):
            index = int(name[len(FAILURE):])
            if SCORE + str(index) not in trial.attrs:
                arm.failed[index] = str(value)


class _ArmsView:
    """The :class:`~cuecard.engine.policies.Arms` a policy sees: a subset of the engine's candidates."""

    def __init__(self, engine: Engine, arms: list[int], budget: int | None) -> None:
        self.engine = engine
        self.arms = arms
        self.budget = budget
        self.start = engine.evaluations

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    @property
    def pool_size(self) -> int:
        return len(self.engine.examples)

    @property
    def spent(self) -> int:
        return self.engine.evaluations - self.start

    def scores(self, arm: int, up_to: int | None = None) -> list[float]:
        """Scores on the pool's first examples, up to the first one not seen yet (and at most ``up_to``)."""
        seen = self.engine.arms[self.arms[arm]].seen
        prefix: list[float] = []
        while len(prefix) in seen and (up_to is None or len(prefix) < up_to):
            prefix.append(seen[len(prefix)])
        return prefix

    def count(self, arm: int) -> int:
        return len(self.scores(arm))

    def mean(self, arm: int, up_to: int | None = None) -> float:
        scores = self.scores(arm, up_to)
        return sum(scores) / len(scores) if scores else 0.0

    def missing(self, arm: int, n: int) -> int:
        """How many of pool examples 0..n-1 the arm has not been scored on."""
        seen = self.engine.arms[self.arms[arm]].seen
        return sum(1 for i in range(min(n, self.pool_size)) if i not in seen)

    def evaluate_to(self, arm: int, n: int) -> None:
        self.evaluate_stage([(arm, n)])

    def evaluate_stage(self, targets: Sequence[tuple[int, int]]) -> None:
        """Score each ``(arm, n)`` on pool examples 0..n-1 (those not scored yet), every arm's missing
        examples as one pool, in the order scoring the arms one after another would take them."""
        requests = [(self.arms[arm], range(min(n, self.pool_size))) for arm, n in targets]
        room = None if self.budget is None else self.budget - self.spent
        if room is not None and room <= 0:
            if any(i not in self.engine.arms[arm].seen for arm, indices in requests for i in indices):
                raise EvaluationBudgetSpent
            return
        if self.engine.evaluate_many(requests, budget=room):
            raise EvaluationBudgetSpent

    def should_prune(self, arm: int) -> bool:
        return self.engine.should_prune(self.arms[arm])

    def record_rungs(self, arms: Sequence[int]) -> set[int]:
        """The stage's arms to the pruner at once (:meth:`Engine.record_rungs`); the ones it would prune."""
        pruned = self.engine.record_rungs([self.arms[arm] for arm in arms])
        return {arm for arm in arms if self.arms[arm] in pruned}


__all__ = [
    "BudgetExhausted",
    "CandidateRecord",
    "Engine",
    "Estimate",
    "RunConfigMismatch",
    "check_run_name",
    "RunStatus",
    "StorageError",
    "StoredScore",
    "data_fingerprint",
    "evaluation_identity",
]
