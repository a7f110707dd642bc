"""For the worker processes of the resume and scale-out tests: log every evaluation a process stores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cuecard.engine import study


@contextmanager
def logged_evaluations(log: Path) -> Iterator[None]:
    """Append every evaluation this process stores to ``log`` (candidate key and example index), once stored;
    each batch is first appended to ``log.pending`` (``LOG.pending``), so a process killed between storing
    a batch and logging it leaves that batch there."""
    original = study.Engine._store_many
    pending = Path(f"{log}.pending")

    def store(engine, grouped):
        lines = [f"{engine.arms[arm].record.key} {r.index}\n" for arm, results in grouped.items() for r in results if not r.failed]
        with pending.open("a") as handle:
            handle.writelines(lines)
        original(engine, grouped)
        with log.open("a") as handle:
            handle.writelines(lines)

    study.Engine._store_many = store
    try:
        yield
    finally:
        study.Engine._store_many = original
