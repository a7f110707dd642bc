"""The compile skeleton every cuecard teleprompter shares.

``compile`` checks the input, splits train/dev, opens the engine (an Optuna study named after the
run's identity), lets the method propose candidates and score them through the engine, and returns
a copy of the student carrying the winner's instructions, with the compile report attached as
``compiled.cuecard_report``. A method only implements :meth:`Teleprompter.search`.

A compile can be killed at any point and run again: it continues where it was, reads back every
stored score and LM reply, and ends with the same winner and report as an uninterrupted run.

Example:
    >>> from cuecard.teleprompters import APE  # doctest: +SKIP
    >>> compiled = APE(metric=my_metric, task_lm=cuecard.LM("local")).compile(program, trainset=train)  # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import functools
import random
import re
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import dspy
from cuecard.acceptance import Acceptance, AcceptanceRule, SignTest, untested
from cuecard.cli_inputs import CLIInput
from cuecard.datasets import distinct, example_key
from cuecard.deadlines import TIMED_OUT, call_with_deadline, run_with_deadlines
from cuecard.errors import (
    BudgetExhausted,
    ConfigError,
    CuecardError,
    DataWarning,
    EvaluationFailed,
    MetricBlindWarning,
    ScoringUnsupportedError,
    TeleprompterConfigError,
)
from cuecard.evaluate import Evaluator, Objective, check_context, describe_error, failure_reason
from cuecard.identity import (
    RunIdentity,
    adapter_identity,
    data_fingerprint,
    digest,
    lm_identity,
    metric_identity,
    policy_identity,
    program_structure,
)
from cuecard.lm import truncation_counted
from cuecard.metrics import normalize_instruction_induction
from cuecard.policies import Allocation, MultiStage, Policy
from cuecard.program import apply_instructions, check_examples, get_instructions, predictors
from cuecard.redact import redact_url
from cuecard.report import CandidateSummary, CompileReport, ExampleEvidence, ProcessStats, interval
from cuecard.saving import keep_block
from cuecard.stopping import StopKind, StopReason
from cuecard.study import Engine, check_run_name
from cuecard.usage import BUDGETS, Limits
from dspy.teleprompt import Teleprompter as DSPyTeleprompter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from .proposals import STRUCTURED_REQUEST, clean_instruction, parse_items, read_structured, structured_options


class TeleprompterConfig(BaseModel):
    """Settings every teleprompter shares; each method extends it with its own (and its defaults)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    objective: Objective = "metric"
    dev_fraction: float = Field(0.5, gt=0, lt=1, description="share of the trainset kept for dev when no valset")
    max_dev: int | None = Field(None, ge=1, description="cap on dev examples (the pool every candidate walks)")
    max_instruction_chars: int = Field(500, ge=10)
    until_cap: bool = Field(
        False, description="after the planned steps (rounds), go on while the cap on requests leaves room for one more"
    )
    task_rule: bool = Field(
        True, description="read once what turns the train inputs into their outputs (input/output pairs, as APE's "
        "induction does) and show it in every proposal request of the reflective methods",
    )
    structured_proposals: bool = Field(
        True, description="hold the prompt model to a JSON schema (the rule, then instructions) when it supports one"
    )
    start_from_readings: bool = Field(
        True, description="the reflective methods' readings of the task (see task_rule) compete with the seed as "
        "starting candidates, as induced prompts do in APE and PE2",
    )
    stop_if_metric_blind: bool = Field(
        True, description="stop after the first scoring stage when the metric gave every candidate the same score on "
        "every example (it cannot tell them apart: spending the rest of the cap would change nothing), saying why",
    )


class CompileEstimate(BaseModel):
    """A dry run: what a compile with these settings asks of the LMs at most, before any LM call.

    ``requests`` counts every LM request (task and prompt model, the way ``Limits(max_calls=...)``
    counts them); tokens and dollars are about what those requests take (the prompts as rendered, answers
    as long as the gold outputs within the answer cap, proposals at the method's cap) and dollars are given
    only where litellm knows the model's prices.
    """

    requests: int
    prompt_requests: int
    task_requests: int
    evaluations: int = Field(description="pool example evaluations (dev), the seed check included")
    planned_requests: int | None = Field(
        None, description="with until_cap, what the planned steps take (`requests` is then the cap, the true bound)"
    )
    tokens: int | None = None
    cost: float | None = None
    notes: list[str] = Field(default_factory=list)



class MetricBlind(Exception):
    """Raised inside a search when the metric cannot tell the first stage's candidates apart (see
    :func:`metric_blindness`); the compile stops there and keeps the seed."""


def metric_blindness(engine: Engine, arms: Sequence[int], min_examples: int = 3) -> str | None:
    """One line for the user when the metric gave every scored candidate the same score on every example
    (at least two candidates, ``min_examples`` each), with one example's answer beside its gold and the fixes;
    None when the scores differ anywhere.

    Example: every candidate 0 under ``exact_match`` when the model answers "The review is positive." and the
    gold is "positive".
    """
    scored = [arm for arm in dict.fromkeys(arms) if len(engine.scores(arm)) >= min_examples]
    if len(scored) < 2:
        return None
    values = {score for arm in scored for score in engine.scores(arm).values()}
    if len(values) != 1:
        return None
    score = values.pop()
    arm = scored[0]
    index = min(engine.scores(arm))
    answer = engine.outputs(arm).get(index) or engine.errors(arm).get(index)
    gold = engine.examples[index].labels().toDict()
    evaluations = sum(len(engine.scores(a)) for a in scored)

    def short(value: Any) -> str:
        text = " ".join(str(value).split())
        return repr(text if len(text) <= 160 else text[:157] + "...")

    return (
        f"every candidate scored {score:g} on every example it was scored on ({len(scored)} candidates, {evaluations} "
        f"evaluations): the metric cannot tell them apart, so the search stopped after its first stage. Dev example "
        f"{index}: the program answered {short(answer)}, the gold is {short(gold)}. Fixes: a program with labels "
        "(--labels, a Literal output) so the answer is one of them; a metric that normalises the answer (contains, "
        "token_f1, or your own); another adapter layout (PlainAdapter(instruction_position=...)); "
        "stop_if_metric_blind=False searches on anyway"
    )

class SearchContext:
    """What :meth:`Teleprompter.search` works with: the engine, the data, the LMs, a seeded RNG, and a log."""

    def __init__(self, teleprompter: Teleprompter, student: dspy.Module, engine: Engine, train: list[dspy.Example]) -> None:
        self.teleprompter = teleprompter
        self.student = student
        self.engine = engine
        self.train = train
        self.rng = random.Random(teleprompter.config.seed)
        self.dropped: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.notes: list[str] = []
        self.pruned: set[int] = set()
        self.capped: str | None = None
        self.stop_reason: StopReason | None = None
        self.readings: dict[str, list[str]] = {}
        self.sample_counter = 0
        self.history: list[dict[str, Any]] = []
        self._train_answers: set[str] | None = None
        self._stages = 0

    def room(self) -> int | None:
        """LM requests left under the run's cap on requests (None: no such cap)."""
        cap = self.engine.block.limits.max_calls
        return None if cap is None else cap - self.engine.block.usage.calls

    def fail(self, reason: str) -> None:
        """Count a failed LM call that the search went on without (e.g. a proposal)."""
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def note(self, text: str, limit: int = 400) -> None:
        """Add a note to the report: one line (a model's multi-line reading is flattened), shortened to ``limit``."""
        line = " ".join(str(text).split())
        self.notes.append(line if len(line) <= limit else line[: limit - 3] + "...")

    def step(self, number: int, planned: int, unit: str = "step") -> None:
        """Label what follows (proposals, scoring) on the progress bars: "step 2/3", or past the planned steps
        (``until_cap``) "step 4 (past the 3 planned)"."""
        self.engine.phase = f"{unit} {number}/{planned}" if number <= planned else f"{unit} {number} (past the {planned} planned)"

    def stop(self, kind: StopKind, detail: str = "") -> None:
        """Say why the search stops (the first reason given stands); a cap also leaves the run open to continue."""
        if self.stop_reason is None:
            self.stop_reason = StopReason(kind=kind, detail=detail)
        if kind == StopKind.CAP:
            self.capped = self.capped or detail

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
        if allocation.capped:
            self.stop(StopKind.CAP, allocation.stopped or "")
        elif allocation.stopped:
            self.note(f"scoring stopped early: {allocation.stopped}")
        first_stage, self._stages = self._stages == 0, self._stages + 1
        if first_stage and self.teleprompter.config.stop_if_metric_blind:
            blind = metric_blindness(self.engine, [e.arm for e in allocation.ranking])
            if blind is not None:
                warnings.warn(blind, MetricBlindWarning, stacklevel=2)
                self.stop(StopKind.METRIC_BLIND, blind)
                raise MetricBlind(blind)
        return allocation


class Teleprompter(DSPyTeleprompter):
    """Base class of cuecard's teleprompters (a DSPy ``Teleprompter``).

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool/int/float in [0, 1].
        task_lm: the LM the program runs on (default: the LM given to ``dspy.configure``).
        prompt_lm: the LM that writes instructions (default: the task LM).
        policy: how candidates are scored (default: the method's :attr:`default_policy`).
        config: the method's settings (its ``Config`` model, or keyword arguments for it).
        run_name / storage / run_dir: where the study lives (default: ``runs/<name>/study.db``, the
            name derived from the run's identity); the same identity continues a killed run.
        runs_root: the folder of default run directories (default ``runs``).
        limits / max_evaluations: caps on LM calls, tokens, dollars and example evaluations.
        progress: show progress bars.
        adapter: the DSPy adapter the program runs with while compiling (default: the one
            :func:`cuecard.adapter_for` picks for the task LM).
        timeout: seconds an example evaluation or a prompt-model call may take; a late one is
            abandoned (only it) and counted as a failure.
        max_failure_share: share of failed example evaluations above which the compile stops.
        prompt_retries / retry_wait: a failed prompt-model call is retried this many times, waiting
            ``retry_wait`` seconds, doubling; a proposal that still fails is skipped and counted.
        metric_version: a version string that identifies the metric in place of its code. Either way, a
            run that holds scores is checked on opening: a sample of its stored predictions is scored
            again with the metric (no LM call), and a score that differs refuses the run.
        fresh: start a new run (``<run name>-<UTC time>``) instead of continuing the stored one, which
            is kept; to resume the new run later, pass its name as ``run_name``.
        acceptance: the rule a winner must pass against the seed on the same dev examples to replace
            it (default :class:`~cuecard.acceptance.SignTest`, one-sided at 0.1); ``AlwaysAccept()``
            returns the search's winner unchecked.
        auto: ``"light"``, ``"medium"`` or ``"heavy"``, as DSPy's optimizers take it: the method's knobs are
            planned for that many LM requests (150, 600, 2400: ``--budget``'s presets) and the compile is capped
            there (see :meth:`apply_auto`).
        prompt_max_tokens: the token cap of every prompt-model request (default: each request's own, such as
            ``max_proposal_tokens``); the report counts replies cut at their cap.
    """

    name = "teleprompter"
    Config: type[TeleprompterConfig] = TeleprompterConfig
    default_policy: ClassVar[Callable[[], Policy]] = MultiStage
    needs_labels: ClassVar[bool] = True
    reads_task: ClassVar[bool] = False  # the reflective methods read the task (task_rule) before proposing
    """Whether the trainset must carry the outputs (a metric compares them); BPO's judge needs none."""
    summary: ClassVar[str] = ""
    """One line on what the method does, for ``cuecard teleprompters``."""
    cli_inputs: ClassVar[tuple[CLIInput, ...]] = ()
    """The method's own ``cuecard compile`` flags (files, models, switches): see :mod:`cuecard.cli_inputs`."""
    meta_prompts: ClassVar[tuple[str, ...]] = ()
    """The method's own meta-prompt templates: a proposal repeating a long run of their words is dropped (see :meth:`screen`)."""

    def __init__(
        self,
        *,
        metric: Callable[..., Any] | None = None,
        task_lm: dspy.LM | None = None,
        prompt_lm: dspy.LM | None = None,
        policy: Policy | None = None,
        run_name: str | None = None,
        storage: str | None = None,
        run_dir: str | Path | None = None,
        runs_root: str | Path = "runs",
        limits: Limits | None = None,
        max_evaluations: int | None = None,
        progress: bool = True,
        num_threads: int = 16,
        adapter: dspy.Adapter | None = None,
        timeout: float | None = None,
        max_failure_share: float = 0.5,
        prompt_retries: int = 3,
        retry_wait: float = 1.0,
        metric_version: str | None = None,
        acceptance: AcceptanceRule | None = None,
        fresh: bool = False,
        auto: str | None = None,
        prompt_max_tokens: int | None = None,
        **config: Any,
    ) -> None:
        super().__init__()
        if timeout is not None and timeout <= 0:
            raise TeleprompterConfigError(f"timeout={timeout}: must be a positive number of seconds")
        if not 0 < max_failure_share <= 1:
            raise TeleprompterConfigError(f"max_failure_share={max_failure_share}: must be in (0, 1]")
        if prompt_retries < 0 or retry_wait < 0:
            raise TeleprompterConfigError("prompt_retries and retry_wait must be >= 0")
        if auto is not None and auto not in BUDGETS:
            raise TeleprompterConfigError(f"auto={auto!r}: one of {', '.join(map(repr, BUDGETS))} (or None)")
        self.auto = auto
        self._policy_given = policy is not None
        if prompt_max_tokens is not None and prompt_max_tokens < 1:
            raise TeleprompterConfigError(f"prompt_max_tokens={prompt_max_tokens}: must be a positive number of tokens")
        self.prompt_max_tokens = prompt_max_tokens
        self.metric = metric
        self._task_lm = task_lm
        self._prompt_lm = prompt_lm
        self.policy = policy or self.default_policy()
        if run_name is not None:
            try:
                check_run_name(run_name)
            except ConfigError as exc:
                raise TeleprompterConfigError(str(exc)) from None
        self.run_name = run_name
        self.storage = storage
        self.run_dir = run_dir
        self.runs_root = Path(runs_root)
        self.limits = limits
        self.max_evaluations = max_evaluations
        self.progress = progress
        self.num_threads = num_threads
        self.adapter = adapter
        self.timeout = timeout
        self.max_failure_share = max_failure_share
        self.prompt_retries = prompt_retries
        self.retry_wait = retry_wait
        self.metric_version = metric_version
        self.fresh = fresh
        self.acceptance = acceptance or SignTest()
        self.current_run: str | None = None
        self.config = self.make_config(config)

    @classmethod
    def make_config(cls, options: dict[str, Any]) -> TeleprompterConfig:
        """The method's ``Config`` from keyword options; a bad one is named with the valid settings."""
        try:
            return cls.Config(**options)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]) or "config"
                if error["type"] == "extra_forbidden":
                    problems.append(f"{where}: not a setting of {cls.__name__}")
                else:
                    problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
            valid = ", ".join(sorted(cls.Config.model_fields))
            raise TeleprompterConfigError(f"{'; '.join(problems)}. Settings of {cls.__name__}: {valid}") from None

    def apply_auto(self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None) -> None:
        """With ``auto="light"|"medium"|"heavy"`` (as DSPy's optimizers take it), plan the method's knobs for the
        preset's LM requests (:data:`~cuecard.usage.BUDGETS`, the same as ``--budget``) on this data and cap the
        compile there; settings given explicitly, a policy given and a cap on requests given win."""
        if self.auto is None:
            return
        cap = self.limits.max_calls if self.limits is not None and self.limits.max_calls is not None else BUDGETS[self.auto]
        train, dev = self.split(list(trainset), list(valset) if valset is not None else None)
        planned = dict(self.plan(cap, len(train), len(dev), len(predictors(student))))
        policy = planned.pop("policy", None)
        if policy is not None and not self._policy_given:
            self.policy = policy
        explicit = {name: getattr(self.config, name) for name in self.config.model_fields_set}
        self.config = self.make_config({**planned, **explicit})
        self.limits = (self.limits or Limits()).model_copy(update={"max_calls": cap})

    @property
    def task_lm(self) -> dspy.LM:
        """The task LM given, else the one ``dspy.configure(lm=...)`` set (as DSPy's optimizers do)."""
        lm = self._task_lm or dspy.settings.lm
        if lm is None:
            raise TeleprompterConfigError(
                f"{type(self).__name__} needs a task model: pass task_lm=... or call dspy.configure(lm=...) first"
            )
        return lm

    @task_lm.setter
    def task_lm(self, lm: dspy.LM) -> None:
        self._task_lm = lm

    @property
    def prompt_lm(self) -> dspy.LM:
        return self._prompt_lm or self.task_lm

    @prompt_lm.setter
    def prompt_lm(self, lm: dspy.LM) -> None:
        self._prompt_lm = lm

    # ---- what a method implements --------------------------------------------------------------
    @abstractmethod
    def search(self, ctx: SearchContext) -> Allocation:
        """Propose candidates into ``ctx.engine``, score them (``ctx.allocate``), return the final ranking."""

    def validate(self, student: dspy.Module, trainset: Sequence[dspy.Example]) -> None:
        """Method-specific checks that must fail before any LM call."""

    def prepare(self, student: dspy.Module) -> tuple[dspy.Module, Callable[..., Any] | None]:
        """The program the search optimises and the metric that scores it (default: the student and the
        metric given). A method that wraps the program or builds its own metric (BPO) overrides this."""
        return student, self.metric

    def finalize(self, compiled: dspy.Module, report: CompileReport) -> dspy.Module:
        """Last touches on the compiled program (default: none)."""
        return compiled

    def task_adapter(self) -> dspy.Adapter:
        """The adapter the program runs with while compiling."""
        from cuecard.adapter import adapter_for

        return self.adapter or adapter_for(self.task_lm)

    def metric_identity(self) -> dict[str, Any] | None:
        """What identifies the metric in the run identity (a method with its own metric overrides this)."""
        return metric_identity(self.metric, self.metric_version)

    def why(self, record: Any) -> str:
        """How the method came to a candidate, for the report (a method with more to say overrides this)."""
        return {"program": "the program as written", "user-seed": "an instruction given by the user"}.get(record.origin, "")

    @staticmethod
    def evidence(ctx: SearchContext, arm: int, seed_arm: int, dev: list[dspy.Example], limit: int = 50) -> list[ExampleEvidence]:
        """The dev examples where ``arm`` and the seed scored differently, with both outputs."""
        engine = ctx.engine
        mine, seeds = engine.scores(arm), engine.scores(seed_arm)
        my_outputs, seed_outputs = engine.outputs(arm), engine.outputs(seed_arm)
        found = []
        for index in sorted(set(mine) & set(seeds)):
            if mine[index] == seeds[index] or arm == seed_arm:
                continue
            example = dev[index]
            found.append(ExampleEvidence(
                index=index,
                inputs={k: str(v) for k, v in example.inputs().items()},
                gold={k: str(v) for k, v in example.labels().items()},
                seed_score=seeds[index], seed_output=seed_outputs.get(index),
                winner_score=mine[index], winner_output=my_outputs.get(index),
            ))
        return found[:limit]

    def evaluation_calls(self, student: dspy.Module) -> int:
        """LM requests one example's evaluation takes at most (the engine keeps the cap with it): one per
        predictor; a method whose metric calls a model too (BPO's judge) adds those."""
        return len(predictors(student))

    def identity_extras(self) -> dict[str, Any]:
        """Method-specific parts of the run identity (e.g. BPO's judge and preference records)."""
        return {}

    # ---- the skeleton ----------------------------------------------------------------------------
    def run_identity(self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None) -> RunIdentity:
        """Everything that makes a stored score of this compile reusable (see :mod:`cuecard.identity`)."""
        return RunIdentity(
            teleprompter=self.name,
            config=self.config.model_dump(mode="json"),
            policy=policy_identity(self.policy),
            objective=self.config.objective,
            task_model=lm_identity(self.task_lm),
            prompt_model=lm_identity(self.prompt_lm),
            adapter=adapter_identity(self.task_adapter()),
            program=program_structure(student),
            metric=self.metric_identity(),
            data=digest([data_fingerprint(trainset), data_fingerprint(valset) if valset is not None else None]),
            extras={**self.identity_extras(), **({"prompt_max_tokens": self.prompt_max_tokens} if self.prompt_max_tokens else {})},
        )

    def default_run_name(self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None = None) -> str:
        """``<method>-<identity digest>``: each identity gets its own run, the same one continues it."""
        return f"{self.name}-{self.run_identity(student, trainset, valset).digest()}"

    def make_evaluator(self, student: dspy.Module, metric: Callable[..., Any] | None = None) -> Evaluator:
        return Evaluator(
            student,
            metric if metric is not None else self.metric,
            task_lm=self.task_lm,
            adapter=self.task_adapter(),
            objective=self.config.objective,
            num_threads=self.num_threads,
            timeout=self.timeout,
            max_failure_share=self.max_failure_share,
        )

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
        self.apply_auto(student, trainset, valset)
        student, metric = self.prepare(student)
        if self.config.objective == "logprob" and getattr(self.task_lm, "scorer", None) is None:
            raise ScoringUnsupportedError(
                f"objective='logprob' needs a task model that can score text; {self.task_lm.model!r} cannot"
            )
        self.validate(student, trainset)
        evaluator = self.make_evaluator(student, metric)
        check_context(student, self.task_lm, evaluator.adapter, trainset, [f"trainset[{i}]" for i in range(len(trainset))])
        if valset is not None:
            check_context(student, self.task_lm, evaluator.adapter, valset, [f"valset[{i}]" for i in range(len(valset))])
        train, dev = self.split(list(trainset), list(valset) if valset is not None else None)
        duplicates = self.duplicates_note(trainset, valset)
        if duplicates:
            warnings.warn(duplicates, DataWarning, stacklevel=2)
        evaluator.check_metric(dev[0])
        identity = self.run_identity(student, trainset, valset)
        name = self.current_run = fresh_name(self.run_name or f"{self.name}-{identity.digest()}", self.fresh)
        engine = Engine(
            evaluator,
            dev,
            name=name,
            storage=self.storage,
            run_dir=self.run_dir or self.runs_root / name,
            identity=identity,
            limits=self.limits,
            max_evaluations=self.max_evaluations,
            progress=self.progress,
            calls_per_example=self.evaluation_calls(student),
        )
        ctx = SearchContext(self, student, engine, train)
        if duplicates:
            ctx.note(duplicates)
        planned = self.planned_calls(len(train), len(dev), len(predictors(student)))
        engine.proposals_planned = planned[0] if planned is not None else None
        engine.phase = "starting candidates"
        seed_instructions = get_instructions(student)
        engine.status(
            f"{self.name} with {self.task_lm.model} as task model and {self.prompt_lm.model} as prompt model; "
            f"{len(train)} train and {len(dev)} dev examples; stored in {redact_url(engine.storage_url)}"
        )
        with engine.session(), truncation_counted():  # cut answers are counted and reported once, at the end
            engine.add_candidate(seed_instructions, origin="program")
            try:
                final = self.search(ctx)
            except BudgetExhausted as exc:
                ctx.stop(StopKind.CAP, f"{exc}; the best candidate scored so far wins")
                final = ctx.ranking_so_far()
            except MetricBlind:  # said at once (a warning, the stop reason); every candidate ties, so the seed stays
                final = ctx.ranking_so_far()
            except EvaluationFailed as exc:
                engine.end_proposing()
                engine.finish(failed=str(exc))
                raise
            engine.end_proposing()
            engine.phase = "check"
            seed_arm = engine.arm_of(seed_instructions)
            if final.best.arm == seed_arm:
                acceptance = untested(self.acceptance.name, (
                    f"no test ran: the search's best candidate is the seed itself (mean {final.best.mean:.3f} on "
                    f"{final.best.n} dev examples)"), accepted=True)
            else:
                engine.status("checking the winner against the seed on the same dev examples")
                acceptance = engine.compare(final.best.arm, seed_arm, self.acceptance)
            if acceptance.cut_short:
                ctx.stop(StopKind.CAP, f"while checking the winner against the seed: {acceptance.cut_short}")
        engine.finish(sorted(ctx.pruned), stopped=ctx.capped)
        report = self.build_report(ctx, final, seed_instructions, train, dev, identity, acceptance)
        compiled = apply_instructions(student, report.best.instructions)
        compiled.cuecard_report = report
        return keep_block(self.finalize(compiled, report))  # DSPy's own compiled.save(path) keeps the report

    # ---- estimates and plans ------------------------------------------------------------------------
    def planned_calls(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int] | None:
        """(prompt-model requests, pool evaluations, task runs outside the pool) this search takes at
        most with its settings, the seed check included; None when the method cannot tell."""
        return None

    def estimate(
        self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None = None
    ) -> CompileEstimate:
        """What :meth:`compile` would spend at most, from the method's own plan and the engine's
        estimate of its policy; no LM call is made.

        Example:
            >>> APE(metric=m, task_lm=lm, num_prompts_per_subsample=5).estimate(program, train).requests  # doctest: +SKIP
            131
        """
        check_examples(student, trainset, what="trainset")
        self.apply_auto(student, trainset, valset)
        train, dev = self.split(list(trainset), list(valset) if valset is not None else None)
        duplicates = self.duplicates_note(trainset, valset)
        if duplicates:
            warnings.warn(duplicates, DataWarning, stacklevel=2)
        count = len(predictors(student))
        planned = self.planned_calls(len(train), len(dev), count)
        if planned is None:
            raise TeleprompterConfigError(f"{type(self).__name__} cannot estimate its cost before running")
        prompt, evaluations, side = planned
        task = (evaluations + side) * count
        tokens, cost = self._tokens_and_cost(student, train, prompt, task)
        estimate = CompileEstimate(
            requests=prompt + task, prompt_requests=prompt, task_requests=task, evaluations=evaluations,
            tokens=tokens, cost=cost,
            notes=[f"{len(train)} train and {len(dev)} dev examples; policy {self.policy.name}"],
        )
        return self.bounded_by_cap(estimate)

    def bounded_by_cap(self, estimate: CompileEstimate) -> CompileEstimate:
        """With ``until_cap`` and a cap on requests, the search goes on past its planned steps while the
        cap leaves room, so the cap (not the plan) bounds what it asks: the estimate says so and counts
        up to it (tokens and dollars in proportion)."""
        cap = self.limits.max_calls if self.limits is not None else None
        if not self.config.until_cap or cap is None or cap <= estimate.requests:
            return estimate
        scale = cap / max(1, estimate.requests)
        return estimate.model_copy(update={
            "requests": cap,
            "planned_requests": estimate.requests,
            "tokens": None if estimate.tokens is None else round(estimate.tokens * scale),
            "cost": None if estimate.cost is None else estimate.cost * scale,
            "notes": [*estimate.notes, f"until_cap: the cap of {cap} requests bounds it"],
        })

    def _tokens_and_cost(self, student: dspy.Module, train: list[dspy.Example], prompt: int, task: int) -> tuple[int, float | None]:
        """Tokens (about: 4 characters a token) and dollars where litellm knows the models' prices (None for an
        unknown price; 0 for local models), from the prompts as rendered and the answers' lengths.

        A task request is the first predictor's prompt as the adapter renders it (averaged over train examples)
        and an answer as long as the gold outputs, within the answer cap; a prompt-model request is the task
        reading request as rendered (a meta-prompt shows a few examples like it) and an answer of the method's
        proposal cap.
        """
        _, predictor = predictors(student)[0]
        signature = predictor.signature
        sample = train[:20]
        adapter = self.task_adapter()
        rendered = [
            adapter.format(signature, [], {k: example[k] for k in signature.input_fields if k in example}) for example in sample
        ]
        task_in = sum(_tokens(str(m["content"])) for messages in rendered for m in messages) // max(1, len(rendered)) + 8
        gold = [str(example[k]) for example in sample for k in signature.output_fields if k in example]
        task_out = min(self.answer_cap(signature), (sum(map(_tokens, gold)) // len(gold) + 2) if gold else 256)
        request = RULE_REQUEST.format(pairs=self.format_demos(student, train[:5]))
        prompt_in = _tokens(request) + 8
        prompt_out = int(self.prompt_max_tokens or getattr(self.config, "max_proposal_tokens", 100) or 100)
        tokens = task * (task_in + task_out) + prompt * (prompt_in + prompt_out)
        cost = 0.0
        for lm, n, tokens_in, tokens_out in ((self.task_lm, task, task_in, task_out), (self.prompt_lm, prompt, prompt_in, prompt_out)):
            price = _price(lm, tokens_in, tokens_out)
            if price is None:
                return tokens, None
            cost += n * price
        return tokens, cost

    def answer_cap(self, signature: type[dspy.Signature]) -> int:
        """Tokens a task-model answer may take: the plain adapter's cap for one short output field, else the
        task model's ``max_tokens`` (256 when it has none)."""
        cap = int((getattr(self.task_lm, "kwargs", None) or {}).get("max_tokens") or 256)
        adapter = self.task_adapter()
        outputs = [name for name in signature.output_fields if name != "reasoning"]
        short = getattr(adapter, "short_answer_tokens", None)
        if short and outputs and len(signature.output_fields) == 1 and outputs[0] not in getattr(adapter, "multiline_fields", ()):
            return min(cap, short)
        return cap

    @classmethod
    def plan(cls, cap: int, n_train: int, n_dev: int, predictors: int = 1) -> dict[str, Any]:
        """Knobs (a policy included) that make the method spend about ``cap`` LM requests on data of
        these sizes, found through :meth:`estimate`'s own arithmetic; ``{}`` when the method has no plan."""
        return {}

    @classmethod
    def largest_plan(
        cls, cap: int, n_train: int, n_dev: int, predictors: int, knobs_for: Callable[[int], dict[str, Any]], upto: int = 100
    ) -> dict[str, Any]:
        """``knobs_for(n)`` for the largest n (1..upto; costs grow with n) whose estimate fits ``cap``; ``{}`` if none.

        A method that reads the task tries, when no n fits, the same knobs without the readings as
        starting candidates (they cost their evaluations): one search step is worth more than them.
        """
        variants = [knobs_for]
        if cls.reads_task:
            variants.append(lambda n: {**knobs_for(n), "start_from_readings": False})
        for variant in variants:
            best: dict[str, Any] = {}
            for n in range(1, upto + 1):
                knobs = variant(n)
                if cls.fits(knobs, cap, n_train, n_dev, predictors) > cap:
                    break
                best = knobs
            if best:
                return best
        return {}

    @classmethod
    def fits(cls, knobs: dict[str, Any], cap: int, n_train: int, n_dev: int, predictors: int) -> int:
        """The requests a compile with ``knobs`` may take on data of these sizes (for :meth:`plan`)."""
        probe = cls(metric=None, task_lm=_PLANNING_LM, **knobs)
        prompt, evaluations, side = probe.planned_calls(n_train, n_dev, predictors) or (0, 0, 0)
        return prompt + (evaluations + side) * predictors

    def split(self, trainset: list[dspy.Example], valset: list[dspy.Example] | None) -> tuple[list, list]:
        """Seeded train/dev split (dev capped at ``max_dev``); a given valset is the dev set.

        Exact duplicates are dropped (:meth:`duplicates_note` says how many), and no example's inputs
        sit on both sides: the dev set the winner is checked on never holds what the proposals saw.
        """
        rng = random.Random(self.config.seed)
        trainset = distinct(trainset)
        if valset is None:
            groups = _by_inputs(trainset)
            if len(groups) < 2:
                raise TeleprompterConfigError(
                    f"the trainset holds {len(groups)} distinct input(s): at least 2 are needed to keep train "
                    "and dev apart (or give a valset)"
                )
            rng.shuffle(groups)
            cut = max(1, min(len(groups) - 1, round(len(groups) * (1 - self.config.dev_fraction))))
            train = [example for group in groups[:cut] for example in group]
            dev = [example for group in groups[cut:] for example in group]
        else:
            dev = distinct(valset)
            rng.shuffle(dev)
            held_out = {example_key(example, inputs_only=True) for example in dev}
            train = [example for example in trainset if example_key(example, inputs_only=True) not in held_out]
            if not train:
                raise TeleprompterConfigError("every trainset example is also in the valset: nothing is left to learn from")
        if self.config.max_dev is not None:
            dev = dev[: self.config.max_dev]
        return train, dev

    @staticmethod
    def duplicates_note(trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None) -> str | None:
        """One line on the duplicates :meth:`split` sets aside (None when there are none)."""
        parts = []
        for what, examples in (("trainset", trainset), ("valset", valset or [])):
            extra = len(examples) - len(distinct(examples))
            if extra:
                parts.append(f"the {what} holds {extra} exact duplicate(s) of its {len(examples)} examples (dropped)")
        if valset is not None:
            held_out = {example_key(example, inputs_only=True) for example in valset}
            shared = len(distinct([e for e in trainset if example_key(e, inputs_only=True) in held_out]))
            if shared:
                parts.append(f"{shared} trainset example(s) are also in the valset (left out of train)")
        else:
            inputs = [example_key(example, inputs_only=True) for example in distinct(trainset)]
            clashes = len(inputs) - len(set(inputs))
            if clashes:
                parts.append(f"{clashes} trainset example(s) repeat another's inputs with other outputs (kept on the same side of the split)")
        return "; ".join(parts) or None

    def build_report(
        self,
        ctx: SearchContext,
        final: Allocation,
        seed_instructions: dict[str, str],
        train: list[dspy.Example],
        dev: list[dspy.Example],
        identity: RunIdentity,
        acceptance: Acceptance,
    ) -> CompileReport:
        engine = ctx.engine
        order = [estimate.arm for estimate in final.ranking]
        order += [e.arm for e in engine.ranking() if e.arm not in set(order)]  # earlier rounds' candidates
        summaries = []
        for arm in order:
            record = engine.candidates[arm]
            scores = engine.scores(arm)
            summaries.append(
                CandidateSummary(
                    arm=arm,
                    key=record.key,
                    instructions=record.instructions,
                    origin=record.origin,
                    parent=record.parent,
                    round=record.round,
                    dev_score=sum(scores.values()) / len(scores) if scores else 0.0,
                    dev_examples=len(scores),
                    dev_interval=interval(list(scores.values())),
                    pruned=arm in ctx.pruned,
                    why=self.why(record),
                    meta=record.meta,
                )
            )
        seed_arm = engine.arm_of(seed_instructions)
        seed_summary = next((s for s in summaries if s.arm == seed_arm), None)
        evidence = self.evidence(ctx, summaries[0].arm, seed_arm, dev) if seed_arm is not None else []
        best, search_best = summaries[0], None
        if not acceptance.accepted and seed_summary is not None:
            best, search_best = seed_summary, summaries[0]
            ctx.note(f"the search's winner did not replace the seed: {acceptance.reason}")
        usage, prompt_usage = engine.run_usage()
        failures = dict(engine.failures)
        for reason, count in ctx.failures.items():
            failures[reason] = failures.get(reason, 0) + count
        return CompileReport(
            teleprompter=self.name,
            config=self.config.model_dump(),
            run_name=engine.name,
            storage=redact_url(engine.storage_url),
            identity=identity.digest(),
            seed=self.config.seed,
            train_size=len(train),
            dev_size=len(dev),
            seed_instructions=seed_instructions,
            seed_dev_score=seed_summary.dev_score if seed_summary else None,
            task_model=self.task_lm.model,
            task_model_spec=getattr(self.task_lm, "spec", None),
            prompt_model=self.prompt_lm.model,
            data_fingerprint=data_fingerprint(train + dev),
            best=best,
            acceptance=acceptance,
            search_best=search_best,
            candidates=summaries,
            dropped=ctx.dropped,
            failures=failures,
            parse_failure_example=engine.block.parse_failure_example,
            proposal_token_caps=sorted(engine.prompt_block.truncated_caps),
            stopped=ctx.capped,
            stop_reason=ctx.stop_reason or StopReason(),
            evaluations=engine.evaluations,
            usage=usage,
            task_usage=usage - prompt_usage,
            prompt_usage=prompt_usage,
            notes=ctx.notes,
            history=ctx.history,
            evidence=evidence,
            process=ProcessStats(
                evaluations_computed=engine.computed,
                evaluations_read_back=engine.read_back,
                lm_requests_replayed=engine.block.usage.replayed,
                model_calls=engine.block.usage.model_calls,
            ),
        )

    # ---- helpers methods share ------------------------------------------------------------------
    def add_seed_instructions(self, ctx: SearchContext, texts: Sequence[str]) -> None:
        """User-given instructions compete as candidates (each predictor's in turn, the others kept)."""
        seed = get_instructions(ctx.student)
        for text in texts:
            for name in seed:
                ctx.engine.add_candidate({**seed, name: text}, origin="user-seed")

    def reading_costs(self, predictors: int) -> tuple[int, int]:
        """(prompt-model requests, starting candidates) the readings of the task add to a plan."""
        if not (self.reads_task and self.config.task_rule and predictors == 1):
            return 0, 0
        return READINGS, READINGS if self.config.start_from_readings else 0

    def add_task_readings(self, ctx: SearchContext) -> list[int]:
        """The readings of the task (:meth:`task_rule`) as starting candidates beside the seed, screened like
        any proposal; their arm ids (none when ``start_from_readings`` or ``task_rule`` is off).

        A reading is what the prompt model sees the train pairs do, which a small model often states
        better than it repairs a generic seed from its errors.
        """
        if not self.config.start_from_readings:
            return []
        seed = get_instructions(ctx.student)
        arms: list[int] = []
        for name in seed:
            self.task_rule(ctx, name)
            for reading in ctx.readings.get(name, []):
                text = self.screen(ctx, reading)
                if text is not None:
                    arms.append(ctx.engine.add_candidate({**seed, name: text}, origin="task-reading"))
        return list(dict.fromkeys(arms))

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
        if TEMPLATE_TALK.search(text):
            ctx.drop("talks about the template or the examples, not the task")
            return None
        if self.repeats_meta_prompt(text):
            ctx.drop("repeats the meta-prompt's words")
            return None
        return text

    def meta_prompt_texts(self) -> list[str]:
        """Every meta-prompt this method may send: its own templates and the shared requests."""
        return [*self.meta_prompts, RULE_REQUEST, STRUCTURED_REQUEST]

    def repeats_meta_prompt(self, text: str) -> bool:
        """Whether ``text`` shares a run of :data:`META_NGRAM` words or more with one of the method's meta-prompts
        (outside their slots): the proposer copied the request instead of stating the task."""
        cached = getattr(self, "_meta_ngrams", None)
        if cached is None:
            cached = self._meta_ngrams = {gram for template in self.meta_prompt_texts() for gram in meta_ngrams(template)}
        words = _WORD.findall(text.lower())
        return any(tuple(words[i : i + META_NGRAM]) in cached for i in range(len(words) - META_NGRAM + 1))

    def propose(
        self,
        ctx: SearchContext,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        count: int = 1,
        read: Callable[[str], list[str]] | None = None,
    ) -> list[str] | None:
        """Up to ``count`` instructions from the prompt model (None when the call failed).

        When the prompt model supports JSON schemas (and ``structured_proposals`` is on) the request
        asks for the rule the examples follow, then the instructions, and the model can write nothing
        else; otherwise ``read`` (default: :func:`~cuecard.teleprompters.proposals.parse_items`) takes
        them from the tagged reply the meta-prompt asked for.
        """
        return self.propose_many(ctx, [messages], temperature=temperature, max_tokens=max_tokens, count=count, read=read)[0]

    def propose_many(
        self,
        ctx: SearchContext,
        requests: Sequence[list[dict[str, str]]],
        *,
        temperature: float,
        max_tokens: int,
        count: int = 1,
        read: Callable[[str], list[str]] | None = None,
    ) -> list[list[str] | None]:
        """:meth:`propose` for independent requests, sent together (:meth:`ask_many`); results in order.

        Example:
            >>> self.propose_many(ctx, [messages_a, messages_b], temperature=0.9, max_tokens=200)  # doctest: +SKIP
            [['Classify the review.'], None]
        """
        reader = read or (lambda text: parse_items(text, count))
        if self.config.structured_proposals and _supports_json_schema(self.prompt_lm):
            asked = [
                [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + STRUCTURED_REQUEST.format(count=count)}]
                for messages in requests
            ]
            replies = self.ask_many(ctx, asked, temperature=temperature, max_tokens=max_tokens + 120, **structured_options(count))
            found: list[list[str] | None] = []
            for reply in replies:
                items = read_structured(reply, count) if reply is not None else None
                if reply is not None and items is None:
                    ctx.drop("structured reply not readable")
                    items = reader(reply)
                found.append(items)
            return found
        replies = self.ask_many(ctx, list(requests), temperature=temperature, max_tokens=max_tokens)
        return [None if reply is None else reader(reply) for reply in replies]

    def more_steps(self, ctx: SearchContext, done: int, planned: int, step_cost: int) -> bool:
        """Whether to run step ``done + 1``: yes within the ``planned`` steps; past them, with ``until_cap``,
        while the cap on requests leaves room for one more step (``step_cost`` requests at most)."""
        if done < planned:
            return True
        room = ctx.room()
        if not self.config.until_cap or room is None:
            return False
        reserve = self.acceptance_reserve(ctx)
        if room - reserve >= step_cost:
            return True
        ctx.stop(
            StopKind.NO_ROOM,
            f"{room} requests left under the cap, fewer than one more step ({step_cost}) and the seed's "
            f"check on the winner's examples ({reserve}) may take",
        )
        return False

    def step_size(self, ctx: SearchContext, done: int, planned: int, full: int, cost_of: Callable[[int], int]) -> int:
        """How many new candidates step ``done + 1`` asks for: ``full`` within the ``planned`` steps; past them,
        with ``until_cap``, the most (up to ``full``) whose cost (``cost_of(n)`` requests at most) fits the room
        the cap leaves after the seed's check, so a last smaller step spends what a full one could not; 0 stops
        the search (with the reason as its stop reason)."""
        if done < planned:
            return full
        room = ctx.room()
        if not self.config.until_cap or room is None or full < 1:
            return 0
        reserve = self.acceptance_reserve(ctx)
        for count in range(full, 0, -1):
            if room - reserve >= cost_of(count):
                if count < full:
                    ctx.note(f"step {done + 1} sized to the room left: {count} of {full} new candidates ({room} requests left)")
                return count
        ctx.stop(
            StopKind.NO_ROOM,
            f"{room} requests left under the cap, fewer than the smallest step (one new candidate, "
            f"{cost_of(1)}) and the seed's check on the winner's examples ({reserve}) may take",
        )
        return 0

    @staticmethod
    def acceptance_reserve(ctx: SearchContext) -> int:
        """Requests the do-no-harm check may still need: the seed (the first arm) scored on every dev example it lacks."""
        return ctx.engine.calls_to_cover(0)

    def task_rule(self, ctx: SearchContext, predictor_name: str) -> str | None:
        """What turns an input into its correct output, as the prompt model reads it from train
        input/output pairs: a few readings, each from other examples (once per predictor and compile, one
        line each); None when ``task_rule`` is off, for a predictor inside a pipeline (its outputs are
        not in the examples), or when every call failed.

        The reflective methods (ProTeGi, OPRO, PE2) show it in their proposal requests: reasoning about a
        model's errors, a small prompt model easily loses sight of the task itself.
        """
        if not self.config.task_rule or len(predictors(ctx.student)) > 1:
            return None
        if predictor_name not in ctx.readings:
            sampler = random.Random(self.config.seed)
            readings: list[str] = []
            requests = [  # each from other examples: one reading alone is often too narrow
                [{"role": "user", "content": RULE_REQUEST.format(pairs=self.format_demos(ctx.student, sampler.sample(ctx.train, min(5, len(ctx.train)))))}]
                for _ in range(READINGS)
            ]
            for reply in self.ask_many(ctx, requests, temperature=0.8, max_tokens=80):
                reading = clean_instruction(reply) if reply else ""
                if reading and reading not in readings:
                    readings.append(reading)
            ctx.readings[predictor_name] = readings
            if readings:
                ctx.note(f"{predictor_name}: read from train examples: {' | '.join(readings)}")
        return "\n".join(f"- {reading}" for reading in ctx.readings[predictor_name]) or None

    def ask_prompt_lm(
        self, ctx: SearchContext, messages: list[dict[str, str]], *, temperature: float, max_tokens: int = 200, **extra: Any
    ) -> str | None:
        """One sample from the prompt LM (own rollout id and seed, so samples differ and cache one by one).

        A failed or timed-out call is retried (``prompt_retries``, exponential backoff from
        ``retry_wait``); one that still fails returns None and is counted in the report's failures.
        A cap reached, or a model that cannot be used at all (no API key...), stops the search.
        """
        return self.ask_many(ctx, [messages], temperature=temperature, max_tokens=max_tokens, **extra)[0]

    def ask_many(
        self, ctx: SearchContext, requests: Sequence[list[dict[str, str]]], *, temperature: float, max_tokens: int = 200, **extra: Any
    ) -> list[str | None]:
        """:meth:`ask_prompt_lm` for independent requests, sent together on the teleprompter's threads
        (one at a time to a local model); replies in the order of ``requests``.

        Each request gets the rollout id it would get asked alone in this order, so the replies, the
        run's record and its replay are those of asking one after another. The requests go out in
        groups no larger than the caps on requests and model calls leave room for, so a cap stops
        the search at the request where asking one at a time would stop it.

        Example:
            >>> self.ask_many(ctx, [[{"role": "user", "content": "Say a."}], [{"role": "user", "content": "Say b."}]],
            ...               temperature=0.8)  # doctest: +SKIP
            ['a', 'b']
        """
        if not requests:
            return []
        indices = [ctx.next_sample_index() for _ in requests]
        if indices[0] == 1:
            ctx.engine.status(f"proposing with {self.prompt_lm.model} (a local model loads on its first call)")
        calls = [
            functools.partial(self._ask_once, ctx, messages, index, temperature, max_tokens, extra)
            for messages, index in zip(requests, indices, strict=True)
        ]
        threads = 1 if getattr(self.prompt_lm, "is_local", False) else max(1, self.num_threads)
        outcomes: list[tuple[str | None, str | None]] = []
        while len(outcomes) < len(calls):
            group = calls[len(outcomes): len(outcomes) + min(threads, _requests_room(ctx.engine, len(calls) - len(outcomes)))]
            if len(group) == 1:
                outcomes.append(group[0]())
            else:
                outcomes += run_with_deadlines(
                    [functools.partial(contextvars.copy_context().run, call) for call in group], threads=len(group), timeout=None
                )
        for _, reason in outcomes:
            if reason is not None:
                ctx.fail(reason)
        return [reply for reply, _ in outcomes]

    def _ask_once(
        self, ctx: SearchContext, messages: list[dict[str, str]], index: int, temperature: float, max_tokens: int, extra: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        """One request with its retries: (reply, None), or (None, the failure's reason)."""
        from cuecard.lm import sampling_kwargs

        options = sampling_kwargs(self.config.seed, index, temperature) if temperature > 0 else {"temperature": 0.0}
        max_tokens = self.prompt_max_tokens or max_tokens
        call = functools.partial(self.prompt_lm, messages=messages, max_tokens=max_tokens, **options, **extra)
        retrying = Retrying(
            stop=stop_after_attempt(self.prompt_retries + 1),
            wait=wait_exponential(multiplier=self.retry_wait, max=60 * max(self.retry_wait, 0.01)),
            retry=retry_if_exception(lambda exc: not isinstance(exc, (CuecardError, KeyboardInterrupt))),
            reraise=True,
        )
        ctx.engine.proposal_asked()
        try:
            with ctx.engine.proposing():
                for attempt in retrying:
                    with attempt:
                        outputs = call_with_deadline(functools.partial(contextvars.copy_context().run, call), self.timeout)
                        if outputs is TIMED_OUT:
                            raise TimeoutError(f"no answer within {self.timeout:g} s")
        except CuecardError:
            raise
        except Exception as exc:
            return None, failure_reason(describe_error(exc, "prompt model"))
        return (outputs[0] if outputs else "") or "", None

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


RULE_REQUEST = (
    "Someone followed one instruction to turn each input below into the output shown with it: the same "
    "instruction produced every one of them.\n\n{pairs}\n\n"
    "What was the instruction? It must fit every pair above, not just one of them. Reply with the instruction "
    "only, in one sentence: what to do with any input."
)
"""The request :meth:`Teleprompter.task_rule` sends (APE's forward induction, asked a few times)."""
READINGS = 3
"""How many readings of the task :meth:`Teleprompter.task_rule` asks for, each from other train examples."""

TEMPLATE_TALK = re.compile(r"<<[^<>]{1,40}>>|\[\[[^\[\]]{1,40}\]\]|\b(?:correct|model's) output\s*:", re.IGNORECASE)
"""Text a proposer copied from the meta-prompt's scaffolding (template slots, example labels) instead of
writing an instruction for the task."""


META_NGRAM = 6
"""A proposal sharing this many consecutive words with its meta-prompt is dropped."""
_WORD = re.compile(r"[a-z0-9']+")
_SLOT = re.compile(r"\{[^{}]*\}|\[\[[^\[\]]*\]\]|<<[^<>]*>>|\[INSTRUCTION\]|</?[A-Za-z]+>")


def meta_ngrams(template: str, n: int = META_NGRAM) -> set[tuple[str, ...]]:
    """The runs of ``n`` words of a meta-prompt template, none spanning a slot (demos, history, the blank).

    >>> sorted(meta_ngrams("Say it. [[DEMOS]] Then write one new short word", n=3))[:2]
    [('new', 'short', 'word'), ('one', 'new', 'short')]
    """
    grams: set[tuple[str, ...]] = set()
    for piece in _SLOT.split(template):
        words = _WORD.findall(piece.lower())
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return grams


class _PlanningLM:
    """Stands for the LMs while a plan is worked out: plans need the settings only, never a model."""

    model = "planning"
    kwargs: dict[str, Any] = {}


_PLANNING_LM: Any = _PlanningLM()


def _by_inputs(examples: list[dspy.Example]) -> list[list[dspy.Example]]:
    """Examples grouped by their inputs (same inputs, other outputs go together), in first-seen order."""
    groups: dict[str, list[dspy.Example]] = {}
    for example in examples:
        groups.setdefault(example_key(example, inputs_only=True), []).append(example)
    return list(groups.values())


def fresh_name(name: str, fresh: bool) -> str:
    """``name``, or with ``fresh`` a new run's name beside it: ``<name>-<UTC time>``."""
    if not fresh:
        return name
    from datetime import datetime, timezone

    return f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')[:-3]}"


def _requests_room(engine: Engine, wanted: int) -> int:
    """How many of ``wanted`` requests may go out together under the run's caps on requests and model
    calls (at least one: a request over a cap raises as it would alone)."""
    block = engine.block
    room = wanted
    if block.limits.max_calls is not None:
        room = min(room, block.limits.max_calls - block.usage.calls)
    if block.limits.max_model_calls is not None:
        room = min(room, block.limits.max_model_calls - (block.usage + block.spent_before).model_calls)
    return max(1, room)


def _price(lm: Any, tokens_in: int, tokens_out: int) -> float | None:
    """Dollars of one request where litellm knows the price; 0 for a local model; None when unknown."""
    if getattr(lm, "is_local", False):
        return 0.0
    try:
        import litellm

        prompt_cost, completion_cost = litellm.cost_per_token(
            model=lm.model, prompt_tokens=tokens_in, completion_tokens=tokens_out
        )
    except Exception:  # litellm does not know this model's price
        return None
    return float(prompt_cost + completion_cost)


def _tokens(text: str) -> int:
    """About how many tokens ``text`` takes (4 characters a token, as tokenizers of English average)."""
    return max(1, len(text) // 4)


def _supports_json_schema(lm: Any) -> bool:
    check = getattr(lm, "supports_json_schema", None)
    return bool(check()) if callable(check) else False


__all__ = [
    "CandidateSummary",
    "CompileEstimate",
    "CompileReport",
    "ProcessStats",
    "SearchContext",
    "Teleprompter",
    "TeleprompterConfig",
    "clean_instruction",
]
