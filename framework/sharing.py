"""Work claims: how several processes on one storage split a run's evaluations without doing one twice.

Before a process scores example ``i`` for a candidate (or creates a candidate's trial), it claims
``(run, candidate key, i)`` with an ``INSERT`` into a ``cuecard_claims`` table in the same database as
the Optuna study; the primary key makes the claim atomic, on SQLite as on PostgreSQL. A process that
loses a claim waits for the winner's score to appear in the trial. Each process refreshes its claims
every ``heartbeat`` seconds from a background thread, so a claim is taken over only when its owner
is gone: at once when the owner was a process of this host that died, else once its heartbeat is
older than ``stale_after`` seconds (a worker on another machine that crashed or lost the database).

Optuna's own heartbeat (``RDBStorage(heartbeat_interval=...)``, ``fail_stale_trials``) fails a
*trial* whose worker died; here a trial is a candidate that every worker scores examples of, so the
unit of work is an (candidate, example) pair and it needs its own claims.

Storages without a database (``:memory:``, journal files) get :class:`NoClaims`: one process only.

Example:
    >>> claims = open_claims("sqlite:///runs/demo/study.db", "demo")  # doctest: +SKIP
    >>> claims.claim("candidate-key", 0)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

CREATE = -1
"""The example index under which a candidate's creation is claimed."""


class Claims(Protocol):
    shared: bool

    def claim(self, key: str, index: int) -> bool:
        import sqlalchemy as sa

        now = time.time()
        row = {"run": self.run, "candidate": key, "example": index, "owner": self.owner, "claimed_at": now}
        if self._upsert is not None:  # one transaction: the insert, and when it finds a claim, its owner
            with self.engine.begin() as connection:
                if connection.execute(self._upsert.values(**row)).rowcount == 1:
                    return True
                return self._take_over(connection, key, index, now)
        try:
            with self.engine.begin() as connection:
                connection.execute(self.table.insert().values(**row))
            return True
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as connection:
            return self._take_over(connection, key, index, now)

    def _take_over(self, connection: Any, key: str, index: int, now: float) -> bool:
        """True when the claim on ``(key, index)`` is this process's, or its owner is gone and it is taken over."""
        import sqlalchemy as sa

        row = connection.execute(
            sa.select(self.table.c.owner, self.table.c.claimed_at).where(
                self.table.c.run == self.run, self.table.c.candidate == key, self.table.c.example == index
            )
        ).first()
        if row is None or row.owner == self.owner:
            return row is not None
        if not self._abandoned(row.owner, row.claimed_at, now):
            return False
        taken = connection.execute(
            self.table.update()
            .where(
                self.table.c.run == self.run,
                self.table.c.candidate == key,
                self.table.c.example == index,
                self.table.c.owner == row.owner,
            )
            .values(owner=self.owner, claimed_at=now)
        )
        if taken.rowcount == 1:
            self.taken.add((key, index))
        return taken.rowcount == 1

    def release(self, key: str, indices: list[int]) -> None:
        """Give back claims on work left undone."""


class NoClaims:
    """One process owns everything (in-memory and file-journal storages)."""

    shared = False

    def claim(self, key: str, index: int) -> bool:
        return True

    def release(self, key: str, indices: list[int]) -> None:
        pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SQLClaims:
    """Claims in a ``cuecard_claims`` table next to the Optuna tables (any SQLAlchemy URL)."""

    shared = True

    def __init__(self, url: str, run: str, *, stale_after: float = 60.0, heartbeat: float = 10.0) -> None:
        import sqlalchemy as sa

        self.run = run
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        from .store import database_url

        url = database_url(url)
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            from .store import write_ahead_log

            write_ahead_log(self.engine)
        metadata = sa.MetaData()
        self.table = sa.Table(
            "cuecard_claims",
            metadata,
            sa.Column("run", sa.String(512), primary_key=True),
            sa.Column("candidate", sa.String(64), primary_key=True),
            sa.Column("example", sa.Integer, primary_key=True),
            sa.Column("owner", sa.String(256), nullable=False),
            sa.Column("claimed_at", sa.Float, nullable=False),
        )
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        from .store import _racing

        for attempt in Retrying(retry=retry_if_exception(_racing), stop=stop_after_attempt(6), wait=wait_exponential(0.1, max=2), reraise=True):
            with attempt:  # processes starting together race to create the table
                metadata.create_all(self.engine, checkfirst=True)
        self._upsert = self._insert()
        self.taken: set[tuple[str, int]] = set()
        """Claims this process took over from a dead or stalled one (their work may be stored already)."""
        self._stop = threading.Event()
        self._beating = threading.Thread(target=self._beat, daemon=True, name="cuecard-claims-heartbeat")
        self._beating.start()

    def _beat(self) -> None:
        """Refresh this process's claims, so no live worker's unfinished work is taken over."""
        while not self._stop.wait(self.heartbeat):
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        self.table.update().where(self.table.c.run == self.run, self.table.c.owner == self.owner)
                        .values(claimed_at=time.time())
                    )
            except Exception:  # the next beat tries again; a claim goes stale only after stale_after
                continue

    def _insert(self) -> Any:
        """``INSERT ... ON CONFLICT DO NOTHING`` where the database has it (no duplicate-key error, no
        rolled-back transaction for a claim another process holds), else a plain insert."""
        name = self.engine.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            return None
        return insert(self.table).on_conflict_do_nothing()

    def claim(self, key: str, index: int) -> bool:
        import sqlalchemy as sa

        now = time.time()
        row = {"run": self.run, "candidate": key, "example": index, "owner": self.owner, "claimed_at": now}
        if self._upsert is not None:
            with self.engine.begin() as connection:
                if connection.execute(self._upsert.values(**row)).rowcount == 1:
                    return True
        else:
            try:
                with self.engine.begin() as connection:
                    connection.execute(self.table.insert().values(**row))
                return True
            except sa.exc.IntegrityError:
                pass
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(self.table.c.owner, self.table.c.claimed_at).where(
                    self.table.c.run == self.run, self.table.c.candidate == key, self.table.c.example == index
                )
            ).first()
            if row is None or row.owner == self.owner:
                return row is not None
            if not self._abandoned(row.owner, row.claimed_at, now):
                return False
            taken = connection.execute(
                self.table.update()
                .where(
                    self.table.c.run == self.run,
                    self.table.c.candidate == key,
                    self.table.c.example == index,
                    self.table.c.owner == row.owner,
                )
                .values(owner=self.owner, claimed_at=now)
            )
            if taken.rowcount == 1:
                self.taken.add((key, index))
            return taken.rowcount == 1

    def release(self, key: str, indices: list[int]) -> None:
        """Give back this process's claims on work it did not finish (an error or an interrupt)."""
        if not indices:
            return
        with self.engine.begin() as connection:
            connection.execute(
                self.table.delete().where(
                    self.table.c.run == self.run,
                    self.table.c.candidate == key,
                    self.table.c.example.in_(indices),
                    self.table.c.owner == self.owner,
                )
            )

    def _abandoned(self, owner: str, claimed_at: float, now: float) -> bool:
        host, _, rest = owner.partition(":")
        pid = rest.split(":", 1)[0]
        if host == self.host and pid.isdigit() and not _process_alive(int(pid)):
            return True
        return now - claimed_at > self.stale_after

    def close(self) -> None:
        self._stop.set()
        self.engine.dispose()


def open_claims(storage_url: str, run: str, *, stale_after: float = 60.0) -> Claims:
    """SQL claims for a database storage URL, :class:`NoClaims` for anything else."""
    from .store import is_database

    if not is_database(storage_url):
        return NoClaims()
    return SQLClaims(storage_url, run, stale_after=stale_after)
