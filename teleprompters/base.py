"""The compile skeleton every cuecard teleprompter shares.

``compile`` checks the input, splits train/dev, opens the engine (an Optuna study in a run
directory), lets the method propose candidates and score them through the engine, and returns a
copy of the student carrying the winner's instructions, with the compile report attached as
``compiled.cuecard_report``. A method only implements :meth:`Teleprompter.search`.

Example:
    >>> from cuecard.teleprompters import APE  # doctest: +SKIP
    >>> compiled = APE(metric=my_metric, task_lm=cuecard.LM("local")).compile(program, trainset=train)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy
from cuecard.errors import BudgetExhausted, ScoringUnsupportedError
from cuecard.evaluate import Evaluator, Objective
from cuecard.metrics import normalize_instruction_induction
from cuecard.policies import Allocation, MultiStage, Policy
from cuecard.program import apply_instructions, check_examples, get_instructions, predictors
from cuecard.study import Engine, data_fingerprint
from cuecard.usage import Limits, Usage, track
from dspy.teleprompt import Teleprompter as DSPyTeleprompter
from pydantic import BaseModel, ConfigDict, Field


class TeleprompterConfig(BaseModel):
    """Settings every teleprompter shares; each method extends it with its own (and its defaults)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    objective: Objective = "metric"
    dev_fraction: float = Field(0.5, gt=0, lt=1, description="share of the trainset kept for dev when no valset")
    max_dev: int | None = Field(None, ge=1, description="cap on dev examples (the pool every candidate walks)")
    max_instruction_chars: int = Field(500, ge=10)


class CandidateSummary(BaseModel):
    """One candidate as the report shows it."""

    arm: int
    key: str
    instructions: dict[str, str]
    origin: str
    parent: str | None = None
    round: int = 0
    dev_score: float
    dev_examples: int
    pruned: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)


class CompileReport(BaseModel):
    """What a compile did: candidates with scores and lineage, the winner, usage, and why it stopped."""

    teleprompter: str
    config: dict[str, Any]
    run_name: str
    storage: str
    seed: int
    train_size: int
    dev_size: int
    seed_instructions: dict[str, str]
    seed_dev_score: float | None = None
    task_model: str | None = None
    prompt_model: str | None = None
    data_fingerprint: str | None = Field(None, description="hash of the train and dev examples")
    best: CandidateSummary
    candidates: list[CandidateSummary]
    dropped: dict[str, int] = Field(default_factory=dict)
    evaluations: int = 0
    usage: Usage = Field(default_factory=Usage)
    task_usage: Usage = Field(default_factory=Usage)
    prompt_usage: Usage = Field(default_factory=Usage)
    notes: list[str] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list, description="per round/step, what the method did")

    @property
    def improved(self) -> bool:
        return self.seed_dev_score is None or self.best.dev_score > self.seed_dev_score


class SearchContext:
    """What :meth:`Teleprompter.search` works with: the engine, the data, the LMs, a seeded RNG, and a log."""

    def __init__(self, teleprompter: Teleprompter, student: dspy.Module, engine: Engine, train: list[dspy.Example]) -> None:
        self.teleprompter = teleprompter
        self.student = student
        self.engine = engine
        self.train = train
        self.rng = random.Random(teleprompter.config.seed)
        self.dropped: dict[str, int] = {}
        self.notes: list[str] = []
        self.pruned: set[int] = set()
        self.sample_counter = 0
        self.history: list[dict[str, Any]] = []
        self._train_answers: set[str] | None = None

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def note(self, text: str) -> None:
        self.notes.append(text)

    def train_answers(self) -> set[str]:
        """Every output value of the train examples, normalised (a proposal that is one of them is an answer)."""
        if self._train_answers is None:
            self._train_answers = {normalize_instruction_induction(str(v)) for e in self.train for v in e.labels().values()}
        return self._train_answers

    def next_sample_index(self) -> int:
        """A fresh rollout index for the prompt model (distinct samples, each cached on its own)."""
        self.sample_counter += 1
        return self.sample_counter

    def ranking(self) -> list[Any]:
        """Every candidate of the run, best first, with the ones this search pruned marked."""
        return self.engine.ranking(pruned=frozenset(self.pruned))

    def ranking_so_far(self) -> Allocation:
        """The whole run's ranking as the search's final answer (no new evaluation)."""
        return Allocation(policy=self.teleprompter.policy.name, ranking=self.ranking(), evaluations=self.engine.evaluations)

    def allocate(self, arms: Sequence[int] | None = None, budget: int | None = None) -> Allocation:
        allocation = self.engine.allocate(self.teleprompter.policy, arms, budget)
        self.pruned.update(e.arm for e in allocation.ranking if e.pruned)
        if allocation.stopped:
            self.note(f"scoring stopped early: {allocation.stopped}")
        return allocation


class Teleprompter(DSPyTeleprompter):
    """Base class of cuecard's teleprompters (a DSPy ``Teleprompter``).

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool/int/float in [0, 1].
        task_lm: the LM the program runs on.
        prompt_lm: the LM that writes instructions (default: the task LM).
        policy: how candidates are scored (default: :class:`~cuecard.policies.MultiStage`).
        config: the method's settings (its ``Config`` model, or keyword arguments for it).
        run_name / storage / run_dir: where the study lives (default ``runs/<name>/study.db``);
            the same name and storage resume a killed run.
        limits / max_evaluations: caps on LM calls, tokens, dollars and example evaluations.
        progress: show progress bars.
        adapter: the DSPy adapter the program runs with while compiling (default: the one
            :func:`cuecard.adapter_for` picks for the task LM).
    """

    name = "teleprompter"
    Config: type[TeleprompterConfig] = TeleprompterConfig

    def __init__(
        self,
        *,
        metric: Callable[..., Any] | None,
        task_lm: dspy.LM,
        prompt_lm: dspy.LM | None = None,
        policy: Policy | None = None,
        run_name: str | None = None,
        storage: str | None = None,
        run_dir: str | Path | None = None,
        limits: Limits | None = None,
        max_evaluations: int | None = None,
        progress: bool = True,
        num_threads: int = 8,
        adapter: dspy.Adapter | None = None,
        **config: Any,
    ) -> None:
        super().__init__()
        self.metric = metric
        self.task_lm = task_lm
        self.prompt_lm = prompt_lm or task_lm
        self.policy = policy or MultiStage()
        self.run_name = run_name
        self.storage = storage
        self.run_dir = run_dir
        self.limits = limits
        self.max_evaluations = max_evaluations
        self.progress = progress
        self.num_threads = num_threads
        self.adapter = adapter
        self.config = self.Config(**config)

    # ---- what a method implements --------------------------------------------------------------
    @abstractmethod
    def search(self, ctx: SearchContext) -> Allocation:
        """Propose candidates into ``ctx.engine``, score them (``ctx.allocate``), return the final ranking."""

    def validate(self, student: dspy.Module, trainset: Sequence[dspy.Example]) -> None:
        """Method-specific checks that must fail before any LM call."""

    def task_adapter(self) -> dspy.Adapter:
        """The adapter the program runs with while compiling."""
        from cuecard.adapter import adapter_for

        return self.adapter or adapter_for(self.task_lm)

    # ---- the skeleton ----------------------------------------------------------------------------
    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: Sequence[dspy.Example],
        teacher: Any = None,
        valset: Sequence[dspy.Example] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        check_examples(student, trainset, what="trainset")
        if valset is not None:
            check_examples(student, valset, what="valset")
        if self.config.objective == "logprob" and getattr(self.task_lm, "scorer", None) is None:
            raise ScoringUnsupportedError(
                f"objective='logprob' needs a task model that can score text; {self.task_lm.model!r} cannot"
            )
        self.validate(student, trainset)
        train, dev = self.split(list(trainset), list(valset) if valset is not None else None)
        evaluator = Evaluator(
            student,
            self.metric,
            task_lm=self.task_lm,
            adapter=self.task_adapter(),
            objective=self.config.objective,
            num_threads=self.num_threads,
        )
        evaluator.check_metric(dev[0])
        name = self.run_name or self.default_run_name(student, trainset)
        engine = Engine(
            evaluator,
            dev,
            name=name,
            storage=self.storage,
            run_dir=self.run_dir,
            config={"teleprompter": self.name, **self.config.model_dump(), "policy": type(self.policy).__name__},
            limits=self.limits,
            max_evaluations=self.max_evaluations,
            progress=self.progress,
            calls_per_example=len(predictors(student)),
        )
        ctx = SearchContext(self, student, engine, train)
        seed_instructions = get_instructions(student)
        with track(f"{self.name}-compile", self.limits) as block, engine.session():
            engine.add_candidate(seed_instructions, origin="program")
            try:
                final = self.search(ctx)
            except BudgetExhausted as exc:
                ctx.note(f"search stopped: {exc}; the best candidate scored so far wins")
                final = ctx.ranking_so_far()
        engine.finish(sorted(ctx.pruned))
        report = self.build_report(ctx, final, seed_instructions, train, dev, block)
        compiled = apply_instructions(student, report.best.instructions)
        compiled.cuecard_report = report
        return compiled

    def split(self, trainset: list[dspy.Example], valset: list[dspy.Example] | None) -> tuple[list, list]:
        """Seeded train/dev split (dev capped at ``max_dev``); a given valset is the dev set."""
        rng = random.Random(self.config.seed)
        if valset is None:
            shuffled = trainset[:]
            rng.shuffle(shuffled)
            cut = max(1, min(len(shuffled) - 1, round(len(shuffled) * (1 - self.config.dev_fraction))))
            train, dev = shuffled[:cut], shuffled[cut:]
            if len(trainset) == 1:
                train = dev = shuffled
        else:
            train, dev = trainset, valset[:]
            rng.shuffle(dev)
        if self.config.max_dev is not None:
            dev = dev[: self.config.max_dev]
        return train, dev

    def default_run_name(self, student: dspy.Module, trainset: Sequence[dspy.Example]) -> str:
        digest = hashlib.sha256(
            json.dumps(
                [self.name, self.config.model_dump(), get_instructions(student), [dict(e.items()) for e in trainset]],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:10]
        return f"{self.name}-{digest}"

    def build_report(
        self,
        ctx: SearchContext,
        final: Allocation,
        seed_instructions: dict[str, str],
        train: list[dspy.Example],
        dev: list[dspy.Example],
        block: Any,
    ) -> CompileReport:
        engine = ctx.engine
        ranked = list(final.ranking)
        in_final = {estimate.arm for estimate in ranked}
        others = [e for e in engine.ranking() if e.arm not in in_final]  # earlier rounds' candidates
        summaries = []
        for estimate in ranked + others:
            record = engine.candidates[estimate.arm]
            summaries.append(
                CandidateSummary(
                    arm=estimate.arm,
                    key=record.key,
                    instructions=record.instructions,
                    origin=record.origin,
                    parent=record.parent,
                    round=record.round,
                    dev_score=estimate.mean,
                    dev_examples=estimate.n,
                    pruned=estimate.arm in ctx.pruned,
                    meta=record.meta,
                )
            )
        seed_arm = engine.arm_of(seed_instructions)
        seed_summary = next((s for s in summaries if s.arm == seed_arm), None)
        by_model = block.by_model
        task_usage = by_model.get(self.task_lm.model, Usage())
        prompt_usage = by_model.get(self.prompt_lm.model, Usage()) if self.prompt_lm.model != self.task_lm.model else Usage()
        return CompileReport(
            teleprompter=self.name,
            config=self.config.model_dump(),
            run_name=engine.name,
            storage=engine.storage_url,
            seed=self.config.seed,
            train_size=len(train),
            dev_size=len(dev),
            seed_instructions=seed_instructions,
            seed_dev_score=seed_summary.dev_score if seed_summary else None,
            task_model=self.task_lm.model,
            prompt_model=self.prompt_lm.model,
            data_fingerprint=data_fingerprint(train + dev),
            best=summaries[0],
            candidates=summaries,
            dropped=ctx.dropped,
            evaluations=engine.evaluations,
            usage=block.usage,
            task_usage=task_usage,
            prompt_usage=prompt_usage,
            notes=ctx.notes,
            history=ctx.history,
        )

    # ---- helpers methods share ------------------------------------------------------------------
    def add_seed_instructions(self, ctx: SearchContext, texts: Sequence[str]) -> None:
        """User-given instructions compete as candidates (each predictor's in turn, the others kept)."""
        seed = get_instructions(ctx.student)
        for text in texts:
            for name in seed:
                ctx.engine.add_candidate({**seed, name: text}, origin="user-seed")

    def screen(self, ctx: SearchContext, raw: str) -> str | None:
        """A proposal cleaned (:func:`clean_instruction`), or None (counted in the report) when it is empty,
        over-long, or nothing but one of the train outputs: "Positive" makes a model answer "positive"
        to everything, which a balanced dev split scores at chance and rewards over a real instruction."""
        text = clean_instruction(raw)
        if not text:
            ctx.drop("empty")
            return None
        if len(text) > self.config.max_instruction_chars:
            ctx.drop("too long")
            return None
        if normalize_instruction_induction(text) in ctx.train_answers():
            ctx.drop("an answer, not an instruction")
            return None
        return text

    def ask_prompt_lm(self, ctx: SearchContext, messages: list[dict[str, str]], *, temperature: float, max_tokens: int = 200) -> str:
        """One sample from the prompt LM (own rollout id and seed, so samples differ and cache one by one)."""
        from cuecard.lm import sampling_kwargs

        index = ctx.next_sample_index()
        options = sampling_kwargs(self.config.seed, index, temperature) if temperature > 0 else {"temperature": 0.0}
        outputs = self.prompt_lm(messages=messages, max_tokens=max_tokens, **options)
        return (outputs[0] if outputs else "") or ""

    def rendered_prompt(
        self, ctx: SearchContext, predictor_name: str, instruction: str, inputs: dict[str, Any], instructions: dict[str, str] | None = None
    ) -> str:
        """The prompt the task LM really receives for ``predictor_name`` with ``instruction`` and ``inputs``,
        as rendered by the compile's adapter (several messages are shown with their roles)."""
        program = apply_instructions(ctx.student, {**(instructions or get_instructions(ctx.student)), predictor_name: instruction})
        predictor = dict(predictors(program))[predictor_name]
        messages = ctx.engine.scorer.adapter.format(predictor.signature, [dict(d) for d in predictor.demos], inputs)
        if len(messages) == 1:
            return str(messages[0]["content"])
        return "\n\n".join(f"({m['role']})\n{m['content']}" for m in messages)

    def predictor_io(
        self, ctx: SearchContext, predictor_name: str, example: dspy.Example, instructions: dict[str, str], output: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """What ``predictor_name`` saw and said on ``example``: for one predictor, the example's inputs and
        the scored ``output``; for a pipeline, the predictor's own step in a traced re-run (None if it failed)."""
        if len(predictors(ctx.student)) == 1:
            return dict(example.inputs()), dict(output or {})
        run = ctx.engine.trace(instructions, example)
        if run.error is not None:
            return None
        for name, inputs, outputs in run.steps:
            if name == predictor_name:
                return dict(inputs), {key: str(value) for key, value in outputs.items()}
        return None

    def format_demos(self, student: dspy.Module, examples: Sequence[dspy.Example], predictor_name: str | None = None) -> str:
        """Examples as ``Field: value`` blocks showing every input and output field by name."""
        from cuecard.adapter import field_label

        named = dict(predictors(student))
        predictor = named[predictor_name] if predictor_name else next(iter(named.values()))
        signature = predictor.signature
        blocks = []
        for example in examples:
            lines = [
                f"{field_label(signature, name)}: {example[name]}"
                for name in [*signature.input_fields, *signature.output_fields]
                if name in example
            ]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


_ECHO_PREFIXES = re.compile(
    r"^\s*(?:the\s+instruction\s+(?:was|is)\s+to|instruction\s*:|new\s+instruction\s*:|improved\s+instruction\s*:|"
    r"answer\s*:|output\s*:|here(?:'s| is) (?:the|an|my) (?:improved |new )?instruction\s*:?)\s*",
    re.IGNORECASE,
)


def clean_instruction(text: str) -> str:
    """Strip quotes, echoes such as "The instruction was to" and markup; first paragraph; sentence-cased."""
    text = (text or "").strip()
    text = re.sub(r"</?(?:INS|START|END)>", "", text, flags=re.IGNORECASE).strip()
    for _ in range(3):
        stripped = _ECHO_PREFIXES.sub("", text).strip().strip("\"'`*“”").strip()
        if stripped == text:
            break
        text = stripped
    lines = [line.strip() for line in text.splitlines()]
    while len(lines) > 1 and (not lines[0] or (lines[0].endswith(":") and len(lines[0]) < 120)):
        lines.pop(0)  # a header such as "Here is the rewritten instruction:" before the instruction itself
    text = "\n".join(lines).split("\n\n")[0].strip()
    text = _ECHO_PREFIXES.sub("", text).strip().strip("\"'`*“”").strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text
