"""What a method's :meth:`~cuecard.teleprompters.base.Teleprompter.search` works with: :class:`SearchContext`."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from cuecard.engine.policies import Allocation, Policy
from cuecard.engine.study import Engine
from cuecard.errors import MetricBlindWarning
from cuecard.metrics import normalize_instruction_induction
from cuecard.program import predictors
from cuecard.stopping import StopKind, StopReason

from .proposals import content_words


class SearchContext:
    """What :meth:`Teleprompter.search` works with: the program, the engine, the train data, the policy that
    scores, the metric, a seeded RNG, and a log. It knows no teleprompter: the compile hands it these.

    Example:
        >>> ctx = SearchContext(program, engine, train, policy=FullEvaluation(), seed=0, metric=my_metric)  # doctest: +SKIP
        >>> ctx.allocate().best.mean  # doctest: +SKIP
        0.75
    """

    def __init__(
        self,
        student: dspy.Module,
        engine: Engine,
        train: list[dspy.Example],
        *,
        policy: Policy,
        seed: int = 0,
        metric: Callable[..., Any] | None = None,
        stop_if_metric_blind: bool = False,
    ) -> None:
        self.student = student
        self.engine = engine
        self.train = train
        self.policy = policy
        self.metric = metric
        self.stop_if_metric_blind = stop_if_metric_blind
        self.rng = random.Random(seed)
        self.dropped: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.notes: list[str] = []
        self.pruned: set[int] = set()
        self.capped: StopReason | None = None
        """The first cap reached (the stop reason made where it was met): the run stays open for a larger cap."""
        self.stop_reason: StopReason | None = None
        self.readings: dict[str, list[str]] = {}
        self.sample_counter = 0
        self.step_samples_from = 0
        self.history: list[dict[str, Any]] = []
        self._train_answers: set[str] | None = None
        self._program_words: frozenset[str] | None = None
        self.metric_blind = False
        """Whether the first scoring stage found the metric blind (every candidate the same score on every example)."""
        self._stages = 0

    def room(self) -> int | None:
        """LM requests left under the run's cap on requests (None: no such cap)."""
        return self.engine.block.room(model_calls=False).requests

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
        (``until_cap``) "step 4 (past the 3 planned)"; the step's own prompt-model requests are counted from here
        (:attr:`step_asked`)."""
        self.step_samples_from = self.sample_counter
        self.engine.phase = f"{unit} {number}/{planned}" if number <= planned else f"{unit} {number} (past the {planned} planned)"

    def stop(self, kind: StopKind | StopReason, detail: str = "") -> None:
        """Say why the search stops (the first reason given stands); a cap also leaves the run open to continue.
        A cap's reason is passed on as it came (``ctx.stop(exc.reason)`` for a :class:`BudgetExhausted`)."""
        reason = kind if isinstance(kind, StopReason) else StopReason(kind=kind, detail=detail)
        if self.stop_reason is None:
            self.stop_reason = reason
        if reason.kind == StopKind.CAP and self.capped is None:
            self.capped = reason

    def train_answers(self) -> set[str]:
        """Every output value of the train examples, normalised (a proposal that is one of them is an answer)."""
        if self._train_answers is None:
            self._train_answers = {normalize_instruction_induction(str(v)) for e in self.train for v in e.labels().values()}
        return self._train_answers

    def program_words(self) -> frozenset[str]:
        """The content words the program itself brings (field names, their descriptions and prefixes, the seed
        instructions): a proposal may repeat them without echoing a meta-prompt."""
        if self._program_words is None:
            texts: list[str] = []
            for _, predictor in predictors(self.student):
                signature = predictor.signature
                texts.append(signature.instructions)
                for name, field in signature.fields.items():
                    extra = field.json_schema_extra or {}
                    texts += [name.replace("_", " "), str(extra.get("desc", "")), str(extra.get("prefix", ""))]
            self._program_words = frozenset(word for text in texts for word in content_words(text))
        return self._program_words

    @property
    def step_asked(self) -> bool:
        """Whether the current step (since :meth:`step`) asked the prompt model anything."""
        return self.sample_counter > self.step_samples_from

    def next_sample_index(self) -> int:
        """A fresh rollout index for the prompt model (distinct samples, each cached on its own)."""
        self.sample_counter += 1
        return self.sample_counter

    def ranking(self) -> list[Any]:
        """Every candidate of the run, best first, with the ones this search pruned marked."""
        return self.engine.ranking(pruned=frozenset(self.pruned))

    def ranking_so_far(self) -> Allocation:
        """The whole run's ranking as the search's final answer (no new evaluation)."""
        return Allocation(policy=self.policy.name, ranking=self.ranking(), evaluations=self.engine.evaluations)

    def allocate(self, arms: Sequence[int] | None = None, budget: int | None = None, policy: Policy | None = None) -> Allocation:
        """Score ``arms`` (default: every candidate) with the search's policy, or ``policy`` when given."""
        allocation = self.engine.allocate(policy or self.policy, arms, budget)
        self.pruned.update(e.arm for e in allocation.ranking if e.pruned)
        if allocation.capped is not None:
            self.stop(allocation.capped)
        elif allocation.budget_reached is not None:
            self.note(f"scoring stopped early: evaluation budget of {allocation.budget_reached} reached")
        first_stage, self._stages = self._stages == 0, self._stages + 1
        blind = metric_blindness(self.engine, [e.arm for e in allocation.ranking]) if first_stage else None
        if blind is not None:
            self.metric_blind = True
            stop = self.stop_if_metric_blind
            blind += ("; the search stopped here (stop_if_metric_blind)" if stop else
                      "; the search goes on (stop_if_metric_blind=True stops it here)")
            warnings.warn(blind, MetricBlindWarning, stacklevel=2)
            if stop:
                self.stop(StopKind.METRIC_BLIND, blind)
                raise MetricBlind(blind)
            self.note(blind)
        return allocation


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
    if len(values) != 1 or values == {1.0}:  # every answer right is a solved task, not a blind metric
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
        f"evaluations): the metric cannot tell them apart. Dev example "
        f"{index}: the program answered {short(answer)}, the gold is {short(gold)}. Fixes: a program with labels "
        "(--labels, a Literal output) so the answer is one of them; a metric that normalises the answer (contains, "
        "token_f1, or your own); another adapter layout (PlainAdapter(instruction_position=...))"
    )
