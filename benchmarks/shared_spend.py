"""A cap on model calls shared by several workers: calls made against the cap, and the run-wide usage
each worker reports.

W workers (``tests/scaleout_worker.py``: the scale-out tests' APE compile on scripted models, about 170
model calls uncapped) run one compile on one run with ``Limits(max_model_calls=N)``, released together,
on a SQLite file and on a throwaway PostgreSQL server (``tests/postgres.py``; skipped, with the reason,
when none can be started). Printed per storage: the model calls the workers' scripted models received
(in all, and per worker), the bound N + W, the run-wide model calls each worker's report gives and
the ones each worker's saved program file holds, and the best candidate each worker ends with.
Goal: calls <= N + W, and one run-wide figure, the calls made, in every report and saved file.

    .venv/bin/python benchmarks/shared_spend.py [--cap 60] [--workers 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))


def measure(label: str, storage: str, folder: Path, cap: int, count: int) -> None:
    from test_scaleout import Workers

    results = Workers(storage, folder, count, "small", cap=cap, kind="model").wait()
    per_worker = [r["task_requests"] + r["prompt_requests"] for r in results]
    print(
        f"{label:<11} calls made {sum(per_worker):>3} {per_worker} (bound {cap} + {count} = {cap + count}); "
        f"run-wide model calls reported {[r['usage']['model_calls'] for r in results]}, "
        f"in the saved files {[r['saved_usage']['model_calls'] for r in results]}; "
        f"best {[r['outcome']['best']['key'][:8] for r in results]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=60)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure("sqlite", f"sqlite:///{folder}/study.db", Path(folder), args.cap, args.workers)
    import postgres
    from test_scaleout import fresh_database

    reason = postgres.missing_reason()
    if reason is not None:
        print(f"postgresql skipped: {reason}")
        return
    server = postgres.PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            measure("postgresql", fresh_database(server.url, "shared_spend"), Path(folder), args.cap, args.workers)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
