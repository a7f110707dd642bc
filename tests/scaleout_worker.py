"""One worker of a compile run by several processes: ``python scaleout_worker.py STORAGE OUT GO DELAY SIZE [MAX_CALLS [KIND]]``.

Every worker runs the same compile (APE: induction from demonstrations, multi-stage scoring, one
Monte Carlo round) on the same run (``--run-name scaleout`` in STORAGE), as ``cuecard compile`` on
several machines would. The task model is scripted: each reply takes DELAY seconds and is right or
wrong by a hash of the instruction and the review, so candidates differ in accuracy the same way in
every process; the prompt model's reply is a function of the request's sampling seed, so every
process would get the same proposal for the same request. SIZE is ``small`` (about 170 LM requests
uncapped) or ``large`` (about 490); MAX_CALLS caps the compile (``Limits(max_calls=MAX_CALLS)``, or with
KIND ``model`` ``Limits(max_model_calls=MAX_CALLS)``).

The worker touches ``OUT.ready`` once imported and starts when the file GO exists (so all start
together). Every evaluation it computes and stores itself is appended to ``OUT.log`` (candidate key
and example index, one per line, as it is stored); at the end ``OUT`` gets the report's outcome and
the requests this process's scripted models received, the report's run-wide usage, and the usage in
the compiled program's saved file ``OUT.program.json``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import cuecard
import dspy
from cuecard.clients.lm import CuecardLM
from cuecard.clients.testing import ScriptedEngine, scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO
from evaluation_log import logged_evaluations

RUN_NAME = "scaleout"
POSITIVE = ["loved", "great", "wonderful", "excellent", "superb", "delightful", "charming", "brilliant", "fine"]
NEGATIVE = ["hated", "awful", "terrible", "boring", "dull", "poor", "clumsy", "tedious", "broken"]
THINGS = ["film", "soup", "hotel", "novel", "phone", "concert", "game", "chair", "museum", "bus", "park"]
TRAIN = 16
SIZES = {"small": {"dev": 20, "num_prompts_per_subsample": 5}, "large": {"dev": 60, "num_prompts_per_subsample": 10},
         "medium": {"dev": 40}}
"""Dev examples and APE's proposals per subsample of each size of the compile; ``medium`` is ``auto="medium"`` (600
requests, the knobs planned by the method)."""
APE_SETTINGS = dict(num_subsamples=2, num_demos=4, mc_rounds=1, mc_top_fraction=0.5, mc_variations=3, seed=1)
METHODS = {"ape": APE, "opro": OPRO}


def number(*parts: str) -> int:
    """A number from text, the same in every process (``hash()`` is salted per process)."""
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:12], 16)


def reviews(count: int) -> list[dspy.Example]:
    """``count`` labelled reviews, alternately positive and negative."""
    examples = []
    for i in range(count):
        positive = i % 2 == 0
        word = (POSITIVE if positive else NEGATIVE)[(i // 2) % len(POSITIVE)]
        text = f"Review {i}: the {THINGS[i % len(THINGS)]} was {word}."
        examples.append(dspy.Example(review=text, sentiment="positive" if positive else "negative").with_inputs("review"))
    return examples


def task_reply(messages: list[dict[str, str]]) -> str:
    """The right label with a probability (between 0.35 and 0.95) that depends on the instruction alone."""
    text = messages[-1]["content"]
    review = re.search(r"Review: (Review \d+: [^\n]*)", text).group(1)
    instruction = text.replace(review, "")
    quality = 35 + number(instruction) % 61
    word = review.rsplit(" ", 1)[-1].strip(".")
    right = "positive" if word in POSITIVE else "negative"
    wrong = "negative" if right == "positive" else "positive"
    return right if number(instruction, review) % 100 < quality else wrong


def prompt_reply(messages: list[dict[str, str]], seed: int | None) -> str:
    """An instruction chosen by the request's sampling seed (a few repeat: APE drops duplicates)."""
    text = messages[-1]["content"]
    if text.startswith("Rewrite this instruction"):
        original = text.rsplit("Instruction: ", 1)[-1].strip().rstrip(".")
        return f"{original}, put another way ({(seed or 0) % 7})."
    return f"Tell whether the review is positive or negative, style {(seed or 0) % 97}."


class SeededEngine(ScriptedEngine):
    """A scripted engine whose reply also sees the request's sampling seed (proposals are asked one at a time)."""

    def __init__(self) -> None:
        super().__init__(lambda messages: prompt_reply(messages, self.seed))
        self.seed: int | None = None

    def complete(self, request):  # noqa: ANN001, ANN201 - DSPy's engine interface
        self.seed = request.config.seed
        return super().complete(request)


def run(
    storage: str, log: Path, delay: float, size: str = "small", max_calls: int | None = None, kind: str = "requests",
    saved: Path | None = None, method: str = "ape", threads: int | None = None,
) -> dict:
    """Run the compile of ``size`` with ``method`` (``ape``; ``opro`` at the ``medium`` size) on ``storage``; the
    outcome and the requests the scripted models received. ``threads``: the teleprompter's ``num_threads``."""

    def slow_task(messages: list[dict[str, str]]) -> str:
        time.sleep(delay)
        return task_reply(messages)

    task_lm = scripted_lm(slow_task, name="scripted/task")
    prompt_lm = CuecardLM("scripted/prompt", spec="scripted/prompt", is_local=True, engine=SeededEngine(),
                          temperature=0.0, max_tokens=256, cache=False, num_retries=0)
    data = reviews(TRAIN + SIZES[size]["dev"])
    if size == "medium":
        knobs = dict(auto="medium", seed=1)
    elif method == "ape":
        knobs = dict(APE_SETTINGS, num_prompts_per_subsample=SIZES[size]["num_prompts_per_subsample"])
    else:
        raise ValueError(f"{method} runs at the medium size only")
    if threads is not None:
        knobs["num_threads"] = threads
    teleprompter = METHODS[method](metric=exact_match("sentiment"), task_lm=task_lm, prompt_lm=prompt_lm, run_name=RUN_NAME,
                                   storage=storage, limits=limits(max_calls, kind), progress=False, **knobs)
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    with logged_evaluations(log):
        compiled = teleprompter.compile(program, trainset=data[:TRAIN], valset=data[TRAIN:])
    report = compiled.cuecard_report
    saved_usage = None
    if saved is not None:
        cuecard.save(compiled, saved)
        saved_usage = cuecard.read_block(saved).usage.model_dump()
    return {
        "usage": report.usage.model_dump(),
        "saved_usage": saved_usage,
        "outcome": report.outcome(),
        "task_requests": len(task_lm.engine.requests),
        "prompt_requests": len(prompt_lm.engine.requests),
        "computed": report.process.evaluations_computed,
        "read_back": report.process.evaluations_read_back,
    }


def limits(max_calls: int | None, kind: str) -> cuecard.Limits | None:
    """The compile's cap: on requests (``kind`` ``requests``) or on calls that reach a model (``model``)."""
    if not max_calls:
        return None
    return cuecard.Limits(max_model_calls=max_calls) if kind == "model" else cuecard.Limits(max_calls=max_calls)


if __name__ == "__main__":
    storage, out, go, delay = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    size, cap = sys.argv[5], int(sys.argv[6]) if len(sys.argv) > 6 else None
    kind = sys.argv[7] if len(sys.argv) > 7 else "requests"
    Path(f"{out}.ready").touch()
    while not go.exists():
        time.sleep(0.02)
    result = run(storage, Path(f"{out}.log"), delay, size, cap, kind, Path(f"{out}.program.json"))
    out.write_text(json.dumps(result))
    gc.freeze()  # the process ends as the cuecard command ends (cuecard.command.cli.entry)
