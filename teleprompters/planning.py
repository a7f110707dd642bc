"""Cost planning before any LM call: what a compile asks of the LMs at most (:meth:`Planning.estimate`), and
the knobs that fit a budget (:meth:`Planning.plan`, ``auto=``). Mixed into :class:`~cuecard.teleprompters.base.Teleprompter`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import dspy
from cuecard.clients.usage import BUDGETS, Limits
from cuecard.engine.policies import MultiStage
from cuecard.errors import (
    DataWarning,
    TeleprompterConfigError,
)
from cuecard.program import check_examples, predictors
from pydantic import BaseModel, Field

from .proposing import RULE_REQUEST

if TYPE_CHECKING:
    from .context import SearchContext

Knobs = Callable[[int], dict[str, Any]]
"""A plan's shape: n (steps, rounds or proposals; what they cost grows with n) -> the method's knobs, a policy among them."""


def lm_requests(prompt: int, evaluations: int, runs: int, predictors: int) -> int:
    """LM requests of ``prompt`` prompt-model requests, ``evaluations`` pool evaluations and ``runs`` task runs outside
    the pool, on a program of ``predictors`` predictors (an evaluation or run asks each predictor once).

    Example:
        >>> lm_requests(4, evaluations=10, runs=2, predictors=2)
        28
    """
    return prompt + (evaluations + runs) * predictors


def screening(n_dev: int, survivors: int) -> MultiStage:
    """The plans' multi-stage screen: every candidate on 3 dev examples, a third kept at each stage, ``survivors``
    scored on all of dev."""
    return MultiStage(min_examples=min(3, n_dev), reduction=3, survivors=survivors)


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


class Planning:
    """The teleprompter's estimates and plans (a mixin of :class:`~cuecard.teleprompters.base.Teleprompter`).

    A method gives its own arithmetic through hooks: :meth:`planned_calls` (the whole search), :meth:`step_calls`
    (one step, for going on to the cap) and :meth:`plan_shapes` with :attr:`plan_upto` (the knobs a budget buys).
    """

    plan_upto: ClassVar[int] = 100
    """The largest n :meth:`plan` tries in a shape (steps, rounds or proposals)."""

    def apply_auto(self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None) -> None:
        """With ``auto="light"|"medium"|"heavy"`` (as DSPy's optimizers take it), plan the method's knobs for the
        preset's LM requests (:data:`~cuecard.clients.usage.BUDGETS`, the same as ``--budget``) on this data and cap the
        compile there; settings given explicitly, a policy given and a cap on requests given win."""
        if self.auto is None:
            return
        cap = self.limits.max_calls if self.limits is not None and self.limits.max_calls is not None else BUDGETS[self.auto]
        train, dev = self.split(list(trainset), list(valset) if valset is not None else None)
        count = len(predictors(student))
        planned = dict(self.plan(cap, len(train), len(dev), count))
        if not planned and self.plan_shapes(len(train), len(dev)):
            smallest = self.smallest_plan(len(train), len(dev), count)
            raise TeleprompterConfigError(
                f"{type(self).__name__}(auto={self.auto!r}): a cap of {cap} LM requests is too small for one search step "
                f"on {len(train)} train and {len(dev)} dev examples with {count} predictor(s); the smallest plan takes "
                f"{smallest}: raise the cap (limits=Limits(max_calls=...), --max-calls) or give fewer dev examples"
            )
        policy = planned.pop("policy", None)
        if policy is not None and not self._policy_given:
            self.policy = policy
        explicit = {name: getattr(self.config, name) for name in self.config.model_fields_set}
        self.config = self.make_config({**planned, **explicit})
        self.limits = (self.limits or Limits()).model_copy(update={"max_calls": cap})

    def planned_calls(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int] | None:
        """(prompt-model requests, pool evaluations, task runs outside the pool) this search takes at
        most with its settings, the seed check included; None when the method cannot tell."""
        return None

    def planned_total(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int] | None:
        """:meth:`planned_calls` with the answer-form check after the search (``answer_form``: the winner's
        variant scored on every dev example)."""
        planned = self.planned_calls(n_train, n_dev, predictors)
        if planned is None or not self.config.answer_form:
            return planned
        prompt, evaluations, runs = planned
        return prompt, evaluations + n_dev, runs

    def step_calls(self, n_train: int, n_dev: int, predictors: int, size: int | None = None) -> tuple[int, int, int]:
        """(prompt-model requests, pool evaluations, task runs outside the pool) one step of the search takes at most,
        asking for ``size`` new candidates (default: a full step); a method that goes on past its planned steps
        (``until_cap``) gives its own."""
        raise NotImplementedError(f"{type(self).__name__} has no step costs")

    def step_cost(self, n_train: int, n_dev: int, predictors: int, size: int | None = None) -> int:
        """LM requests one step (of ``size`` new candidates, default a full step) may take (:meth:`step_calls`)."""
        return lm_requests(*self.step_calls(n_train, n_dev, predictors, size), predictors)

    def step_cost_in(self, ctx: SearchContext, size: int | None = None) -> int:
        """:meth:`step_cost` at the sizes of the running search (its train data, dev pool and predictors)."""
        return self.step_cost(len(ctx.train), len(ctx.engine.examples), len(predictors(ctx.student)), size)

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
        planned = self.planned_total(len(train), len(dev), count)
        if planned is None:
            raise TeleprompterConfigError(f"{type(self).__name__} cannot estimate its cost before running")
        prompt, evaluations, side = planned
        task = lm_requests(0, evaluations, side, count)
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
    def plan_shapes(cls, n_train: int, n_dev: int) -> list[Knobs]:
        """The method's plan shapes (:data:`Knobs`), tried in turn by :meth:`plan`; none: the method has no plan."""
        return []

    @classmethod
    def plan(cls, cap: int, n_train: int, n_dev: int, predictors: int = 1) -> dict[str, Any]:
        """Knobs (a policy included) that make the method spend about ``cap`` LM requests on data of these sizes,
        going on to the cap (``until_cap``): of the first of :meth:`plan_shapes` where one fits, the largest n up
        to :attr:`plan_upto` that :meth:`estimate`'s own arithmetic fits under ``cap``; ``{}`` when none fits or
        the method has no plan."""
        for shape in cls.plan_shapes(n_train, n_dev):
            best = cls.largest_plan(cap, n_train, n_dev, predictors, lambda n, shape=shape: {**shape(n), "until_cap": True},
                                    upto=cls.plan_upto)
            if best:
                return best
        return {}

    @classmethod
    def smallest_plan(cls, n_train: int, n_dev: int, predictors: int = 1) -> int:
        """LM requests of the cheapest plan (n = 1 of each shape, without the readings where the method has them):
        below it :meth:`plan` fits nothing.

        Example:
            >>> OPRO.smallest_plan(n_train=20, n_dev=15)  # doctest: +SKIP
            55
        """
        return min(
            cls.fits(variant(1), 0, n_train, n_dev, predictors)
            for shape in cls.plan_shapes(n_train, n_dev)
            for variant in cls.plan_variants(lambda n, shape=shape: {**shape(n), "until_cap": True})
        )

    @classmethod
    def plan_variants(cls, knobs_for: Callable[[int], dict[str, Any]]) -> list[Callable[[int], dict[str, Any]]]:
        """``knobs_for`` and, for a method that reads the task, the same knobs without the readings as starting
        candidates (they cost their evaluations), tried in that order."""
        if not cls.reads_task:
            return [knobs_for]
        return [knobs_for, lambda n: {**knobs_for(n), "start_from_readings": False}]

    @classmethod
    def largest_plan(
        cls, cap: int, n_train: int, n_dev: int, predictors: int, knobs_for: Callable[[int], dict[str, Any]], upto: int = 100
    ) -> dict[str, Any]:
        """``knobs_for(n)`` for the largest n (1..upto; costs grow with n) whose estimate fits ``cap``; ``{}`` if none.

        A method that reads the task tries, when no n fits, the same knobs without the readings as
        starting candidates (they cost their evaluations): one search step is worth more than them.
        """
        for variant in cls.plan_variants(knobs_for):
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
        return lm_requests(*(probe.planned_total(n_train, n_dev, predictors) or (0, 0, 0)), predictors)


class _PlanningLM:
    """Stands for the LMs while a plan is worked out: plans need the settings only, never a model."""

    model = "planning"
    kwargs: dict[str, Any] = {}


_PLANNING_LM: Any = _PlanningLM()


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
