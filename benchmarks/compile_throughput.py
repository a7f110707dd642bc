"""Does a compile keep a remote model busy? Wall time against the chain of dependent LM calls.

Every teleprompter compiles a small sentiment task against an OpenAI-compatible stub server
(``cuecard.clients.testing.StubServer``, in a process of its own) that answers every request after
``--latency`` seconds (500 ms by default): the task model's answers (right or wrong by a hash of
the instruction and the review, so candidates differ), and the prompt model's proposals (chosen by
the request's sampling seed). Each method is compiled three times on the same reviews, each time on
a fresh SQLite run, with DSPy's cache off (every request reaches the server):

- at 1 thread (``num_threads=1``): every LM call after the other;
- at 16 threads: the setting of a remote model;
- at 512 threads: as many calls at once as the search allows. The server's log of that run gives the
  *critical path*: the longest chain of requests each started after the previous one was answered
  (the LM calls that depend on each other), times the latency; and the same chain when each link's
  requests go out 16 at a time (``path@16``, the least a run at 16 threads can take).

Printed per method: LM calls, wall time at 1 and 16 threads, the speed-up, the critical path, the mean
calls in flight at 16 threads (the server's busy time over the wall time), wall / critical path,
and whether the three runs chose the same winner.
Targets at 16 threads: wall <= 1.5x the critical path for every method, and APE >= 8x faster than at
one thread.

    .venv/bin/python benchmarks/compile_throughput.py [--latency 0.5] [--methods ape,protegi,opro,pe2]
"""

from __future__ import annotations

import os
import sys
import tempfile

_CACHE = os.environ.get("CUECARD_THROUGHPUT_CACHE") or tempfile.mkdtemp(prefix="cuecard-throughput-cache-")
os.environ["CUECARD_THROUGHPUT_CACHE"] = os.environ["DSPY_CACHEDIR"] = _CACHE
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

GOAL_RATIO, GOAL_APE_SPEEDUP = 1.5, 8.0
UNBOUNDED = 512
POSITIVE = ["loved", "great", "wonderful", "excellent", "superb", "delightful", "charming", "brilliant"]
NEGATIVE = ["hated", "awful", "terrible", "boring", "dull", "poor", "clumsy", "tedious"]
THINGS = ["film", "soup", "hotel", "novel", "phone", "concert", "game", "chair", "museum", "bus", "park"]

METHODS: dict[str, dict[str, Any]] = {
    "ape": {"num_subsamples": 3, "num_prompts_per_subsample": 3, "num_demos": 4},
    "protegi": {"rounds": 2, "beam_size": 2, "minibatch_size": 8, "n_gradients": 2, "mc_samples_per_step": 1,
                "max_expansion_factor": 4, "samples_per_eval": 8, "eval_rounds": 2, "prompts_per_round": 4},
    "opro": {"steps": 3, "instructions_per_step": 4, "patience": 3},
    "pe2": {"steps": 2, "beam": 2, "proposals_per_prompt": 2},
}
"""Small settings of each method (a few dozen LM calls): the shape of the search, not its size, is measured."""


def number(*parts: str) -> int:
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:12], 16)


# ---- the server, in a process of its own -------------------------------------------------------------
def reply(messages: list[dict[str, Any]], seed: int) -> str:
    """The task model's label, or a proposal of the prompt model chosen by the request's sampling seed."""
    text = str(messages[-1].get("content", "")) if messages else ""
    review = re.search(r"Review \d+ \[[^\]]*\]: [^\n]*", text)
    if review and "[[ ## sentiment ## ]]" in text:  # the task model (DSPy's ChatAdapter)
        instruction = text.replace(review.group(0), "")
        word = review.group(0).rsplit(" ", 1)[-1].strip(".")
        right = "positive" if word in POSITIVE else "negative"
        wrong = "negative" if right == "positive" else "positive"
        label = right if number(instruction, review.group(0)) % 100 < 40 + number(instruction) % 55 else wrong
        return f"[[ ## sentiment ## ]]\n{label}\n\n[[ ## completed ## ]]"
    instruction = f"Tell whether the review is positive or negative, style {seed % 997}."
    return f"<START>{instruction}<END>" if "<START>" in text or "<INS>" in text else instruction


def _serve(connection: Any, latency: float) -> None:
    """A stub server whose log keeps the start and end of every request (the latency is applied here)."""
    from cuecard.clients.testing import StubServer

    log: list[tuple[float, float]] = []
    lock = threading.Lock()

    class Logged(StubServer):
        def answer(self, request: dict[str, Any]) -> str:
            start = time.monotonic()
            time.sleep(latency)
            with lock:
                log.append((start, time.monotonic()))
            messages = request.get("messages") or []
            return reply(messages, int(request.get("seed") or number(json.dumps(messages))))

    server = Logged(lambda messages: "").start()
    connection.send(server.url)
    while True:
        command = connection.recv()
        if command == "log":
            with lock:
                connection.send(list(log))
                log.clear()
        else:
            server.stop()
            connection.send("stopped")
            return


class Server:
    def __init__(self, latency: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, latency), daemon=True)
        self.process.start()
        self.url = self.connection.recv()

    def log(self) -> list[tuple[float, float]]:
        self.connection.send("log")
        return self.connection.recv()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.connection.send("stop")
        self.connection.recv()
        self.process.join(10)


# ---- one compile -------------------------------------------------------------------------------------
def reviews(count: int, tag: str) -> list[Any]:
    import dspy

    examples = []
    for i in range(count):
        positive = i % 2 == 0
        word = (POSITIVE if positive else NEGATIVE)[(i // 2) % len(POSITIVE)]
        text = f"Review {i} [{tag}]: the {THINGS[i % len(THINGS)]} was {word}."
        examples.append(dspy.Example(review=text, sentiment="positive" if positive else "negative").with_inputs("review"))
    return examples


def compile_once(method: str, url: str, threads: int, folder: Path, tag: str) -> dict[str, Any]:
    import cuecard
    import dspy
    from cuecard.metrics import exact_match
    from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi

    classes = {"ape": APE, "protegi": ProTeGi, "opro": OPRO, "pe2": PE2}

    lm = cuecard.LM("openai/stub", api_base=url, api_key="sk-test", cache=False)
    prompt_lm = cuecard.LM("openai/stub-proposer", api_base=url, api_key="sk-test", cache=False)
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the review as positive or negative."))
    teleprompter = classes[method](
        metric=exact_match("sentiment"), task_lm=lm, prompt_lm=prompt_lm, num_threads=threads, progress=False,
        storage=f"sqlite:///{folder / f'{method}-{threads}.db'}", **METHODS[method],
    )
    start = time.perf_counter()
    compiled = teleprompter.compile(program, trainset=reviews(24, tag))
    wall = time.perf_counter() - start
    report = compiled.cuecard_report
    return {"wall": wall, "calls": report.usage.model_calls, "best": compiled.signature.instructions}


def depths(log: list[tuple[float, float]]) -> list[int]:
    """Each request's place in the longest chain of requests each started after the previous one was
    answered: the dependent LM calls of a search that sends together everything it can (measured with
    unbounded threads)."""
    ordered = sorted(log)
    depth: list[int] = []
    for start, _ in ordered:
        before = [d for (_, end), d in zip(ordered, depth, strict=False) if end <= start]
        depth.append(1 + max(before, default=0))
    return depth


def critical_path(log: list[tuple[float, float]], latency: float, threads: int | None = None) -> float:
    """The chain's length x latency; with ``threads``, each link takes ceil(its requests / threads) rounds."""
    counts: dict[int, int] = {}
    for depth in depths(log):
        counts[depth] = counts.get(depth, 0) + 1
    return latency * sum(1 if threads is None else -(-n // threads) for n in counts.values())


def in_flight(log: list[tuple[float, float]], wall: float) -> float:
    return sum(end - start for start, end in log) / wall if wall else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    logging.getLogger("cuecard").setLevel(logging.ERROR)
    import cuecard  # noqa: F401 - imported once before timing

    folder = Path(tempfile.mkdtemp(prefix="cuecard-throughput-"))
    rows = []
    try:
        with Server(args.latency) as server:
            warm_up(server.url)
            for method in args.methods.split(","):
                runs = {}
                for threads in (1, 16, UNBOUNDED):
                    server.log()  # drop what came before
                    run = compile_once(method, server.url, threads, folder, method)
                    run["log"] = server.log()
                    runs[threads] = run
                path = critical_path(runs[UNBOUNDED]["log"], args.latency)
                path16 = critical_path(runs[UNBOUNDED]["log"], args.latency, 16)
                one, sixteen = runs[1], runs[16]
                rows.append({
                    "method": method, "calls": sixteen["calls"], "same": one["best"] == sixteen["best"] == runs[UNBOUNDED]["best"], "wall1": one["wall"], "wall16": sixteen["wall"],
                    "speedup": one["wall"] / sixteen["wall"], "path": path, "inflight": in_flight(sixteen["log"], sixteen["wall"]),
                    "ratio": sixteen["wall"] / path if path else float("nan"), "path16": path16,
                    "ratio16": sixteen["wall"] / path16 if path16 else float("nan"),
                })
                print_row(rows[-1], header=len(rows) == 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(_CACHE, ignore_errors=True)
    ape = next((r for r in rows if r["method"] == "ape"), None)
    worst = max((r["ratio"] for r in rows), default=float("nan"))
    print(f"\nlatency {args.latency * 1000:.0f} ms per call; critical path = the longest chain of LM calls each "
          f"started after the previous one's answer, at {UNBOUNDED} threads, x latency; "
          "path@16: the same chain when each link's requests go out 16 at a time (the least a 16-thread run can take)")
    print(f"goal: wall / critical path <= {GOAL_RATIO} at 16 threads for every method: worst {worst:.2f} "
          f"({'met' if worst <= GOAL_RATIO else 'NOT met'})")
    if ape is not None:
        print(f"goal: APE >= {GOAL_APE_SPEEDUP:.0f}x faster at 16 threads than at 1: {ape['speedup']:.1f}x "
              f"({'met' if ape['speedup'] >= GOAL_APE_SPEEDUP else 'NOT met'})")


def warm_up(url: str) -> Any:
    """Import litellm and open a connection before anything is timed."""
    import cuecard

    return cuecard.LM("openai/stub", api_base=url, api_key="sk-test")("warm up")


def print_row(row: dict[str, Any], header: bool) -> None:
    if header:
        print(f"{'method':<8} {'calls':>5} {'wall 1t':>8} {'wall 16t':>9} {'speed-up':>8} {'crit. path':>10} "
              f"{'in flight':>9} {'wall/path':>9} {'path@16':>8} {'wall/path@16':>12} {'same winner':>11}")
    print(f"{row['method']:<8} {row['calls']:>5} {row['wall1']:>7.1f}s {row['wall16']:>8.1f}s {row['speedup']:>7.1f}x "
          f"{row['path']:>9.1f}s {row['inflight']:>9.1f} {row['ratio']:>9.2f} {row['path16']:>7.1f}s {row['ratio16']:>12.2f} {'yes' if row['same'] else 'no':>11}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
