"""The compile skeleton every cuecard teleprompter shares.

``compile`` checks the input, splits train/dev, opens the engine (an Optuna study named after the
run's identity), lets the method propose candidates and score them through the engine, and returns
a copy of the student carrying the winner's instructions, with the compile report attached as
``compiled.cuecard_report``. A method only implements :meth:`Teleprompter.search`.

A compile can be killed at any point and run again: it continues where it was, reads back every
stored score and LM reply, and ends with the same winner and report as an uninterrupted run.

What the methods share beside the skeleton is mixed in from its own module: :class:`~.context.SearchContext`
(context.py), proposing and reading the task (proposing.py), cost planning (planning.py) and the report
(reporting.py).

Example:
    >>> from cuecard.teleprompters import APE  # doctest: +SKIP
    >>> compiled = APE(metric=my_metric, task_lm=cuecard.LM("local")).compile(program, trainset=train)  # doctest: +SKIP
"""

from __future__ import annotations

import random
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import dspy
from cuecard.clients.lm import truncation_counted
from cuecard.clients.usage import BUDGETS, Limits
from cuecard.command.cli_inputs import CLIInput
from cuecard.datasets import distinct, example_key
from cuecard.engine.acceptance import AcceptanceRule, NonInferiority, untested
from cuecard.engine.evaluate import Evaluator, Objective, check_context
from cuecard.engine.policies import Allocation, MultiStage, Policy
from cuecard.engine.study import Engine, check_run_name
from cuecard.errors import (
    BudgetExhausted,
    ConfigError,
    DataWarning,
    EvaluationFailed,
    ScoringUnsupportedError,
    TeleprompterConfigError,
)
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
from cuecard.program import apply_instructions, check_examples, get_instructions, predictors
from cuecard.redact import redact_url
from cuecard.reporting.report import CandidateSummary, CompileReport, ProcessStats
from cuecard.reporting.saving import keep_block
from dspy.teleprompt import Teleprompter as DSPyTeleprompter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .context import MetricBlind, SearchContext
from .planning import CompileEstimate, Planning
from .proposals import clean_instruction
from .proposing import META_NGRAM, READINGS, RULE_REQUEST, TEMPLATE_TALK, Proposing, meta_ngrams
from .reporting import Reporting


class TeleprompterConfig(BaseModel):
    """Settings every teleprompter shares; each method extends it with its own (and its defaults)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    objective: Objective = "metric"
    dev_fraction: float = Field(0.5, gt=0, lt=1, description="share of the trainset kept for dev when no valset")
    max_dev: int | None = Field(None, ge=1, description="cap on dev examples (the pool every candidate walks)")
    max_instruction_chars: int = Field(500, ge=10)
    until_cap: bool = Field(
        False, description="after the planned steps (rounds), go on while the cap on requests leaves room for one more; "
        "a search that stops improving goes on too (only the cap, or nothing new to score, ends it)",
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
    answer_form: bool = Field(
        True, description="after the search, score its winner with one sentence appended that asks for the answer "
        "alone (ANSWER_FORM, naming the output fields) on every dev example; the variant replaces the winner only "
        "when it scores higher there, and then faces the do-no-harm check like any winner",
    )
    stop_if_metric_blind: bool = Field(
        False, description="stop after the first scoring stage when the metric gave every candidate the same score "
        "below 1 on every example (always said at once, with one answer beside its gold); off by default, since a "
        "hard task where every starting candidate scores 0 is where the reflective methods earn their keep",
    )


class Teleprompter(Proposing, Planning, Reporting, DSPyTeleprompter):
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
            it (default :class:`~cuecard.engine.acceptance.NonInferiority`: more paired wins than losses, and the
            90% lower bound of the paired mean difference above -0.05); ``SignTest()`` asks for evidence of a
            gain instead; ``AlwaysAccept()`` returns the search's winner unchecked.
        auto: ``"light"``, ``"medium"`` or ``"heavy"``, as DSPy's optimizers take it: the method's knobs are
            planned for that many LM requests (150, 600, 2400: ``--budget``'s presets) and the compile is capped
            there (see :meth:`apply_auto`); a cap no plan fits is refused before any LM call, with the smallest
            plan's requests (:meth:`smallest_plan`).
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
    """The method's own ``cuecard compile`` flags (files, models, switches): see :mod:`cuecard.command.cli_inputs`."""
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
        self.acceptance = acceptance or NonInferiority()
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
        from cuecard.clients.adapter import adapter_for

        return self.adapter or adapter_for(self.task_lm)

    def metric_identity(self, metric: Callable[..., Any] | None = None) -> dict[str, Any] | None:
        """What identifies ``metric`` (default: the one given) in the run identity (a method with its own overrides this)."""
        return metric_identity(metric if metric is not None else self.metric, self.metric_version)

    def why(self, record: Any) -> str:
        """How the method came to a candidate, for the report (a method with more to say overrides this)."""
        return {"program": "the program as written", "user-seed": "an instruction given by the user"}.get(record.origin, "")

    def evaluation_calls(self, student: dspy.Module) -> int:
        """LM requests one example's evaluation takes at most (the engine keeps the cap with it): one per
        predictor; a method whose metric calls a model too (BPO's judge) adds those."""
        return len(predictors(student))

    def identity_extras(self) -> dict[str, Any]:
        """Method-specific parts of the run identity (e.g. BPO's judge and preference records)."""
        return {}

    # ---- the skeleton ----------------------------------------------------------------------------
    def run_identity(self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None,
                     metric: Callable[..., Any] | None = None) -> RunIdentity:
        """Everything that makes a stored score of this compile reusable (see :mod:`cuecard.identity`); ``metric``
        is the one :meth:`prepare` returned (default: the metric given)."""
        return RunIdentity(
            teleprompter=self.name,
            config=self.config.model_dump(mode="json"),
            policy=policy_identity(self.policy),
            objective=self.config.objective,
            task_model=lm_identity(self.task_lm),
            prompt_model=lm_identity(self.prompt_lm),
            adapter=adapter_identity(self.task_adapter()),
            program=program_structure(student),
            metric=self.metric_identity(metric),
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
        identity = self.run_identity(student, trainset, valset, metric)
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
        ctx = SearchContext(student, engine, train, policy=self.policy, seed=self.config.seed, metric=metric,
                            stop_if_metric_blind=self.config.stop_if_metric_blind)
        if duplicates:
            ctx.note(duplicates)
        planned = self.planned_total(len(train), len(dev), len(predictors(student)))
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
                final = self.try_answer_form(ctx, self.score_the_rest(ctx, self.search(ctx)))
            except BudgetExhausted as exc:
                ctx.stop(exc.reason)  # the best candidate scored so far wins
                final = ctx.ranking_so_far()
            except MetricBlind:  # said at once (a warning, the stop reason); every candidate ties, so the seed stays
                final = ctx.ranking_so_far()
            except EvaluationFailed as exc:
                engine.end_proposing()
                engine.finish(failed=str(exc))
                engine.close()
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
            if acceptance.cut_short is not None:
                ctx.stop(acceptance.cut_short)
                ctx.note("the cap was reached while checking the winner against the seed")
        engine.finish(sorted(ctx.pruned), capped=ctx.capped, stop_reason=ctx.stop_reason)
        report = self.build_report(ctx, final, seed_instructions, train, dev, identity, acceptance)
        engine.close()
        compiled = apply_instructions(student, report.best.instructions)
        compiled.cuecard_report = report
        return keep_block(self.finalize(compiled, report))  # DSPy's own compiled.save(path) keeps the report

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


__all__ = [
    "META_NGRAM",
    "READINGS",
    "RULE_REQUEST",
    "TEMPLATE_TALK",
    "CandidateSummary",
    "CompileEstimate",
    "CompileReport",
    "ProcessStats",
    "SearchContext",
    "Teleprompter",
    "TeleprompterConfig",
    "clean_instruction",
    "meta_ngrams",
]
