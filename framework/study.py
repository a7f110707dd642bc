"""The shared evaluation engine: every candidate is an Optuna trial.

A teleprompter proposes candidates (full assignments of instructions to predictors) and hands them
to an :class:`Engine`; a :mod:`policy <cuecard.policies>` decides which candidate is scored on
which examples; the engine runs the evaluator, stores every example's score in the trial, and
reports the running score after k examples as the trial's intermediate value at step k, so Optuna's
pruners and dashboard see the search as it happens.

Storage is any Optuna storage URL; the default is a SQLite file in the run directory. A run killed
midway and started again with the same run directory (or storage and name) continues where it was:
every finished example evaluation is read back, never redone.

Example:
    >>> import dspy
    >>> from cuecard.testing import scripted_lm
    >>> from cuecard.evaluate import Evaluator
    >>> from cuecard.policies import FullEvaluation
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

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import dspy
import optuna
from pydantic import BaseModel, Field

from .errors import BudgetExhausted, CuecardError
from .evaluate import ExampleScore
from .policies import Allocation, EvaluationBudgetSpent, Policy, rank
from .program import candidate_key
from .sharing import CREATE, open_claims
from .usage import Block, Limits, Usage, activate

logger = logging.getLogger(__name__)

ATTR = "cuecard."
SCORE = "s."
ERROR = "e."


class RunConfigMismatch(CuecardError, ValueError):
    """A run with this name already exists with a different configuration or data."""


class StorageError(CuecardError, RuntimeError):
    """The Optuna storage URL cannot be opened."""


class Scorer(Protocol):
    """What the engine needs from an evaluator: score a candidate on ``(index, example)`` pairs."""

    def run(self, candidate: Mapping[str, str], examples: Sequence[tuple[int, dspy.Example]]) -> list[ExampleScore]: ...


class CandidateRecord(BaseModel):
    """A candidate and its lineage, as stored in its trial's attributes."""

    key: str
    instructions: dict[str, str]
    parent: str | None = None
    round: int = 0
    origin: str = "seed"
    meta: dict[str, Any] = Field(default_factory=dict)


class Estimate(BaseModel):
    """A dry run's answer: example evaluations and LM calls an allocation would take at most."""

    candidates: int
    evaluations: int
    lm_calls: int


def data_fingerprint(examples: Sequence[dspy.Example]) -> str:
    """A hash of the examples, in order (a resumed run must see the same pool)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(dict(example.items()), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def default_storage(run_dir: str | os.PathLike[str]) -> str:
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(path / 'study.db').resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if url == "sqlite:///:memory:" or url == ":memory:":
        return optuna.storages.InMemoryStorage()
    kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            with _schema_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:  # sqlalchemy raises many kinds here
            racing = any(text in str(exc) for text in ("already exists", "UNIQUE constraint", "duplicate key"))
            if racing and attempt < 4:
                time.sleep(0.2 * (attempt + 1))  # another process is creating the schema right now
                continue
            raise StorageError(f"Cannot open the Optuna storage {url!r}: {exc}") from exc
    raise AssertionError("unreachable")


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """For a SQLite file, one process at a time creates Optuna's tables (they race otherwise)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: the retries in open_storage have to do
        fcntl = None
    if fcntl is None or not url.startswith("sqlite:///"):
        yield
        return

    path = Path(url[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Engine:
    """Scores candidates through Optuna trials with a policy; shared by every teleprompter.

    Args:
        scorer: the :class:`~cuecard.evaluate.Evaluator` (anything with its ``run``).
        examples: the example pool, in the order every arm walks through it.
        name: the study name (one run).
        storage: an Optuna storage URL; default a SQLite file ``study.db`` in ``run_dir``.
        run_dir: where the default storage lives (default ``runs/<name>``).
        config: the run's configuration; a resumed run must have the same.
        limits: caps on LM calls, tokens and dollars for everything run inside :meth:`session`.
        max_evaluations: a cap on example evaluations over the whole run.
        progress: show a progress bar.
        calls_per_example: LM calls one example evaluation takes (for estimates and caps).
        claim_timeout: seconds after which another process's unfinished claim on an evaluation is
            taken over (a claim of a dead process on the same host is taken over at once).

    Several processes may run the same study on one database storage (SQLite file, PostgreSQL):
    each candidate gets one trial and each example evaluation is done by one process, the others
    read its score back (see :mod:`cuecard.sharing`).
    """

    def __init__(
        self,
        scorer: Scorer,
        examples: Sequence[dspy.Example],
        *,
        name: str = "cuecard",
        storage: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        max_evaluations: int | None = None,
        progress: bool = True,
        calls_per_example: int = 1,
        claim_timeout: float = 900.0,
    ) -> None:
        if not examples:
            raise ValueError("The example pool is empty")
        self.limits = limits or Limits()
        if max_evaluations is not None and max_evaluations < 1:
            raise ValueError(f"max_evaluations={max_evaluations} is smaller than one example evaluation")
        for cap in (self.limits.max_model_calls, self.limits.max_calls):
            if cap is not None and cap < calls_per_example:
                raise ValueError(
                    f"An LM-call cap of {cap} is smaller than one example evaluation ({calls_per_example} call(s))"
                )
        self.scorer = scorer
        self.examples = list(examples)
        self.name = name
        self.max_evaluations = max_evaluations
        self.progress = progress
        self.calls_per_example = calls_per_example
        self.block = Block(name, self.limits)
        self.storage_url = storage or default_storage(run_dir or Path("runs") / name)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            study_name=name, storage=open_storage(self.storage_url), direction="maximize", load_if_exists=True
        )
        self._check_run(dict(config or {}))
        self.candidates: list[CandidateRecord] = []
        self._trial_ids: list[int] = []
        self._scores: list[dict[int, float]] = []
        self._errors: list[dict[int, str]] = []
        self._writable: list[bool] = []
        self._by_key: dict[str, int] = {}
        self.evaluations = 0
        self.side_evaluations = 0
        self.reused = 0
        self.claims = open_claims(self.storage_url, name, stale_after=claim_timeout)
        self.claim_poll = 0.2
        self._load_trials()

    # ---- run identity -------------------------------------------------------------------------
    def _check_run(self, config: dict[str, Any]) -> None:
        expected = {"config": json.loads(json.dumps(config, default=str)), "data": data_fingerprint(self.examples)}
        stored = self.study.user_attrs.get(ATTR + "run")
        if stored is None:
            self.study.set_user_attr(ATTR + "run", expected)
            return
        if stored["data"] != expected["data"]:
            raise RunConfigMismatch(
                f"Run {self.name!r} in {self.storage_url} was started on different examples "
                f"(fingerprint {stored['data']} vs {expected['data']}); use another run name"
            )
        if stored["config"] != expected["config"]:
            keys = sorted(
                k for k in set(stored["config"]) | set(expected["config"])
                if stored["config"].get(k) != expected["config"].get(k)
            )
            raise RunConfigMismatch(
                f"Run {self.name!r} in {self.storage_url} exists with a different configuration "
                f"(differs in {keys}); use another run name or the same settings"
            )

    def _load_trials(self) -> None:
        """Register the run's trials not known yet (all of them at start; other processes' later)."""
        known = set(self._trial_ids)
        for trial in sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number):
            record = trial.user_attrs.get(ATTR + "candidate")
            if record is None or trial._trial_id in known or record["key"] in self._by_key:  # noqa: SLF001
                continue
            scores = {int(k[len(SCORE):]): float(v) for k, v in trial.user_attrs.items() if k.startswith(SCORE)}
            errors = {int(k[len(ERROR):]): str(v) for k, v in trial.user_attrs.items() if k.startswith(ERROR)}
            self._register(CandidateRecord(**record), trial._trial_id, scores, errors, trial.state.is_finished() is False)  # noqa: SLF001

    def _register(self, record: CandidateRecord, trial_id: int, scores: dict, errors: dict, writable: bool) -> int:
        arm = len(self.candidates)
        self.candidates.append(record)
        self._trial_ids.append(trial_id)
        self._scores.append(scores)
        self._errors.append(errors)
        self._writable.append(writable)
        self._by_key[record.key] = arm
        return arm

    # ---- candidates ---------------------------------------------------------------------------
    def add_candidate(
        self,
        instructions: Mapping[str, str],
        *,
        parent: str | None = None,
        round: int = 0,  # noqa: A002 - the name the papers use
        origin: str = "seed",
        meta: Mapping[str, Any] | None = None,
    ) -> int:
        """Add a candidate (a trial) and return its arm id; a candidate already in the run keeps its id."""
        key = candidate_key(instructions)
        if key in self._by_key:
            return self._by_key[key]
        if self.claims.shared:
            self._load_trials()
            if key in self._by_key:
                return self._by_key[key]
            if not self.claims.claim(key, CREATE):
                return self._wait_for_candidate(key)
        record = CandidateRecord(
            key=key, instructions=dict(instructions), parent=parent, round=round, origin=origin, meta=dict(meta or {})
        )
        trial = self.study.ask()
        trial.set_user_attr(ATTR + "candidate", record.model_dump())
        return self._register(record, trial._trial_id, {}, {}, True)  # noqa: SLF001

    def _wait_for_candidate(self, key: str) -> int:
        """Another process is creating this candidate's trial: wait until it is there."""
        while key not in self._by_key:
            time.sleep(self.claim_poll)
            self._load_trials()
            if key not in self._by_key and self.claims.claim(key, CREATE):
                raise StorageError(f"Candidate {key} was claimed by a process that never created it; retry the run")
        return self._by_key[key]

    def arm_of(self, instructions: Mapping[str, str]) -> int | None:
        return self._by_key.get(candidate_key(instructions))

    def arm_of_key(self, key: str) -> int:
        """The arm id of the candidate with this key (``KeyError`` if the run has none)."""
        return self._by_key[key]

    def scores(self, arm: int) -> dict[int, float]:
        """The arm's score on every pool example it was evaluated on (pool index -> score)."""
        return dict(self._scores[arm])

    def errors(self, arm: int) -> dict[int, str]:
        return dict(self._errors[arm])

    def mean(self, arm: int, *, up_to: int | None = None) -> float:
        values = [v for i, v in self._scores[arm].items() if up_to is None or i < up_to]
        return sum(values) / len(values) if values else 0.0

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, arm: int, indices: Sequence[int], *, budget: int | None = None) -> list[float]:
        """Score ``arm`` on pool examples ``indices``; finished ones are read back, not redone."""
        missing = [i for i in indices if i not in self._scores[arm]]
        if missing and self.claims.shared:
            self._refresh_scores(arm)
            missing = [i for i in missing if i not in self._scores[arm]]
        if missing:
            if budget is not None and len(missing) > budget:
                missing = missing[:budget]
            if self.max_evaluations is not None:
                room = self.max_evaluations - self.evaluations
                if room <= 0:
                    raise EvaluationBudgetSpent
                missing = missing[:room]
            self.block.check()
            self._evaluate_claimed(arm, missing)
        self.reused += len(indices) - len(missing)
        return [self._scores[arm][i] for i in indices if i in self._scores[arm]]

    def _evaluate_claimed(self, arm: int, missing: list[int]) -> None:
        """Evaluate the examples this process can claim, in chunks; wait for other processes' scores."""
        key = self.candidates[arm].key
        chunk = max(1, getattr(self.scorer, "num_threads", 1)) if self.claims.shared else len(missing)
        while missing:
            mine: list[int] = []
            for index in missing:
                if self.claims.claim(key, index):
                    mine.append(index)
                    if len(mine) >= chunk:
                        break
            if mine:
                try:
                    with activate(self.block):
                        results = self.scorer.run(self.candidates[arm].instructions, [(i, self.examples[i]) for i in mine])
                except BaseException:
                    self.claims.release(key, mine)
                    raise
                self._store(arm, results)
            else:
                time.sleep(self.claim_poll)
                self._refresh_scores(arm)
            missing = [i for i in missing if i not in self._scores[arm]]

    def _refresh_scores(self, arm: int) -> None:
        """Read scores other processes stored for this arm."""
        trial = self.study._storage.get_trial(self._trial_ids[arm])  # noqa: SLF001
        for name, value in trial.user_attrs.items():
            if name.startswith(SCORE):
                self._scores[arm].setdefault(int(name[len(SCORE):]), float(value))
            elif name.startswith(ERROR):
                self._errors[arm].setdefault(int(name[len(ERROR):]), str(value))
        if trial.state.is_finished():
            self._writable[arm] = False

    def _store(self, arm: int, results: Sequence[ExampleScore]) -> None:
        for result in results:
            self._scores[arm][result.index] = result.score
            if result.error:
                self._errors[arm][result.index] = result.error
        self.evaluations += len(results)
        if self._writable[arm]:
            try:
                self._write_trial(arm, results)
            except (RuntimeError, ValueError):
                if not self.study._storage.get_trial(self._trial_ids[arm]).state.is_finished():  # noqa: SLF001
                    raise
                self._writable[arm] = False  # another process closed the trial; keep the scores in memory
        if self._bar is not None:
            self._bar.update(len(results))
            best = max((self.mean(a) for a in range(len(self.candidates)) if self._scores[a]), default=0.0)
            self._bar.set_postfix(candidates=len(self.candidates), best=f"{best:.3f}", lm_calls=self.block.usage.model_calls)

    _bar: Any = None

    def _write_trial(self, arm: int, results: Sequence[ExampleScore]) -> None:
        """Each example's score as a trial attribute; the running mean after k examples at step k."""
        trial_id = self._trial_ids[arm]
        storage = self.study._storage  # noqa: SLF001 - Optuna's public Trial API needs a live trial object
        for result in results:
            storage.set_trial_user_attr(trial_id, SCORE + str(result.index), result.score)
            if result.error:
                storage.set_trial_user_attr(trial_id, ERROR + str(result.index), result.error)
        trial = optuna.trial.Trial(self.study, trial_id)
        scored = sorted(self._scores[arm])
        reported = set(storage.get_trial(trial_id).intermediate_values)
        total = 0.0
        for step, index in enumerate(scored, start=1):
            total += self._scores[arm][index]
            if step not in reported:
                trial.report(total / step, step)

    def trace(self, instructions: Mapping[str, str], example: dspy.Example) -> Any:
        """A traced run of one example (see :meth:`cuecard.evaluate.Evaluator.trace`), under the run's caps."""
        self.block.check()
        with activate(self.block):
            return self.scorer.trace(instructions, example)

    def run_on(self, instructions: Mapping[str, str], examples: Sequence[dspy.Example]) -> list[ExampleScore]:
        """Score instructions on examples outside the pool (a method's minibatch); results are not stored.

        LM caps apply as for pool evaluations; the evaluations count in ``self.side_evaluations``.
        """
        self.block.check()
        with activate(self.block):
            results = self.scorer.run(instructions, list(enumerate(examples)))
        self.side_evaluations += len(results)
        return results

    def should_prune(self, arm: int) -> bool:
        if not self._writable[arm]:
            return False
        return optuna.trial.Trial(self.study, self._trial_ids[arm]).should_prune()

    # ---- allocation ---------------------------------------------------------------------------
    def allocate(self, policy: Policy, arms: Sequence[int] | None = None, budget: int | None = None) -> Allocation:
        """Run ``policy`` over ``arms`` (default: every candidate) and return its ranking (arm ids of the run)."""
        chosen = list(range(len(self.candidates))) if arms is None else list(arms)
        if not chosen:
            raise ValueError("No candidate to evaluate")
        view = _ArmsView(self, chosen, budget)
        self.study.pruner = policy.pruner() or optuna.pruners.NopPruner()
        total = policy.planned_evaluations(len(chosen), len(self.examples), budget)
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=f"{self.name}: {policy.name}", unit="ex", disable=not self.progress, leave=False)
        try:
            allocation = policy.run(view, budget)
        finally:
            self._bar.close()
            self._bar = None
        ranking = [estimate.model_copy(update={"arm": chosen[estimate.arm]}) for estimate in allocation.ranking]
        return allocation.model_copy(update={"ranking": ranking})

    def estimate(self, policy: Policy, n_candidates: int, budget: int | None = None) -> Estimate:
        """A dry run: the evaluations and LM calls an allocation over ``n_candidates`` would take at most."""
        evaluations = policy.planned_evaluations(n_candidates, len(self.examples), budget)
        return Estimate(candidates=n_candidates, evaluations=evaluations, lm_calls=evaluations * self.calls_per_example)

    @contextmanager
    def session(self) -> Iterator[Block]:
        """Count (and cap, with ``limits``) every LM call made inside, proposals included."""
        with activate(self.block):
            yield self.block

    @property
    def usage(self) -> Usage:
        return self.block.usage

    def ranking(self, arms: Sequence[int] | None = None, *, pruned: frozenset[int] = frozenset()) -> list[Any]:
        chosen = list(range(len(self.candidates))) if arms is None else list(arms)
        view = _ArmsView(self, chosen, None)
        return [e.model_copy(update={"arm": chosen[e.arm]}) for e in rank(view, frozenset(chosen.index(a) for a in pruned if a in chosen))]

    def finish(self, pruned: Sequence[int] = ()) -> None:
        """Close every open trial: COMPLETE with its mean score, PRUNED when eliminated, FAIL when never scored."""
        for arm, trial_id in enumerate(self._trial_ids):
            if not self._writable[arm]:
                continue
            self._writable[arm] = False
            if self.study._storage.get_trial(trial_id).state.is_finished():  # noqa: SLF001 - another process closed it
                continue
            trial = optuna.trial.Trial(self.study, trial_id)
            try:
                if not self._scores[arm]:
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                elif arm in pruned:
                    self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    self.study.tell(trial, self.mean(arm))
            except (RuntimeError, ValueError):
                if not self.study._storage.get_trial(trial_id).state.is_finished():  # noqa: SLF001
                    raise


class _ArmsView:
    """The :class:`~cuecard.policies.Arms` a policy sees: a subset of the engine's candidates."""

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

    def scores(self, arm: int) -> list[float]:
        """Scores on the pool's first examples, up to the first one not scored yet."""
        scores = self.engine._scores[self.arms[arm]]  # noqa: SLF001
        prefix = []
        while len(prefix) in scores:
            prefix.append(scores[len(prefix)])
        return prefix

    def count(self, arm: int) -> int:
        return len(self.scores(arm))

    def mean(self, arm: int) -> float:
        scores = self.scores(arm)
        return sum(scores) / len(scores) if scores else 0.0

    def evaluate_to(self, arm: int, n: int) -> None:
        n = min(n, self.pool_size)
        room = None if self.budget is None else self.budget - self.spent
        wanted = [i for i in range(n) if i not in self.engine._scores[self.arms[arm]]]  # noqa: SLF001
        if not wanted:
            return
        if room is not None and room <= 0:
            raise EvaluationBudgetSpent
        self.engine.evaluate(self.arms[arm], wanted, budget=room)
        if room is not None and len(wanted) > room:
            raise EvaluationBudgetSpent

    def should_prune(self, arm: int) -> bool:
        return self.engine.should_prune(self.arms[arm])


__all__ = [
    "BudgetExhausted",
    "CandidateRecord",
    "Engine",
    "Estimate",
    "RunConfigMismatch",
    "StorageError",
    "data_fingerprint",
]
