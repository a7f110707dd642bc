"""A run's storage: the one module that talks to Optuna's study and storage objects.

A run is an Optuna study. Each candidate is a trial whose user attributes hold its record
(instructions, lineage), every example's score (``s.<i>``), its output and LM requests
(``x.<i>``) and every failed evaluation with its reason (``f.<i>``, retried by a later run). The
study's user attributes hold the run identity, its status, what each process spent, and the LM
replies the run was given (``r.<key>``), so a resumed or repeated compile replays them.

Storages: any Optuna storage URL (SQLite file, PostgreSQL, MySQL), or ``:memory:``.

Example:
    >>> store = RunStore(":memory:", "demo")
    >>> trial = store.new_trial({"cuecard.candidate": {"key": "k"}})
    >>> store.set_trial_attrs(trial, {"s.0": 1.0})
    True
    >>> store.trial(trial).attrs["s.0"]
    1.0
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..errors import StorageError
from ..redact import redact_text, redact_url
from .store_postgres import one_statement

logger = logging.getLogger(__name__)

OBJECTIVE_NAME = "dev score"
_OPEN = ("RUNNING", "WAITING")
"""Optuna's states of a trial still taking scores."""
TESTED_OPTUNA = (4, 6)
"""Optuna major versions this module was written and tested against (``>= 4, < 6``)."""


@dataclass
class StoredTrial:
    """One trial as read from the storage."""

    trial_id: int
    number: int
    attrs: dict[str, Any]
    finished: bool
    state: str
    intermediate: dict[int, float] = field(default_factory=dict)


def _as_read(trial_id: int, number: int, state: str, attrs: dict[str, Any]) -> StoredTrial:
    """A trial as a narrow read returns it: some of its user attributes and its state."""
    return StoredTrial(trial_id=trial_id, number=number, attrs=attrs, finished=state not in _OPEN, state=state)


@dataclass
class StoredRun:
    """One run as read from a storage by ``cuecard runs``: its name, its study attributes and its trials."""

    name: str
    attrs: dict[str, Any]
    trials: list[StoredTrial]


def stored_runs(url: str) -> Iterator[StoredRun]:
    """Every run stored at ``url``, read only (nothing is created or changed).

    Example:
        >>> [run.name for run in stored_runs("sqlite:///runs/ape-1234/study.db")]  # doctest: +SKIP
        ['ape-1234']
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        trials = [RunStore._stored(trial) for trial in study.get_trials(deepcopy=False)]  # noqa: SLF001
        yield StoredRun(summary.study_name, dict(study.user_attrs), trials)


def is_database(url: str) -> bool:
    """True for a database URL several processes can share (not ``:memory:``)."""
    return url not in (":memory:", "sqlite:///:memory:") and "://" in url


def _racing(exc: BaseException) -> bool:
    """Another process is creating Optuna's tables right now (the error is transient)."""
    return any(text in str(exc) for text in ("already exists", "UNIQUE constraint", "duplicate key"))


def database_url(url: str) -> str:
    """``postgresql://`` names SQLAlchemy's psycopg2 driver; with only psycopg 3 installed (cuecard's
    ``postgres`` extra), use that one."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; clear :class:`StorageError` when it cannot be opened."""
    if not is_database(url):
        return optuna.storages.InMemoryStorage()
    url = database_url(url)
    kwargs: dict[str, Any] = {} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}}
    lock = None
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")  # one process at a time creates the tables (they race otherwise)
    try:
        for attempt in Retrying(
            retry=retry_if_exception(_racing), stop=stop_after_attempt(5), wait=wait_exponential(0.2, max=2), reraise=True
        ):
            with attempt:
                if lock is None:
                    storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                    ping_when_idle(storage.engine)
                    return storage
                with lock:
                    return _write_ahead_log(optuna.storages.RDBStorage(url, engine_kwargs=kwargs))
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"Cannot open the Optuna storage {redact_url(url)!r}: the database driver {exc.name!r} is not installed "
            "(for PostgreSQL: pip install 'cuecard[postgres]')"
        ) from exc
    except Exception as exc:  # sqlalchemy raises many kinds here
        raise StorageError(f"Cannot open the Optuna storage {redact_url(url)!r}: {redact_text(str(exc))}") from None
    raise AssertionError("unreachable")


IDLE_BEFORE_PING = 20.0
"""Seconds a pooled database connection may sit unused before its next checkout checks it is alive."""


def ping_when_idle(engine: Any, idle: float = IDLE_BEFORE_PING) -> None:
    """Check a pooled connection is alive before use only when it sat unused for ``idle`` seconds (a
    connection the server or a network dropped is then replaced, not handed out).

    SQLAlchemy's ``pool_pre_ping`` checks at every checkout: one more round trip per transaction, a third
    of a busy run's traffic with the database. A connection in steady use is alive; one idle for a while
    (a long model call, a worker waiting) is the one a restart or a timeout may have closed.
    """
    import sqlalchemy as sa

    @sa.event.listens_for(engine, "checkin")
    def used(dbapi_connection: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("used_at", time.monotonic()) < idle:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as exc:  # the driver's own error: the pool replaces the connection and tries again
            raise sa.exc.DisconnectionError(str(exc)) from exc


def write_ahead_log(engine: Any) -> None:
    """SQLite in write-ahead-log mode with ``synchronous=NORMAL`` on a SQLAlchemy engine: a commit survives
    a killed process (not a power cut) and costs no disk flush, so storing each evaluation as it
    finishes stays cheap; readers in other processes do not block the writer."""
    import sqlalchemy

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections made before the listener reconnect with it


def _write_ahead_log(storage: optuna.storages.RDBStorage) -> optuna.storages.RDBStorage:
    write_ahead_log(storage.engine)
    return storage


class RunStore:
    """A run's study and trials behind a narrow interface (Optuna's storage API is used here only)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = open_storage(url)
        self.study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize", load_if_exists=True)
        self._study_id = self.study._study_id  # noqa: SLF001 - Optuna has no public accessor
        self._one_statement = one_statement(self.storage, self._study_id)
        """PostgreSQL: the frequent requests as one statement each (see :mod:`cuecard.engine.store_postgres`)."""
        if self.study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([OBJECTIVE_NAME])

    @property
    def shared(self) -> bool:
        """Other processes may work on this run (a database storage)."""
        return is_database(self.url)

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into ``study.db``, so the file alone holds the run (to copy it,
        or open it with optuna-dashboard elsewhere)."""
        if not self.url.startswith("sqlite:///") or not hasattr(self.storage, "engine"):
            return
        try:
            with self.storage.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:  # another process is reading: the log is folded in later
            logger.info("no WAL checkpoint now: %s", exc)

    # ---- the study ---------------------------------------------------------------------------------
    def study_attrs(self) -> dict[str, Any]:
        """The study's user attributes as stored now."""
        if self._one_statement is not None:
            return self._one_statement.study_attrs()
        return dict(self.storage.get_study_user_attrs(self._study_id))

    def set_study_attr(self, key: str, value: Any) -> None:
        if self._one_statement is not None:
            self._one_statement.set_study_attr(key, value)
            return
        self.storage.set_study_user_attr(self._study_id, key, value)

    # ---- trials --------------------------------------------------------------------------------------
    def trials(self) -> list[StoredTrial]:
        return [self._stored(t) for t in self.storage.get_all_trials(self._study_id, deepcopy=False)]

    def trial(self, trial_id: int) -> StoredTrial:
        return self._stored(self.storage.get_trial(trial_id))

    def trials_with(self, key: str) -> list[StoredTrial]:
        """The trials holding user attribute ``key``, with only that attribute (and their state): the run's
        candidates, listed without every trial's scores.

        Example:
            >>> store = RunStore(":memory:", "demo")
            >>> trial = store.new_trial({"candidate": {"key": "k"}, "s.0": 1.0})
            >>> [t.attrs for t in store.trials_with("candidate")]
            [{'candidate': {'key': 'k'}}]
        """
        if self._one_statement is not None:
            return [_as_read(trial_id, number, state, {key: value}) for trial_id, number, state, value in self._one_statement.trials_with(key)]
        return [
            StoredTrial(trial_id=t.trial_id, number=t.number, attrs={key: t.attrs[key]}, finished=t.finished, state=t.state)
            for t in self.trials() if key in t.attrs
        ]

    @staticmethod
    def _stored(trial: optuna.trial.FrozenTrial) -> StoredTrial:
        return StoredTrial(
            trial_id=trial._trial_id,  # noqa: SLF001
            number=trial.number,
            attrs=dict(trial.user_attrs),
            finished=trial.state.is_finished(),
            state=trial.state.name,
            intermediate=dict(trial.intermediate_values),
        )

    def new_trial(self, attrs: dict[str, Any]) -> int:
        """A RUNNING trial created with its attributes in one step (a process killed midway leaves no
        trial without its record)."""
        if self._one_statement is not None:
            return self._one_statement.new_trial(attrs)
        import datetime

        template = optuna.trial.FrozenTrial(
            number=-1, state=optuna.trial.TrialState.RUNNING, value=None,
            datetime_start=datetime.datetime.now(), datetime_complete=None, params={}, distributions={},
            user_attrs=dict(attrs), system_attrs={}, intermediate_values={}, trial_id=-1,
        )
        return self.storage.create_new_trial(self._study_id, template_trial=template)

    def set_trial_attrs(self, trial_id: int, attrs: dict[str, Any]) -> bool:
        """Write attributes of an open trial; False when the trial was closed (by another process)."""
        try:
            if not self._set_in_one_transaction(trial_id, attrs):
                for key, value in attrs.items():
                    self.storage.set_trial_user_attr(trial_id, key, value)
        except (RuntimeError, ValueError):
            if not self.trial(trial_id).finished:
                raise
            return False
        return True

    def _set_in_one_transaction(self, trial_id: int, attrs: dict[str, Any]) -> bool:
        """Every attribute in one transaction (a chunk of scores is stored whole or not at all, with one
        commit); False when the storage is not Optuna's RDB storage of a known shape."""
        return self._attrs_in_one_transaction([(trial_id, key, value) for key, value in attrs.items()], system=False)

    def _attrs_in_one_transaction(self, writes: list[tuple[int, str, Any]], *, system: bool) -> bool:
        """``(trial_id, key, value)`` user (or, with ``system``, system) attributes in one transaction; False when
        the storage is not Optuna's RDB storage of a known shape."""
        storage = self.storage
        write = getattr(storage, "_set_trial_attr_without_commit", None)
        if write is None or not hasattr(storage, "scoped_session"):
            return False
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
        with _create_scoped_session(storage.scoped_session, True) as session:
            for trial_id, key, value in writes:
                write(session, model, trial_id, key, value)
        return True

    def write_trials(self, writes: dict[int, tuple[dict[str, Any], dict[int, float]]], *, notify: str | None = None) -> set[int]:
        """Store, for each trial id, user attributes and running values (intermediate values at the given
        steps, skipping steps already reported), every trial in one transaction: a chunk of scores is
        stored whole or not at all. Trials found closed (by another process) get nothing. With
        ``notify`` (a PostgreSQL channel), the same transaction wakes the processes listening on it.
        Returns the ids of the closed trials.

        Example:
            >>> store = RunStore(":memory:", "demo")
            >>> trial = store.new_trial({})
            >>> store.write_trials({trial: ({"s.0": 1.0}, {1: 1.0})})
            set()
        """
        if not writes:
            return set()
        if self._one_statement is not None:
            return self._one_statement.write_trials(writes, notify=notify)
        storage = self.storage
        if not hasattr(storage, "scoped_session") or not hasattr(storage, "_set_trial_attr_without_commit"):
            return {trial_id for trial_id, (attrs, values) in writes.items() if not self._write_one(trial_id, attrs, values)}
        import json

        import sqlalchemy as sa
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        dialect = storage.engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            return {trial_id for trial_id, (attrs, values) in writes.items() if not self._write_one(trial_id, attrs, values)}
        insert = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"]).insert
        attributes, steps = models.TrialUserAttributeModel, models.TrialIntermediateValueModel
        with _create_scoped_session(storage.scoped_session, True) as session:
            states = session.execute(  # locked: a process closing one of these trials waits for this write
                sa.select(models.TrialModel.trial_id, models.TrialModel.state)
                .where(models.TrialModel.trial_id.in_(list(writes)))
                .order_by(models.TrialModel.trial_id).with_for_update()
            ).all()
            open_ids = {trial_id for trial_id, state in states if not state.is_finished()}
            rows = [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for trial_id, (attrs, _) in writes.items() if trial_id in open_ids for key, value in attrs.items()
            ]
            if rows:
                statement = insert(attributes).values(rows)
                session.execute(statement.on_conflict_do_update(
                    index_elements=[attributes.trial_id, attributes.key], set_={"value_json": statement.excluded.value_json}
                ))
            values = []
            for trial_id, (_, running) in writes.items():
                for step, value in sorted(running.items()) if trial_id in open_ids else ():
                    stored, kind = steps.intermediate_value_to_stored_repr(float(value))
                    values.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
            if values:  # a step another process reported first keeps its value
                session.execute(insert(steps).values(values).on_conflict_do_nothing(index_elements=[steps.trial_id, steps.step]))
            if notify is not None and dialect == "postgresql":
                session.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": notify})
        return set(writes) - open_ids

    def _write_one(self, trial_id: int, attrs: dict[str, Any], values: dict[int, float]) -> bool:
        if attrs and not self.set_trial_attrs(trial_id, attrs):
            return False
        self.report(trial_id, values)
        return True

    def score_attrs(self, trial_ids: list[int], prefixes: tuple[str, ...]) -> dict[int, StoredTrial]:
        """The trials with only their user attributes whose name starts with one of ``prefixes`` (and their
        state), read in one transaction: what a process waiting for others' scores needs, without each
        trial's whole record.

        Example:
            >>> store = RunStore(":memory:", "demo")
            >>> trial = store.new_trial({"big": "x", "s.0": 1.0})
            >>> store.score_attrs([trial], ("s.",))[trial].attrs
            {'s.0': 1.0}
        """
        if not trial_ids:
            return {}
        if self._one_statement is not None:
            return {trial_id: _as_read(trial_id, number, state, attrs)
                    for trial_id, (number, state, attrs) in self._one_statement.score_attrs(trial_ids, prefixes).items()}
        storage = self.storage
        if not hasattr(storage, "scoped_session"):
            found = {trial_id: self.trial(trial_id) for trial_id in trial_ids}
            for trial in found.values():
                trial.attrs = {key: value for key, value in trial.attrs.items() if key.startswith(prefixes)}
            return found
        import json

        import sqlalchemy as sa
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        attributes, trials = models.TrialUserAttributeModel, models.TrialModel
        with _create_scoped_session(storage.scoped_session) as session:
            found = {
                trial_id: StoredTrial(trial_id=trial_id, number=number, attrs={}, finished=state.is_finished(), state=state.name)
                for trial_id, number, state in session.execute(
                    sa.select(trials.trial_id, trials.number, trials.state).where(trials.trial_id.in_(trial_ids))
                )
            }
            for trial_id, key, value in session.execute(
                sa.select(attributes.trial_id, attributes.key, attributes.value_json).where(
                    attributes.trial_id.in_(trial_ids), sa.or_(*(attributes.key.startswith(prefix, autoescape=True) for prefix in prefixes))
                )
            ):
                found[trial_id].attrs[key] = json.loads(value)
        return found

    def report(self, trial_id: int, values: dict[int, float]) -> None:
        """Intermediate values (running scores) at the given steps, skipping steps already reported."""
        reported = set(self.storage.get_trial(trial_id).intermediate_values)
        new = {step: value for step, value in sorted(values.items()) if step not in reported}
        if not new:
            return
        write = getattr(self.storage, "_set_trial_intermediate_value_without_commit", None)
        if write is not None and hasattr(self.storage, "scoped_session"):  # every step in one transaction
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(self.storage.scoped_session, True) as session:
                for step, value in new.items():
                    write(session, trial_id, step, float(value))
            return
        trial = optuna.trial.Trial(self.study, trial_id)
        for step, value in new.items():
            trial.report(value, step)

    def should_prune(self, trial_id: int, pruner: optuna.pruners.BasePruner | None) -> bool:
        """Ask ``pruner`` about the trial at its latest step (the pruner records rungs in the trial)."""
        self.study.pruner = pruner or optuna.pruners.NopPruner()
        return optuna.trial.Trial(self.study, trial_id).should_prune()

    def record_rungs(self, trial_ids: list[int], pruner: optuna.pruners.BasePruner | None) -> set[int]:
        """Ask ``pruner`` about each open trial at its latest step, as :meth:`should_prune` does one at a time,
        with the run's trials read once and the rungs the pruner records written in one transaction; the ids of
        the trials it would prune.

        The pruner sees the trials as read, with each rung recorded in this call added as it goes (a trial
        asked later sees the rungs of the ones asked before it, as it would one call at a time). One call at a
        time costs the pruner a read of every trial and a write per trial: most of a stage's traffic with a
        database across a network.

        Example:
            >>> store = RunStore(":memory:", "demo")
            >>> store.record_rungs([store.new_trial({})], optuna.pruners.SuccessiveHalvingPruner())
            set()
        """
        if pruner is None or not trial_ids:
            return set()
        trials = self.storage.get_all_trials(self._study_id, deepcopy=False)
        by_id = {trial._trial_id: trial for trial in trials}
        writes: list[tuple[int, str, Any]] = []

        class Recording:  # the storage as the pruner sees it: its rung writes go to the trials read, and are kept
            @staticmethod
            def set_trial_system_attr(trial_id: int, key: str, value: Any) -> None:
                by_id[trial_id].system_attrs[key] = value
                writes.append((trial_id, key, value))

        study = _StudyAsRead(trials, Recording(), self.study.direction)
        pruned = {trial_id for trial_id in trial_ids
                  if trial_id in by_id and not by_id[trial_id].state.is_finished() and pruner.prune(study, by_id[trial_id])}
        self._write_system_attrs(writes)
        return pruned

    def _write_system_attrs(self, writes: list[tuple[int, str, Any]]) -> None:
        if writes and not self._attrs_in_one_transaction(writes, system=True):
            for trial_id, key, value in writes:
                self.storage.set_trial_system_attr(trial_id, key, value)

    def close_many(self, closes: list[tuple[int, str, float | None]]) -> set[int]:
        """Close open trials, each ``(trial_id, "COMPLETE" | "PRUNED", value)``, as Optuna's ``tell`` does one at a
        time, with the run's trials read once; the ids closed here (a trial another process closed first is
        left as it is). A pruned trial's value is its last running score, as Optuna's ``tell`` records it.

        Example:
            >>> store = RunStore(":memory:", "demo")
            >>> first, second = store.new_trial({}), store.new_trial({})
            >>> sorted(store.close_many([(first, "COMPLETE", 0.5), (second, "PRUNED", None)])) == [first, second]
            True
        """
        for trial_id, state, value in closes:
            if state == "COMPLETE" and value is None:
                raise ValueError(f"closing trial {trial_id} as COMPLETE needs its value")
        if self._one_statement is not None:
            return self._one_statement.close_trials(closes) if closes else set()
        trials = {trial._trial_id: trial for trial in self.storage.get_all_trials(self._study_id, deepcopy=False)}
        closed: set[int] = set()
        for trial_id, state, value in closes:
            trial = trials.get(trial_id)
            if trial is None or trial.state.is_finished():
                continue
            if state == "COMPLETE":
                kind, values = optuna.trial.TrialState.COMPLETE, [float(value)]
            else:
                last = trial.last_step
                kept = None if last is None else trial.intermediate_values[last]
                kind, values = optuna.trial.TrialState.PRUNED, None if kept is None or math.isnan(kept) else [kept]
            try:
                if self.storage.set_trial_state_values(trial_id, kind, values):
                    closed.add(trial_id)
            except (RuntimeError, ValueError):  # closed meanwhile by another process
                continue
        return closed


@dataclass
class _StudyAsRead:
    """What an Optuna pruner reads of a study (its trials, its storage, its direction), from trials read once."""

    trials: list[optuna.trial.FrozenTrial]
    _storage: Any
    direction: optuna.study.StudyDirection

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.trials if states is None or t.state in states]


__all__ = ["OBJECTIVE_NAME", "RunStore", "StoredTrial", "TESTED_OPTUNA", "is_database", "open_storage"]
