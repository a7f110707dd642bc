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

The same database holds the run's shared spending (``cuecard_spend``): a row ``*`` per run counts the
model calls reserved or made by every process, and a row per process what it reserved and used. A
process reserves model calls there before making them (a few at a time, in one ``UPDATE`` that never
lets the count pass the cap) and gives back what it did not use; the reservations of a process that
died are given back by the next process that finds the cap reached. A process also marks there when
its compile is under way, so a finishing process can wait for the others before reading the run's usage.

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
TOTAL = "*"
"""The owner of the row of ``cuecard_spend`` that counts a run's model calls over every process."""


class Claims(Protocol):
    shared: bool
    channel: str | None

    def claim(self, key: str, index: int) -> bool:
        """True when this process now owns the work ``(key, index)`` (free, its own, or its owner gone)."""
        ...

    def claim_many(self, work: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """The pieces of ``work`` this process now owns, claimed together."""
        ...

    def release(self, key: str, indices: list[int]) -> None:
        """Give back claims on work left undone."""

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for another process to store something of the run (or just sleep)."""

    def notify(self) -> None:
        """Wake the processes waiting on the run."""

    def close(self) -> None:
        """Stop the heartbeat and close the connections (the run's end in this process)."""


class NoClaims:
    """One process owns everything (in-memory and file-journal storages)."""

    shared = False
    channel: str | None = None

    def claim(self, key: str, index: int) -> bool:
        return True

    def claim_many(self, work: list[tuple[str, int]]) -> set[tuple[str, int]]:
        return set(work)

    def release(self, key: str, indices: list[int]) -> None:
        pass

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def notify(self) -> None:
        pass

    def close(self) -> None:
        pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_CLAIM_AND_READ_OWNERS = """
WITH wanted AS (
    SELECT candidate, example FROM jsonb_to_recordset(CAST(:wanted AS JSONB)) AS piece(candidate TEXT, example INTEGER)
), inserted AS (
    INSERT INTO cuecard_claims (run, candidate, example, owner, claimed_at)
    SELECT :run, candidate, example, :owner, :now FROM wanted
    ON CONFLICT DO NOTHING RETURNING candidate, example
)
SELECT candidate, example, NULL AS owner, NULL AS claimed_at FROM inserted
UNION ALL
SELECT claims.candidate, claims.example, claims.owner, claims.claimed_at
FROM cuecard_claims AS claims JOIN wanted USING (candidate, example) WHERE claims.run = :run
"""
"""Claim the free pieces of work (rows with no owner: this statement's own claims) and read the owners of
the pieces found claimed (the statement's snapshot predates its insert)."""


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
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, **kwargs)
        if not url.startswith("sqlite"):
            from .store import ping_when_idle

            ping_when_idle(self.engine)
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
        self.spend = sa.Table(
            "cuecard_spend",
            metadata,
            sa.Column("run", sa.String(512), primary_key=True),
            sa.Column("owner", sa.String(256), primary_key=True),
            sa.Column("reserved", sa.Integer, nullable=False, default=0),
            sa.Column("used", sa.Integer, nullable=False, default=0),
            sa.Column("granted", sa.Integer, nullable=False, default=0),
            sa.Column("working", sa.Boolean, nullable=False, default=False),
            sa.Column("beat", sa.Float, nullable=False),
        )
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        from .store import _racing

        for attempt in Retrying(retry=retry_if_exception(_racing), stop=stop_after_attempt(6), wait=wait_exponential(0.1, max=2), reraise=True):
            with attempt:  # processes starting together race to create the table
                metadata.create_all(self.engine, checkfirst=True)
        self._upsert = self._insert()
        self.channel = _channel(run) if self.engine.dialect.name == "postgresql" else None
        """PostgreSQL's notification channel of the run: a process storing scores or replies notifies it."""
        self._listener: Any = None
        self._listener_lock = threading.Lock()
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
                    connection.execute(
                        self.spend.update().where(self.spend.c.run == self.run, self.spend.c.owner == self.owner)
                        .values(beat=time.time())
                    )
            except Exception:  # the next beat tries again; a claim goes stale only after stale_after
                continue

    def _insert(self) -> Any:
        """SQLite's ``INSERT ... ON CONFLICT DO NOTHING`` (no duplicate-key error for a claim another process
        holds); None elsewhere: PostgreSQL claims in one statement (:data:`_CLAIM_AND_READ_OWNERS`), other
        databases insert row by row."""
        if self.engine.dialect.name != "sqlite":
            return None
        from sqlalchemy.dialects.sqlite import insert

        return insert(self.table).on_conflict_do_nothing()

    def claim(self, key: str, index: int) -> bool:
        return (key, index) in self.claim_many([(key, index)])

    def claim_many(self, work: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Claim every piece of ``work``: one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` where the database
        has it (one round trip when every piece was free); the owners of the pieces found claimed are read in
        one statement, and a piece whose owner is gone is taken over, in one transaction."""
        import sqlalchemy as sa

        work = list(dict.fromkeys(work))
        if not work:
            return set()
        now = time.time()
        if self.engine.dialect.name == "postgresql":
            return self._claim_many_in_one_statement(work, now)
        rows = [{"run": self.run, "candidate": key, "example": index, "owner": self.owner, "claimed_at": now} for key, index in work]
        won: set[tuple[str, int]] = set()
        if self._upsert is not None:  # one statement, atomic on its own: no BEGIN and COMMIT around it
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                returned = connection.execute(self._upsert.values(rows).returning(self.table.c.candidate, self.table.c.example))
                won = {(row.candidate, row.example) for row in returned}
        else:
            with self.engine.begin() as connection:
                for row in rows:
                    try:
                        with connection.begin_nested():
                            connection.execute(self.table.insert().values(**row))
                        won.add((row["candidate"], row["example"]))
                    except sa.exc.IntegrityError:
                        pass
        held = [piece for piece in work if piece not in won]
        if held:
            won |= self._take_over_many(held, now)
        return won

    def _claim_many_in_one_statement(self, work: list[tuple[str, int]], now: float) -> set[tuple[str, int]]:
        """PostgreSQL: the free pieces claimed and the owners of the others read in one statement (its snapshot
        predates its own insert, so the rows it reads are the pieces found claimed); a transaction follows only
        to take over pieces whose owner is gone."""
        import json

        import sqlalchemy as sa

        wanted = json.dumps([{"candidate": key, "example": index} for key, index in work])
        parameters = {"wanted": wanted, "run": self.run, "owner": self.owner, "now": now}
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            rows = connection.execute(sa.text(_CLAIM_AND_READ_OWNERS), parameters).all()
        won = {(row.candidate, row.example) for row in rows if row.owner is None}
        return won | self._mine_or_taken([row for row in rows if row.owner is not None], now)

    def _take_over_many(self, held: list[tuple[str, int]], now: float) -> set[tuple[str, int]]:
        """The pieces of ``held`` (found claimed) that are this process's, or whose owner is gone and are taken over
        (their owners read in one statement; a piece released between the insert and the read is claimed next time round)."""
        import sqlalchemy as sa

        table = self.table.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(table.candidate, table.example, table.owner, table.claimed_at).where(
                    table.run == self.run, sa.tuple_(table.candidate, table.example).in_(held)
                )
            ).all()
        return self._mine_or_taken(rows, now)

    def _mine_or_taken(self, rows: list[Any], now: float) -> set[tuple[str, int]]:
        """Of pieces found claimed (rows with ``candidate, example, owner, claimed_at``): this process's own, and
        those whose owner is gone, taken over in one transaction."""
        won = {(row.candidate, row.example) for row in rows if row.owner == self.owner}
        gone = [row for row in rows if row.owner != self.owner and self._abandoned(row.owner, row.claimed_at, now)]
        if gone:
            with self.engine.begin() as connection:
                won |= {(row.candidate, row.example) for row in gone
                        if self._take_over(connection, row.candidate, row.example, row.owner, now)}
        return won

    def _take_over(self, connection: Any, key: str, index: int, owner: str, now: float) -> bool:
        """Take the claim on ``(key, index)`` from ``owner`` (found gone); False when it changed hands meanwhile."""
        table = self.table.c
        taken = connection.execute(
            self.table.update()
            .where(table.run == self.run, table.candidate == key, table.example == index, table.owner == owner)
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

    # ---- waiting for other processes ---------------------------------------------------------
    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for another process to store something of the run: on PostgreSQL until
        a notification on the run's channel (``LISTEN``; one queued since the last wait returns at once),
        elsewhere a plain sleep."""
        if self.channel is None:
            time.sleep(seconds)
            return
        with self._listener_lock:
            try:
                if self._listener is None:
                    import psycopg

                    url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                    self._listener = psycopg.connect(url, autocommit=True)
                    self._listener.execute(f'LISTEN "{self.channel}"')
                for _ in self._listener.notifies(timeout=seconds, stop_after=1):
                    pass
                for _ in self._listener.notifies(timeout=0.0):  # the rest of the queue: one wake-up is enough
                    pass
                return
            except Exception:  # no notifications: poll instead
                self._close_listener()
        time.sleep(seconds)

    def notify(self) -> None:
        """Wake the processes waiting on the run (PostgreSQL; elsewhere they poll)."""
        if self.channel is None:
            return
        import sqlalchemy as sa

        with self.engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": self.channel})

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except Exception:
                pass

    # ---- the run's shared spending -------------------------------------------------------------
    def join_spend(self, spent: int, *, working: bool = True) -> None:
        """Enter this process in the run's count (with ``working``: its compile is under way); the count
        is at least ``spent`` (what the run's processes stored they spent, a process with no cap included)."""

        now, total = time.time(), self.spend.c.reserved
        with self.engine.begin() as connection:
            for owner, reserved in ((TOTAL, spent), (self.owner, 0)):
                row = {"run": self.run, "owner": owner, "reserved": reserved, "used": 0, "granted": 0, "working": False, "beat": now}
                self._insert_new(connection, self.spend, row)
            connection.execute(  # calls made by processes that reserved none (no cap) count too
                self.spend.update().where(self.spend.c.run == self.run, self.spend.c.owner == TOTAL, total < spent)
                .values(reserved=spent)
            )
            self._spend_row(connection, working=working, beat=now)

    def leave_spend(self) -> None:
        """This process's compile is over (what it reserved and did not use is already given back)."""
        with self.engine.begin() as connection:
            self._spend_row(connection, working=False, beat=time.time())

    def reserve(self, wanted: int, cap: int, used: int) -> int:
        """Reserve up to ``wanted`` model calls in the run's count without passing ``cap`` (one ``UPDATE``
        row lock: atomic across processes); the reservations of dead processes are given back first
        when the cap leaves too few. Returns how many were granted."""
        granted = self._reserve(wanted, cap, used)
        if granted < wanted and self.reclaim():
            granted += self._reserve(wanted - granted, cap, used)
        return granted

    def _reserve(self, wanted: int, cap: int, used: int) -> int:
        import sqlalchemy as sa

        total = self.spend.c.reserved
        grant = sa.case((total + wanted <= cap, wanted), else_=cap - total)
        with self.engine.begin() as connection:
            granted = connection.execute(
                self.spend.update()
                .where(self.spend.c.run == self.run, self.spend.c.owner == TOTAL, total < cap)
                .values(granted=grant, reserved=total + grant)  # both computed from the row as it was
                .returning(self.spend.c.granted)
            ).scalar()
            granted = int(granted or 0)
            self._spend_row(connection, reserved=self.spend.c.reserved + granted, used=used, beat=time.time())
        return granted

    def give_back(self, unused: int, used: int) -> None:
        """Return ``unused`` reserved model calls to the run's count."""
        with self.engine.begin() as connection:
            connection.execute(
                self.spend.update().where(self.spend.c.run == self.run, self.spend.c.owner == TOTAL)
                .values(reserved=self.spend.c.reserved - unused)
            )
            self._spend_row(connection, reserved=self.spend.c.reserved - unused, used=used)

    def reclaim(self) -> int:
        """Give back to the run what processes that are gone reserved and did not use (as they last
        said: at most a reservation batch of calls they made may be counted back). Returns how many."""
        import sqlalchemy as sa

        now, returned = time.time(), 0
        table = self.spend.c
        with self.engine.begin() as connection:
            rows = connection.execute(
                sa.select(table.owner, table.reserved, table.used, table.beat).where(
                    table.run == self.run, table.owner != TOTAL, table.owner != self.owner, table.reserved > table.used
                )
            ).all()
            for row in rows:
                if not self._abandoned(row.owner, row.beat, now):
                    continue
                settled = connection.execute(
                    self.spend.update()
                    .where(table.run == self.run, table.owner == row.owner, table.reserved == row.reserved)
                    .values(reserved=row.used, working=False)
                )
                if settled.rowcount == 1:
                    returned += row.reserved - row.used
            if returned:
                connection.execute(
                    self.spend.update().where(table.run == self.run, table.owner == TOTAL).values(reserved=table.reserved - returned)
                )
        return returned

    def others_working(self) -> list[str]:
        """The other processes whose compile of this run is under way (alive, by pid or heartbeat)."""
        import sqlalchemy as sa

        now, table = time.time(), self.spend.c
        with self.engine.begin() as connection:
            rows = connection.execute(
                sa.select(table.owner, table.beat).where(
                    table.run == self.run, table.owner != TOTAL, table.owner != self.owner, table.working.is_(True)
                )
            ).all()
        return [row.owner for row in rows if not self._abandoned(row.owner, row.beat, now)]

    def run_reserved(self) -> int:
        """Model calls the run's count holds: made or reserved, by every process."""
        import sqlalchemy as sa

        with self.engine.begin() as connection:
            value = connection.execute(
                sa.select(self.spend.c.reserved).where(self.spend.c.run == self.run, self.spend.c.owner == TOTAL)
            ).scalar()
        return int(value or 0)

    def _spend_row(self, connection: Any, **values: Any) -> None:
        connection.execute(
            self.spend.update().where(self.spend.c.run == self.run, self.spend.c.owner == self.owner).values(**values)
        )

    def _insert_new(self, connection: Any, table: Any, row: dict[str, Any]) -> None:
        """Insert ``row`` unless its key is there (without an error where the database can)."""
        import sqlalchemy as sa

        name = self.engine.dialect.name
        if name in ("postgresql", "sqlite"):
            module = __import__(f"sqlalchemy.dialects.{name}", fromlist=["insert"])
            connection.execute(module.insert(table).values(**row).on_conflict_do_nothing())
            return
        try:
            with connection.begin_nested():
                connection.execute(table.insert().values(**row))
        except sa.exc.IntegrityError:
            pass

    def _abandoned(self, owner: str, claimed_at: float, now: float) -> bool:
        host, _, rest = owner.partition(":")
        pid = rest.split(":", 1)[0]
        if host == self.host and pid.isdigit() and not _process_alive(int(pid)):
            return True
        return now - claimed_at > self.stale_after

    def close(self) -> None:
        self._stop.set()
        with self._listener_lock:
            self._close_listener()
        self.engine.dispose()


def _channel(run: str) -> str:
    """A notification channel name for a run (a plain identifier, whatever the run's name)."""
    import hashlib

    return "cuecard_" + hashlib.sha256(run.encode()).hexdigest()[:20]


def open_claims(storage_url: str, run: str, *, stale_after: float = 60.0) -> Claims:
    """SQL claims for a database storage URL, :class:`NoClaims` for anything else."""
    from .store import is_database

    if not is_database(storage_url):
        return NoClaims()
    return SQLClaims(storage_url, run, stale_after=stale_after)
