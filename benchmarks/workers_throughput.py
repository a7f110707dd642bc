"""Several workers on one PostgreSQL run: wall time of 1 and 3 workers, database round trips, duplicates.

A throwaway PostgreSQL server is started as the tests start it (``tests/postgres.py``: ``initdb`` +
``pg_ctl`` on 127.0.0.1; Debian's ``postgresql`` package provides the binaries). Every worker is a
process running the scale-out tests' compile (``tests/scaleout_worker.py``: APE with induction,
multi-stage scoring and one Monte Carlo round, on scripted models; with ``--size medium``, APE or OPRO
planned by ``auto="medium"``, 600 requests) on one run in a fresh database, all released together.
Three settings:

- serial: a local-style model (one call at a time), 0.2 s per call;
- remote: 16 threads, 0.5 s per call;
- proxied: the serial model, with the database behind a TCP proxy on 127.0.0.1 that delays every
  message from a worker to the server by 13 ms (a database across a network); the proxy also
  counts those messages: the client-server round trips.

Each worker imports its modules (``PRELOADED`` included: the ones the compile imports on first use) before
it says it is ready, and ends as the ``cuecard`` command ends (``gc.freeze()``, no collection over the heap
at exit): workers stand for processes on several machines, and three processes importing or tearing
down together on one small machine would time the import, not the sharing.

With the remote model a third row runs one worker with the threads of three (``1 x48t``): no sharing
at all, only the model capacity of three workers; its ratio is what the search's own chain of stages
lets three workers reach at most.

Printed per method, setting and worker count: wall time (release to the last worker's end), the ratio of one
worker's wall to three workers', evaluations computed (each pair once: duplicates are pairs
computed by two workers), round trips per evaluation through the proxy, database transactions per evaluation (``pg_stat_database``:
``xact_commit + xact_rollback`` of the run's database, every worker's statements included), rolled-back
transactions, and whether every worker ended with the outcome of one worker alone.
Targets: 3 workers >= 2.5x one worker; <= 5 round trips per evaluation.

    .venv/bin/python benchmarks/workers_throughput.py [--size large] [--settings serial,remote]
    .venv/bin/python benchmarks/workers_throughput.py --size medium --methods ape,opro
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
SETTINGS = {
    "serial": {"delay": 0.2, "threads": 1},
    "remote": {"delay": 0.5, "threads": 16},
    "proxied": {"delay": 0.2, "threads": 1, "latency": 0.013},
}
GOAL_RATIO, GOAL_TRIPS = 2.5, 5.0
PRELOADED = ["litellm", "alembic.command", "alembic.migration", "sqlalchemy.dialects.postgresql", "scipy.special"]
"""Modules the compile imports on first use (the context check's litellm, Optuna's schema check, the t bound
of the acceptance rule): about 2 s of imports per process, loaded before a worker says it is ready."""


def worker(storage: str, out: Path, go: Path, delay: float, threads: int, size: str, method: str) -> None:
    """One worker: the scale-out compile with ``method``, with a remote-style task model when ``threads`` > 1."""
    sys.path.insert(0, str(TESTS))
    import scaleout_worker
    from cuecard.clients import testing

    if threads > 1:  # the same compile on a remote-style model: threads, DSPy's ChatAdapter
        original, task_reply = testing.scripted_lm, scaleout_worker.task_reply

        def chat_reply(messages: list[dict[str, str]]) -> str:
            text = messages[-1]["content"].replace("[[ ## review ## ]]\n", "Review: ")
            return f"[[ ## sentiment ## ]]\n{task_reply([{'content': text}])}\n\n[[ ## completed ## ]]"

        scaleout_worker.task_reply = chat_reply  # the worker's slow task model calls it by name
        scaleout_worker.scripted_lm = lambda reply, **options: original(reply, **{**options, "local": False})
    for module in PRELOADED:  # what the compile imports on first use: loaded before the start, see above
        importlib.import_module(module)

    Path(f"{out}.ready").touch()
    while not go.exists():
        time.sleep(0.02)
    result = scaleout_worker.run(storage, Path(f"{out}.log"), delay, size, method=method, threads=threads if threads > 1 else None)
    out.write_text(json.dumps(result))
    gc.freeze()  # the process ends as the cuecard command ends (cuecard.command.cli.entry)


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that delays each message from a client to ``port`` by ``latency`` seconds
    and counts them (one per client-server round trip). Runs in a thread until :meth:`stop`.

    Example:
        >>> with LatencyProxy(5432, 0.013) as proxy:  # doctest: +SKIP
        ...     proxy.port, proxy.trips
    """

    def __init__(self, port: int, latency: float) -> None:
        self.target, self.latency, self.trips, self.port = port, latency, 0, 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="latency-proxy")

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, upstream_writer, True), self._pipe(upstream_reader, writer, False))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, delayed: bool) -> None:
        try:
            while data := await source.read(1 << 16):
                if delayed:
                    self.trips += 1
                    await asyncio.sleep(self.latency)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    def __enter__(self) -> LatencyProxy:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def counters(url: str, database: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]), int(row[1])


def run_group(
    admin_url: str, name: str, count: int, setting: dict[str, Any], size: str, method: str, folder: Path, threads: int | None = None,
) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    storage = admin_url.rsplit("/", 1)[0] + "/" + name
    proxy = LatencyProxy(int(admin_url.rsplit(":", 1)[1].split("/")[0]), setting["latency"]) if setting.get("latency") else None
    if proxy is not None:
        proxy.__enter__()
        storage = storage.replace(f":{proxy.target}/", f":{proxy.port}/")
    go = folder / f"{name}.go"
    outs = [folder / f"{name}-{i}.json" for i in range(count)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    processes = [
        subprocess.Popen([sys.executable, __file__, "--worker", storage, str(out), str(go), str(setting["delay"]),
                          str(threads or setting["threads"]), size, method], env=env)
        for out in outs
    ]
    deadline = time.monotonic() + 300
    while not all(Path(f"{out}.ready").exists() for out in outs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError("a worker did not start")
        time.sleep(0.05)
    before = counters(admin_url, name)
    trips = proxy.trips if proxy is not None else 0
    start = time.monotonic()
    go.touch()
    for process in processes:
        process.wait(timeout=1800)
    wall = time.monotonic() - start
    if proxy is not None:
        trips = proxy.trips - trips
        proxy.__exit__()
    time.sleep(1.5)  # the servers' backends flush their statistics about once a second
    after = counters(admin_url, name)
    results = [json.loads(out.read_text()) for out in outs]
    pairs = [line for out in outs for line in Path(f"{out}.log").read_text().splitlines()]
    return {
        "wall": wall, "evaluations": len(set(pairs)), "duplicates": len(pairs) - len(set(pairs)),
        "commits": after[0] - before[0], "rollbacks": after[1] - before[1], "trips": trips if proxy is not None else None,
        "outcomes": [r["outcome"] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="large", choices=["small", "large", "medium"],
                        help="the compile: APE's small or large scale-out compile, or auto='medium' (600 requests)")
    parser.add_argument("--methods", default="ape", help="ape, opro (opro at --size medium only), comma-separated")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - {"ape", "opro"}) + sorted(set(args.settings.split(",")) - set(SETTINGS))
    if unknown:
        parser.error(f"--methods/--settings: unknown {', '.join(unknown)} (methods: ape, opro; settings: {', '.join(SETTINGS)})")
    if "opro" in methods and args.size != "medium":
        parser.error("--methods opro runs at --size medium only (the small and large sizes are APE's own knobs)")
    sys.path.insert(0, str(TESTS))
    import postgres

    reason = postgres.missing_reason()
    if reason is not None:
        sys.exit(f"workers_throughput: no PostgreSQL here: {reason}")
    folder = Path(tempfile.mkdtemp(prefix="cuecard-workers-"))
    print(f"{'method':<6} {'setting':<8} {'workers':>9} {'wall':>7} {'ratio':>6} {'evals':>6} {'dup':>4} {'trips/eval':>10} "
          f"{'xact/eval':>9} {'rollbacks':>9} {'same outcome':>12}")
    with postgres.PostgresServer() as server:
        for method in methods:
            for setting_name in args.settings.split(","):
                setting = SETTINGS[setting_name]
                groups = [(1, None), (3, None)]
                if setting["threads"] > 1:  # the bound of the search itself: one process with three workers' threads
                    groups.append((1, 3 * setting["threads"]))
                alone = None
                for count, threads in groups:
                    label = f"{count}" if threads is None else f"1 x{threads}t"
                    row = run_group(server.url, f"{method}_{setting_name}_{count}_{threads or 0}", count, setting, args.size,
                                    method, folder, threads)
                    alone = alone or row
                    ratio = alone["wall"] / row["wall"]
                    xacts = (row["commits"] + row["rollbacks"]) / max(1, row["evaluations"])
                    trips = "-" if row["trips"] is None else f"{row['trips'] / max(1, row['evaluations']):.1f}"
                    same = all(outcome == alone["outcomes"][0] for outcome in row["outcomes"])
                    print(f"{method:<6} {setting_name:<8} {label:>9} {row['wall']:>6.1f}s {ratio:>5.2f}x {row['evaluations']:>6} "
                          f"{row['duplicates']:>4} {trips:>10} {xacts:>9.1f} {row['rollbacks']:>9} {'yes' if same else 'no':>12}")
                    sys.stdout.flush()
    print(f"\ngoals: 3 workers >= {GOAL_RATIO}x one worker; <= {GOAL_TRIPS:.0f} round trips per evaluation (one worker, "
          "amortised over everything the run stores); the proxied setting within 1.5x of the serial one.\n"
          "'1 x48t' is one worker with the threads of three: what the search's own stages allow three workers at most")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        storage, out, go, delay, threads, size, method = sys.argv[2:9]
        worker(storage, Path(out), Path(go), float(delay), int(threads), size, method)
    else:
        main()
