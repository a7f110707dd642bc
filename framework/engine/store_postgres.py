"""A run's frequent storage requests as one statement each, where the storage is PostgreSQL.

Optuna's storage API opens a transaction for every call and reads the study and trial rows it checks
before it writes: five to eight client-server round trips to store one attribute. With the database
across a network each trip costs milliseconds, more than a local model call. Here the engine's
frequent requests (store a chunk of scores, write or read the study's attributes, list the
candidates' trials, read the scores other processes stored, close the trials) are each one statement on an autocommit
connection: one round trip, atomic on its own. Creating a trial takes two, in one transaction: the
study's row is locked first, as Optuna does, so trial numbers stay unique. The tables and columns are Optuna's own RDB schema
(unchanged across Optuna 4 and 5); SQLite and the in-memory storage keep Optuna's API.

Example (the storage's engine and the study's id, as :class:`~cuecard.engine.store.RunStore` has them):
    >>> statements = OneStatement(storage.engine, study_id)  # doctest: +SKIP
    >>> statements.set_study_attr("status", {"state": "running"})  # doctest: +SKIP
    >>> statements.study_attrs()["status"]  # doctest: +SKIP
    {'state': 'running'}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from optuna.storages._rdb import models

_WRITE_TRIALS = """
WITH open_trials AS (
    SELECT trial_id FROM trials
    WHERE trial_id = ANY(CAST(:ids AS INTEGER[])) AND state IN ('RUNNING', 'WAITING')
    ORDER BY trial_id FOR UPDATE
), attributes AS (
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
    SELECT row.trial_id, row.key, row.value_json
    FROM jsonb_to_recordset(CAST(:attributes AS JSONB)) AS row(trial_id INTEGER, key TEXT, value_json TEXT)
    WHERE row.trial_id IN (SELECT trial_id FROM open_trials)
    ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
), steps AS (
    INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)
    SELECT row.trial_id, row.step, row.value, CAST(row.kind AS trialintermediatevaluetype)
    FROM jsonb_to_recordset(CAST(:steps AS JSONB)) AS row(trial_id INTEGER, step INTEGER, value DOUBLE PRECISION, kind TEXT)
    WHERE row.trial_id IN (SELECT trial_id FROM open_trials)
    ON CONFLICT (trial_id, step) DO NOTHING
)
SELECT trial_id{notify} FROM open_trials
"""
"""Scores of several trials and their running values; a trial found closed gets nothing. The rows of
the open trials stay locked until the statement ends, so a process closing one of them waits."""

_CLOSE_TRIALS = """
WITH closing AS (
    SELECT trial_id, state, value FROM jsonb_to_recordset(CAST(:closes AS JSONB)) AS row(trial_id INTEGER, state TEXT, value DOUBLE PRECISION)
), closed AS (
    UPDATE trials SET state = CAST(closing.state AS trialstate), datetime_complete = CAST(:now AS TIMESTAMP)
    FROM closing WHERE trials.trial_id = closing.trial_id AND trials.state IN ('RUNNING', 'WAITING')
    RETURNING trials.trial_id
), kept AS (
    SELECT closing.trial_id,
        CASE WHEN closing.state = 'COMPLETE' THEN closing.value ELSE last.intermediate_value END AS value,
        CASE WHEN closing.state = 'COMPLETE' THEN 'FINITE' ELSE CAST(last.intermediate_value_type AS TEXT) END AS kind
    FROM closing JOIN closed USING (trial_id) LEFT JOIN LATERAL (
        SELECT intermediate_value, intermediate_value_type FROM trial_intermediate_values AS step
        WHERE step.trial_id = closing.trial_id ORDER BY step.step DESC LIMIT 1
    ) AS last ON TRUE
), objective AS (
    INSERT INTO trial_values (trial_id, objective, value, value_type)
    SELECT trial_id, 0, value, CAST(kind AS trialvaluetype) FROM kept WHERE kind IN ('FINITE', 'INF_POS', 'INF_NEG')
)
SELECT trial_id FROM closed
"""
"""Close open trials as COMPLETE with their value, or PRUNED with their last running value (none when it
was NaN or when nothing ran), as Optuna's ``tell`` records them; a trial another process closed first is left."""

_LOCK_STUDY = "SELECT study_id FROM studies WHERE study_id = :study FOR UPDATE"

_NEW_TRIAL = """
WITH new_trial AS (
    INSERT INTO trials (number, study_id, state, datetime_start)
    VALUES ((SELECT count(*) FROM trials WHERE study_id = :study), :study, 'RUNNING', CAST(:now AS TIMESTAMP))
    RETURNING trial_id
), attributes AS (
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
    SELECT new_trial.trial_id, row.key, row.value_json
    FROM new_trial, jsonb_to_recordset(CAST(:attributes AS JSONB)) AS row(key TEXT, value_json TEXT)
)
SELECT trial_id FROM new_trial
"""
"""A RUNNING trial numbered after the study's others, with its user attributes. It runs after the study's
row is locked (:data:`_LOCK_STUDY`, in the same transaction, as Optuna does), so the count it numbers by
sees every trial created before."""

_SET_STUDY_ATTR = """
INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (:study, :key, :value)
ON CONFLICT (study_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
"""

_STUDY_ATTRS = "SELECT key, value_json FROM study_user_attributes WHERE study_id = :study"

_TRIALS_WITH = """
SELECT trials.trial_id, trials.number, trials.state, attribute.value_json
FROM trials JOIN trial_user_attributes AS attribute ON attribute.trial_id = trials.trial_id AND attribute.key = :key
WHERE trials.study_id = :study ORDER BY trials.number
"""

_SCORE_ATTRS = """
SELECT trials.trial_id, trials.number, trials.state, attribute.key, attribute.value_json
FROM trials LEFT JOIN trial_user_attributes AS attribute
    ON attribute.trial_id = trials.trial_id AND attribute.key ^@ ANY(CAST(:prefixes AS TEXT[]))
WHERE trials.trial_id = ANY(CAST(:ids AS INTEGER[]))
"""


class OneStatement:
    """The run's frequent requests, one autocommit statement each, on ``engine`` (a PostgreSQL engine
    holding Optuna's tables) for the study ``study_id``. Values are JSON, as Optuna stores them."""

    def __init__(self, engine: sa.Engine, study_id: int) -> None:
        self.engine = engine
        self.study_id = study_id

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection

    def write_trials(self, writes: Mapping[int, tuple[Mapping[str, Any], Mapping[int, float]]], *, notify: str | None = None) -> set[int]:
        """Store user attributes and running values (steps already reported keep theirs) of each open trial;
        with ``notify``, wake the processes listening on that channel. Returns the ids of the trials found
        closed, which got nothing."""
        steps = models.TrialIntermediateValueModel
        attribute_rows = [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for trial_id, (attrs, _) in writes.items() for key, value in attrs.items()
        ]
        step_rows = []
        for trial_id, (_, running) in writes.items():
            for step, value in sorted(running.items()):
                stored, kind = steps.intermediate_value_to_stored_repr(float(value))
                step_rows.append({"trial_id": trial_id, "step": step, "value": stored, "kind": kind.name})
        statement = _WRITE_TRIALS.format(notify=", pg_notify(:channel, '')" if notify else "")
        parameters = {"ids": list(writes), "attributes": json.dumps(attribute_rows), "steps": json.dumps(step_rows), "channel": notify}
        with self._connection() as connection:
            open_ids = {row[0] for row in connection.execute(sa.text(statement), parameters)}
        return set(writes) - open_ids

    def new_trial(self, attrs: Mapping[str, Any]) -> int:
        """A RUNNING trial with user attributes ``attrs``, numbered as Optuna numbers it; its id."""
        import datetime

        rows = json.dumps([{"key": key, "value_json": json.dumps(value)} for key, value in attrs.items()])
        parameters = {"study": self.study_id, "attributes": rows, "now": datetime.datetime.now().isoformat()}
        with self.engine.begin() as connection:
            connection.execute(sa.text(_LOCK_STUDY), parameters)
            return int(connection.execute(sa.text(_NEW_TRIAL), parameters).scalar_one())

    def close_trials(self, closes: list[tuple[int, str, float | None]]) -> set[int]:
        """Close each ``(trial_id, "COMPLETE" | "PRUNED", value)``; the ids closed here."""
        import datetime

        rows = [{"trial_id": trial_id, "state": state, "value": value} for trial_id, state, value in closes]
        parameters = {"closes": json.dumps(rows), "now": datetime.datetime.now().isoformat()}
        with self._connection() as connection:
            return {row[0] for row in connection.execute(sa.text(_CLOSE_TRIALS), parameters)}

    def set_study_attr(self, key: str, value: Any) -> None:
        with self._connection() as connection:
            connection.execute(sa.text(_SET_STUDY_ATTR), {"study": self.study_id, "key": key, "value": json.dumps(value)})

    def study_attrs(self) -> dict[str, Any]:
        with self._connection() as connection:
            return {key: json.loads(value) for key, value in connection.execute(sa.text(_STUDY_ATTRS), {"study": self.study_id})}

    def trials_with(self, key: str) -> list[tuple[int, int, str, Any]]:
        """``(trial_id, number, state, value)`` of every trial of the study holding user attribute ``key``."""
        with self._connection() as connection:
            rows = connection.execute(sa.text(_TRIALS_WITH), {"study": self.study_id, "key": key}).all()
        return [(trial_id, number, _state_name(state), json.loads(value)) for trial_id, number, state, value in rows]

    def score_attrs(self, trial_ids: list[int], prefixes: tuple[str, ...]) -> dict[int, tuple[int, str, dict[str, Any]]]:
        """For each of the trials: ``(number, state, attributes)`` with only the user attributes whose name
        starts with one of ``prefixes``."""
        found: dict[int, tuple[int, str, dict[str, Any]]] = {}
        with self._connection() as connection:
            rows = connection.execute(sa.text(_SCORE_ATTRS), {"ids": list(trial_ids), "prefixes": list(prefixes)})
            for trial_id, number, state, key, value in rows:
                number_state_attrs = found.setdefault(trial_id, (number, _state_name(state), {}))
                if key is not None:
                    number_state_attrs[2][key] = json.loads(value)
        return found


def _state_name(state: Any) -> str:
    return state if isinstance(state, str) else state.name


def one_statement(storage: Any, study_id: int) -> OneStatement | None:
    """:class:`OneStatement` for an Optuna RDB storage on PostgreSQL; None for any other storage."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return None
    return OneStatement(engine, study_id)


__all__ = ["OneStatement", "one_statement"]
