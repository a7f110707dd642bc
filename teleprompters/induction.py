"""Instruction induction: the prompt model reads demonstrations and writes the instruction behind them.

APE's proposal step (Zhou et al. 2023), shared by the teleprompters that start from induced prompts
(APE itself, PE2's APE-style initialisation). A template holds the demonstrations at :data:`DEMOS`
and the instruction's place at :data:`BLANK`; the templates belong to the method that wrote them (PE2
induces with APE's forward template). This module is not a teleprompter: the methods share induction
through it rather than through each other's modules.

Example:
    >>> settings = Induction(template=f"Examples: {DEMOS}. The instruction was to {BLANK}", demos=3)
    >>> induction_messages(settings.template, "2 -> 4")[0]["content"]
    'Examples: 2 -> 4. The instruction was to'
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import dspy
from cuecard.program import get_instructions, predictors
from pydantic import BaseModel, Field

from .base import SearchContext, Teleprompter

DEMOS = "[[DEMOS]]"
BLANK = "[[INSTRUCTION]]"

# The induction templates: APE's forward and reverse modes, and PE2's start from induced prompts.
FORWARD_TEMPLATE = (
    "A teacher gave a student one instruction. Following it, the student turned each input below "
    "into the output shown next to it.\n\n"
    f"{DEMOS}\n\n"
    "In one sentence, what was the instruction? The instruction was to "
    f"{BLANK}"
)
REVERSE_TEMPLATE = (
    "Below is a task description with its instruction missing, followed by worked examples.\n\n"
    f"Instruction: {BLANK}\n\n"
    f"{DEMOS}\n\n"
    "Write the missing instruction: one sentence that tells how to get each output from its input."
)


def collect_traces(ctx: SearchContext, predictor_name: str) -> list[dspy.Example]:
    """Run the program on train examples; keep ``predictor_name``'s inputs and outputs where the metric passed."""
    return traced_demos(ctx, predictor_name)[0]


def traced_demos(ctx: SearchContext, predictor_name: str) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """The seed program run on every train example (one traced run each): ``predictor_name``'s steps in the
    runs the metric passed, and, where it made a run's last step, its inputs there with the example's gold
    values for the outputs it writes (the answer it should have given; empty for a predictor whose outputs
    are not labelled)."""
    seed = get_instructions(ctx.student)
    passed: list[dspy.Example] = []
    gold: list[dspy.Example] = []
    for example in ctx.train:
        run = ctx.engine.trace(seed, example)
        if run.error is not None:
            continue
        try:
            succeeded = bool(ctx.metric(example, run.prediction, run.steps))
        except Exception:
            continue
        for name, inputs, outputs in run.steps:
            if name == predictor_name and succeeded:
                passed.append(dspy.Example(**inputs, **outputs).with_inputs(*inputs))
        if run.steps and run.steps[-1][0] == predictor_name:
            _, inputs, outputs = run.steps[-1]
            labels = {field: example[field] for field in outputs if field in example.labels()}
            if labels:
                gold.append(dspy.Example(**inputs, **labels).with_inputs(*inputs))
    return passed, gold


class Induction(BaseModel):
    """How instructions are induced: the template (with the demos and blank markers), how many demo
    subsamples, demos each, samples per subsample, and the sampling settings."""

    template: str = Field(description=f"the induction request, with the {DEMOS} and {BLANK} markers")
    subsamples: int = 1
    demos: int = 5
    per_subsample: int = 10
    temperature: float = 0.9
    max_tokens: int = 80


def induction_messages(template: str, demos: str) -> list[dict[str, str]]:
    """The induction request: the template with the demos in, the blank cut (forward) or marked."""
    if template.rstrip().endswith(BLANK):
        text = template.rstrip()[: -len(BLANK)].rstrip()
    else:
        text = template.replace(BLANK, "____")
    return [{"role": "user", "content": text.replace(DEMOS, demos)}]


def demo_pool(ctx: SearchContext, predictor_name: str) -> list[dspy.Example]:
    """Train examples as the predictor sees them: the examples themselves for a one-predictor
    program; for a pipeline, the predictor's own inputs/outputs in runs the metric judged right, or,
    when no run was right, the last predictor's inputs with the gold outputs (:func:`traced_demos`)."""
    if len(predictors(ctx.student)) == 1:
        return ctx.train
    passed, gold = traced_demos(ctx, predictor_name)
    if passed or not gold:
        return passed
    ctx.note(
        f"{predictor_name}: no successful trace; inducing from its inputs in the program's runs with the gold "
        f"outputs ({len(gold)} examples)"
    )
    return gold


def induce(teleprompter: Teleprompter, ctx: SearchContext, predictor_name: str, settings: Induction) -> list[str]:
    """Instructions for ``predictor_name`` induced from train demonstrations by the prompt model,
    cleaned and screened (:func:`hygiene`), duplicates dropped; every drop is counted in the report."""
    pool = demo_pool(ctx, predictor_name)
    if not pool:
        ctx.note(f"{predictor_name}: no successful trace to induce from")
        return []
    proposals: list[str] = []
    seen: set[str] = set()
    demo_texts = [str(value) for example in pool for value in example.values()]
    pipeline = len(predictors(ctx.student)) > 1
    requests = []
    for _ in range(settings.subsamples):
        demos = ctx.rng.sample(pool, min(settings.demos, len(pool)))
        rendered = teleprompter.format_demos(ctx.student, demos, predictor_name if pipeline else None)
        requests += [induction_messages(settings.template, rendered)] * settings.per_subsample
    replies = teleprompter.propose_many(
        ctx, requests, temperature=settings.temperature, max_tokens=settings.max_tokens, read=lambda reply: [reply]
    )
    for items in replies:
        for raw in items or []:
            text = hygiene(teleprompter, ctx, raw, demo_texts)
            if text is None:
                continue
            if text.lower() in seen:
                ctx.drop("duplicate")
                continue
            seen.add(text.lower())
            proposals.append(text)
    return proposals


def hygiene(teleprompter: Teleprompter, ctx: SearchContext, raw: str, demo_texts: Sequence[str]) -> str | None:
    """Clean a proposal, or drop it (counted by reason): empty, over-long, or copying training text."""
    text = teleprompter.screen(ctx, raw)
    if text is None:
        return None
    lowered = text.lower()
    if any(len(demo) > 20 and demo.lower() in lowered for demo in demo_texts):
        ctx.drop("copies a demonstration")
        return None
    if text.count(":") >= 3 or "\n" in text:
        ctx.drop("echoes the demo format")
        return None
    return text


def combine(ctx: SearchContext, seed: dict[str, str], pools: dict[str, list[str]]) -> list[dict[str, str]]:
    """Full candidates: for one predictor, one per proposal; for several, seeded combinations."""
    names = list(seed)
    if len(names) == 1:
        return [{names[0]: text} for text in pools[names[0]]]
    options = [pools[name] or [seed[name]] for name in names]
    count = max(len(option) for option in options)
    combos = list(itertools.product(*options))
    ctx.rng.shuffle(combos)
    return [dict(zip(names, combo, strict=True)) for combo in combos[:count]]


__all__ = [
    "BLANK",
    "DEMOS",
    "Induction",
    "collect_traces",
    "combine",
    "demo_pool",
    "hygiene",
    "induce",
    "induction_messages",
    "traced_demos",
]
