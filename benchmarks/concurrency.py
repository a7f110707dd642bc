"""Scoring on a remote model: throughput against thread count, and behaviour under a provider's rate limit.

An OpenAI-compatible stub server (``cuecard.clients.testing.StubServer``) on 127.0.0.1 answers every
chat completion after ``--latency`` seconds (150 ms by default). It runs in a process of its own, as a
provider would, so its request handling does not compete for this process's interpreter lock.
cuecard reaches it through litellm (``cuecard.LM("openai/stub", api_base=..., api_key=...)``) with
DSPy's ChatAdapter, and every run uses examples no earlier run used, with a fresh, empty DSPy cache
(a temporary ``DSPY_CACHEDIR``), so every example really goes to the server.

Part 1, throughput: one candidate scored on ``8 x threads`` examples (at least 16) at 1, 4, 16 and
32 threads, through ``Evaluator.run`` and through the engine (``Engine.allocate(FullEvaluation())``
on a fresh SQLite run, as a compile stores each score): examples per second and the ratio to one
thread (the goal: at least 12x at 16 threads).

Part 2, a rate limit: the server answers at most ``--limit`` requests a second (20 by default) and
429 + ``Retry-After`` beyond; ``--examples`` examples (200) are scored at 16 threads through the
engine, without and with ``requests_per_minute=60 x limit`` on the LM. Printed: the request rate
achieved as a share of the limit (goal: at least 90%), the 429s drawn, and lost or repeated
evaluations (every example scored exactly once, no failure, the server's answered requests equal to
the examples; the goal is 0).

    .venv/bin/python benchmarks/concurrency.py [--latency 0.15] [--threads 1,4,16,32] [--limit 20]
                                              [--examples 200] [--rate-threads 16]
"""

from __future__ import annotations

import os
import sys
import tempfile

# A fresh, empty DSPy cache, set before dspy is imported (the server's process, spawned, inherits it).
_CACHE = os.environ.get("CUECARD_CONCURRENCY_CACHE") or tempfile.mkdtemp(prefix="cuecard-concurrency-cache-")
os.environ["CUECARD_CONCURRENCY_CACHE"] = os.environ["DSPY_CACHEDIR"] = _CACHE
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

GOAL_SPEEDUP, GOAL_SPEEDUP_AT, GOAL_RATE_SHARE = 12.0, 16, 0.90
NEGATIVE = ("cold", "bad", "awful", "boring", "rude")


# ---- the server, in a process of its own -------------------------------------------------------------
def chat_reply(messages: list[dict[str, Any]]) -> str:
    """A ChatAdapter-formatted answer: negative when the review has a negative word."""
    text = str(messages[-1].get("content", "")).lower() if messages else ""
    label = "negative" if any(word in text for word in NEGATIVE) else "positive"
    return f"[[ ## sentiment ## ]]\n{label}\n\n[[ ## completed ## ]]"


def _serve(connection: Any, latency: float, rate_limit: float | None) -> None:
    from cuecard.clients.testing import StubServer

    server = StubServer(chat_reply, latency=latency, rate_limit=rate_limit).start()
    connection.send(server.url)
    while True:
        command = connection.recv()
        if command == "stats":
            connection.send({"requests": server.requests, "rejected": server.rejected, "connections": server.connections})
        else:
            server.stop()
            connection.send("stopped")
            return


class Server:
    """A :class:`~cuecard.clients.testing.StubServer` in a child process; ``stats()`` reads its counters."""

    def __init__(self, latency: float, rate_limit: float | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, latency, rate_limit), daemon=True)
        self.process.start()
        self.url = self.connection.recv()

    def stats(self) -> dict[str, int]:
        self.connection.send("stats")
        return self.connection.recv()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.connection.send("stop")
        self.connection.recv()
        self.process.join(10)


# ---- scoring -----------------------------------------------------------------------------------------
def examples(count: int, tag: str) -> list[Any]:
    """``count`` reviews no other run uses (``tag``), so DSPy's cache cannot answer them."""
    import dspy

    words = ("great", "cold", "lovely", "boring", "fine", "awful", "superb", "rude")
    return [
        dspy.Example(review=f"[{tag}] Visit {i}: the soup was {words[i % len(words)]}.",
                     sentiment="negative" if words[i % len(words)] in NEGATIVE else "positive").with_inputs("review")
        for i in range(count)
    ]


def make_lm(url: str, **kwargs: Any) -> Any:
    import cuecard

    lm = cuecard.LM("openai/stub", api_base=url, api_key="sk-test", **kwargs)
    lm("warm up: import litellm and open a connection before anything is timed")
    return lm


def make_evaluator(lm: Any, threads: int) -> Any:
    import dspy
    from cuecard.engine.evaluate import Evaluator
    from cuecard.metrics import exact_match

    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the review as positive or negative."))
    return Evaluator(program, exact_match("sentiment"), task_lm=lm, num_threads=threads)


CANDIDATE = {"self": "Classify the review as positive or negative."}


def score_with_evaluator(lm: Any, threads: int, data: list[Any]) -> tuple[float, list[Any]]:
    evaluator = make_evaluator(lm, threads)
    start = time.perf_counter()
    results = evaluator.run(CANDIDATE, list(enumerate(data)))
    return time.perf_counter() - start, results


def score_with_engine(lm: Any, threads: int, data: list[Any], folder: Path, name: str) -> tuple[float, list[Any]]:
    """``Engine.allocate(FullEvaluation())`` of one candidate on a fresh SQLite run; the per-example results."""
    from cuecard.engine.evaluate import ExampleScore
    from cuecard.engine.policies import FullEvaluation
    from cuecard.engine.study import Engine

    engine = Engine(make_evaluator(lm, threads), data, name=name, storage=f"sqlite:///{folder / (name + '.db')}",
                    identity={"benchmark": name}, progress=False)
    arm = engine.add_candidate(CANDIDATE)
    start = time.perf_counter()
    engine.allocate(FullEvaluation(n_examples=len(data)))
    elapsed = time.perf_counter() - start
    state = engine.arms[arm]
    results = [ExampleScore(index=i, score=s, error=state.errors.get(i)) for i, s in sorted(state.seen.items())]
    return elapsed, results


# ---- the two parts -----------------------------------------------------------------------------------
def throughput(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    rows = []
    with Server(args.latency) as server:
        lm = make_lm(server.url)
        for threads in args.threads:
            count = max(16, 8 * threads)
            row: dict[str, Any] = {"threads": threads, "examples": count}
            for way in ("evaluator", "engine"):
                data = examples(count, f"{way}-{threads}")
                before = server.stats()["requests"]
                if way == "evaluator":
                    elapsed, results = score_with_evaluator(lm, threads, data)
                else:
                    elapsed, results = score_with_engine(lm, threads, data, folder, f"throughput-{threads}")
                answered = server.stats()["requests"] - before
                row[way] = count / elapsed
                row[f"{way}_ok"] = len(results) == count and not any(r.failed for r in results) and answered == count
            rows.append(row)
    base = {way: rows[0][way] for way in ("evaluator", "engine")}
    for row in rows:
        for way in ("evaluator", "engine"):
            row[f"{way}_ratio"] = row[way] / base[way]
    return rows


def rate_limited(args: argparse.Namespace, folder: Path, per_minute: int | None) -> dict[str, Any]:
    with Server(args.latency, rate_limit=args.limit) as server:
        lm = make_lm(server.url, requests_per_minute=per_minute)
        before = server.stats()
        data = examples(args.examples, f"rate-{per_minute}")
        elapsed, results = score_with_engine(lm, args.rate_threads, data, folder, f"rate-{per_minute or 'none'}")
        after = server.stats()
    answered = after["requests"] - before["requests"]
    from cuecard.engine.evaluate import failure_reason

    indices = Counter(r.index for r in results)
    failures = Counter(failure_reason(r.error) for r in results if r.failed)
    return {
        "rpm": per_minute,
        "elapsed": elapsed,
        "answered": answered,
        "rejected": after["rejected"] - before["rejected"],
        "rate": answered / elapsed,
        "share": answered / elapsed / args.limit,
        "missing": sum(1 for i in range(len(data)) if indices[i] == 0),
        "repeated": sum(count - 1 for count in indices.values() if count > 1) + max(0, answered - len(data)),
        "failed": sum(failures.values()),
        "reasons": dict(failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.15, help="seconds the server takes per request")
    parser.add_argument("--threads", type=lambda text: [int(t) for t in text.split(",")], default=[1, 4, 16, 32],
                        help="thread counts to measure, comma-separated (the first is the baseline)")
    parser.add_argument("--limit", type=float, default=20.0, help="the server's rate limit, requests per second")
    parser.add_argument("--examples", type=int, default=200, help="examples scored under the rate limit")
    parser.add_argument("--rate-threads", type=int, default=16, help="threads used under the rate limit")
    args = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.ERROR)
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="cuecard-concurrency-"))
    try:
        python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
        print("command: " + " ".join([python, *sys.argv]))
        print(f"server: StubServer on 127.0.0.1 (own process), {args.latency * 1000:.0f} ms per request; "
              f"fresh DSPy cache {_CACHE}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
        rows = throughput(args, folder)
        print("Part 1: throughput of scoring (examples per second; ratio to 1 thread)")
        print(f"{'threads':>7} {'examples':>8} | {'Evaluator.run':>13} {'ratio':>6} | {'Engine (SQLite)':>15} {'ratio':>6} | all once")
        for row in rows:
            ok = "yes" if row["evaluator_ok"] and row["engine_ok"] else "NO"
            print(f"{row['threads']:>7} {row['examples']:>8} | {row['evaluator']:>13.1f} {row['evaluator_ratio']:>5.1f}x"
                  f" | {row['engine']:>15.1f} {row['engine_ratio']:>5.1f}x | {ok}")
        at = next((row for row in rows if row["threads"] == GOAL_SPEEDUP_AT), None)
        if at is not None:
            for way, label in (("evaluator", "Evaluator.run"), ("engine", "Engine")):
                verdict = "reached" if at[f"{way}_ratio"] >= GOAL_SPEEDUP else "NOT reached"
                print(f"goal >= {GOAL_SPEEDUP:g}x at {GOAL_SPEEDUP_AT} threads, {label}: {at[f'{way}_ratio']:.1f}x, {verdict}")

        print(f"\nPart 2: {args.examples} examples at {args.rate_threads} threads through the engine, server limit "
              f"{args.limit:g} requests/s (429 + Retry-After beyond)")
        print(f"{'requests_per_minute':>19} | {'seconds':>7} {'answered':>8} {'429s':>5} {'req/s':>6} {'share':>6} | "
              f"{'missing':>7} {'repeated':>8} {'failed':>6}")
        for per_minute in (None, int(60 * args.limit)):
            row = rate_limited(args, folder, per_minute)
            print(f"{str(row['rpm'] or 'none'):>19} | {row['elapsed']:>7.1f} {row['answered']:>8} {row['rejected']:>5} "
                  f"{row['rate']:>6.1f} {row['share']:>6.0%} | {row['missing']:>7} {row['repeated']:>8} {row['failed']:>6}"
                  + (f"  {row['reasons']}" if row["reasons"] else ""))
            lost = row["missing"] + row["repeated"] + row["failed"]
            verdict = "reached" if row["share"] >= GOAL_RATE_SHARE and lost == 0 else "NOT reached"
            print(f"{'':>19}   goal >= {GOAL_RATE_SHARE:.0%} of the limit and 0 lost or repeated: {verdict}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(_CACHE, ignore_errors=True)


if __name__ == "__main__":
    main()
