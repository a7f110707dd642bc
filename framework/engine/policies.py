"""Evaluation allocation: which candidate is scored on how many examples.

Every policy is a small class behind one interface: given the candidates (*arms*) of an
:class:`Arms` view, the example pool and a budget of example evaluations, it decides which arm to
score on more examples, and returns a ranking with estimated scores and how many examples each got.

All arms walk through the example pool in the same order (the k-th example an arm is scored on is
pool example k), so arms are compared on the same examples and finished evaluations are reused.
Every decision is a function of the per-example scores it was made on: a stage that ranks arms
after n examples ranks them by their first n scores, whatever else is known about them, so a
resumed run (which may find more scores stored) decides exactly as the uninterrupted one.

Policies:
- :class:`FullEvaluation`: every arm on the same sample (APE's execution-accuracy setup).
- :class:`MultiStage`: APE's multi-stage scheme through Optuna's ``SuccessiveHalvingPruner``: score
  all arms on a few examples, prune all but the top 1/eta, add fresh examples, repeat, then score
  the survivors on the whole sample.
- :class:`UCB`, :class:`UCBE`: upper-confidence-bound bandits (ProTeGi's selection, APE's bandit).
- :class:`SuccessiveRejects`, :class:`SuccessiveHalving`: fixed-budget best-arm identification
  (Audibert & Bubeck 2010; Karnin et al. 2013).
- :class:`Wilcoxon`: arms scored one after another, each stopped as soon as a Wilcoxon signed-rank
  test (Optuna's ``WilcoxonPruner``, needs scipy) says it is worse than the best so far.

Example:
    >>> from cuecard.engine.policies import SuccessiveHalving
    >>> SuccessiveHalving().default_budget(n_arms=16, pool_size=100)
    320
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import optuna
from pydantic import BaseModel

from ..errors import BudgetExhausted, ConfigError
from ..stopping import StopReason


class ArmEstimate(BaseModel):
    """An arm's estimated score (mean over the examples it got) and how many examples it got."""

    arm: int
    mean: float
    n: int
    pruned: bool = False


class Allocation(BaseModel):
    """What a policy did: the ranking (best first), evaluations spent, and why it stopped early."""

    policy: str
    ranking: list[ArmEstimate]
    evaluations: int
    capped: StopReason | None = None
    """The run-wide cap (LM requests, model calls, tokens, dollars, evaluations) that stopped it: the stop
    reason :class:`~cuecard.errors.BudgetExhausted` carried from where the cap was met; None when no cap did."""
    budget_reached: int | None = None
    """Its own evaluation budget, when that ran out before the policy was done (no cap: the search goes on)."""

    @property
    def best(self) -> ArmEstimate:
        return self.ranking[0]


class EvaluationBudgetSpent(Exception):
    """Raised by an :class:`Arms` view when the allocation's evaluation budget is used up."""


class Arms(Protocol):
    """What a policy may ask of the engine."""

    @property
    def n_arms(self) -> int: ...

    @property
    def pool_size(self) -> int: ...

    @property
    def spent(self) -> int:
        """New example evaluations made in this allocation (reused ones are free)."""

    def count(self, arm: int) -> int: ...

    def mean(self, arm: int, up_to: int | None = None) -> float:
        """The mean of the arm's scores on pool examples 0..count-1 (at most the first ``up_to``)."""

    def scores(self, arm: int, up_to: int | None = None) -> list[float]:
        """The arm's scores on pool examples 0..count-1 (at most the first ``up_to``)."""

    def evaluate_to(self, arm: int, n: int) -> None:
        """Score ``arm`` on pool examples 0..n-1 (those not scored yet)."""

    def should_prune(self, arm: int) -> bool:
        """Ask the engine's Optuna pruner about the arm at its current step."""


def evaluate_stage(arms: Arms, targets: list[tuple[int, int]]) -> None:
    """Score each ``(arm, n)`` to ``n`` examples: as one pool when the view can (the engine's
    ``evaluate_stage``, with the serial order's results), else arm after arm."""
    stage = getattr(arms, "evaluate_stage", None)
    if stage is not None:
        stage(targets)
        return
    for arm, n in targets:
        arms.evaluate_to(arm, n)


class Policy(ABC):
    """One way to spend a budget of example evaluations over candidates."""

    name: ClassVar[str]

    def default_budget(self, n_arms: int, pool_size: int) -> int:
        """Evaluations this policy spends when no budget is given: 20 examples per arm on average."""
        return n_arms * min(pool_size, 20)

    def planned_evaluations(self, n_arms: int, pool_size: int, budget: int | None) -> int:
        """An upper bound on the evaluations :meth:`run` will make (the dry-run estimate)."""
        return min(budget if budget is not None else self.default_budget(n_arms, pool_size), n_arms * pool_size)

    def planned_new_evaluations(self, n_new: int, pool_size: int, scored: int = 0) -> int:
        """An upper bound on the evaluations :meth:`run` (no budget) makes on ``n_new`` fresh arms scored
        beside ``scored`` arms already scored on the whole pool (read back, not computed): what a search step
        that rescores its parents with their children costs. By default the plan of every arm, parents included.

        Example:
            >>> MultiStage(min_examples=3, reduction=3, survivors=2).planned_new_evaluations(1, 15, scored=1)
            15
        """
        return self.planned_evaluations(scored + n_new, pool_size, None)

    def pruner(self) -> optuna.pruners.BasePruner | None:
        """The Optuna pruner the engine's study should use while this policy runs."""
        return None

    @abstractmethod
    def allocate(self, arms: Arms, budget: int) -> set[int]:
        """Spend at most ``budget`` evaluations; return the arms pruned (eliminated) on the way."""

    def run(self, arms: Arms, budget: int | None = None) -> Allocation:
        budget = self.default_budget(arms.n_arms, arms.pool_size) if budget is None else budget
        pruned: set[int] = set()
        capped, budget_reached = None, None
        try:
            pruned = self.allocate(arms, budget)
        except EvaluationBudgetSpent:
            budget_reached = budget
        except BudgetExhausted as exc:
            capped = exc.reason
        return Allocation(policy=self.name, ranking=rank(arms, pruned), evaluations=arms.spent, capped=capped,
                          budget_reached=budget_reached)


def rank(arms: Arms, pruned: set[int] | frozenset[int] = frozenset()) -> list[ArmEstimate]:
    """Arms best first: survivors before pruned arms, then by mean, then by examples seen."""
    estimates = [
        ArmEstimate(arm=arm, mean=arms.mean(arm), n=arms.count(arm), pruned=arm in pruned) for arm in range(arms.n_arms)
    ]
    return sorted(estimates, key=lambda e: (e.pruned, -e.mean, -e.n, e.arm))


class FullEvaluation(Policy):
    """Every arm on the same ``n_examples`` (default: as many as the budget allows, up to the pool)."""

    name = "full"

    def __init__(self, n_examples: int | None = None) -> None:
        self.n_examples = n_examples

    def default_budget(self, n_arms: int, pool_size: int) -> int:
        return n_arms * (self.n_examples or min(pool_size, 20))

    def planned_new_evaluations(self, n_new: int, pool_size: int, scored: int = 0) -> int:
        return self.planned_evaluations(n_new, pool_size, None)

    def allocate(self, arms: Arms, budget: int) -> set[int]:
        per_arm = min(arms.pool_size, budget // max(1, arms.n_arms))
        if self.n_examples is not None:
            per_arm = min(per_arm, self.n_examples)
        evaluate_stage(arms, [(arm, per_arm) for arm in range(arms.n_arms)])
        return set()


class MultiStage(Policy):
    """APE's multi-stage evaluation, pruned by Optuna's ``SuccessiveHalvingPruner``.

    Stage ``s`` scores every surviving arm up to ``min_examples * reduction**s`` examples (the new
    ones are fresh examples), reports the running score as the trial's intermediate value, records
    the rung through the pruner, and keeps the arms Optuna's promotion rule keeps (the top
    ``1/reduction``) once every arm of the stage is known, ties broken for earlier candidates. When at most ``survivors`` arms are left (or the next
    stage would pass the sample), the survivors are scored on the whole sample (``final_examples``,
    default: the pool).
    """

    name = "multistage"

    def __init__(self, min_examples: int = 5, reduction: int = 3, survivors: int = 3, final_examples: int | None = None) -> None:
        if min_examples < 1 or reduction < 2 or survivors < 1:
            raise ConfigError("MultiStage needs min_examples >= 1, reduction >= 2 and survivors >= 1")
        self.min_examples = min_examples
        self.reduction = reduction
        self.survivors = survivors
        self.final_examples = final_examples

    def pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.min_examples, reduction_factor=self.reduction, min_early_stopping_rate=0
        )

    def _final(self, pool_size: int) -> int:
        return min(pool_size, self.final_examples or pool_size)

    def default_budget(self, n_arms: int, pool_size: int) -> int:
        return self._plan(n_arms, pool_size)

    def planned_evaluations(self, n_arms: int, pool_size: int, budget: int | None) -> int:
        plan = self._plan(n_arms, pool_size)
        return plan if budget is None else min(plan, budget)

    def planned_new_evaluations(self, n_new: int, pool_size: int, scored: int = 0) -> int:
        return self._plan(scored + n_new, pool_size, fresh=n_new)

    def _plan(self, n_arms: int, pool_size: int, fresh: int | None = None) -> int:
        """Evaluations of the stages over ``n_arms``; with ``fresh``, only those of the fresh arms (the others are
        scored on the whole pool already): at most ``fresh`` of a stage's arms, whichever the stage keeps."""
        final, alive, step, done, total = self._final(pool_size), n_arms, self.min_examples, 0, 0
        fresh = n_arms if fresh is None else fresh
        while alive > self.survivors and step < final:
            total += min(alive, fresh) * (step - done)
            done, alive, step = step, max(self.survivors, math.ceil(alive / self.reduction)), step * self.reduction
        return total + min(alive, fresh) * (final - done)

    def allocate(self, arms: Arms, budget: int) -> set[int]:
        final = self._final(arms.pool_size)
        alive = list(range(arms.n_arms))
        pruned: set[int] = set()
        step = self.min_examples
        while len(alive) > self.survivors and step < final:
            evaluate_stage(arms, [(arm, step) for arm in alive])
            record_rungs = getattr(arms, "record_rungs", None)  # the engine's: the stage's arms at once
            if record_rungs is not None:
                record_rungs(alive)  # records the rung values in the trials, as the pruner keeps them
            else:
                for arm in alive:
                    arms.should_prune(arm)
            # Decide synchronously, with every arm of the stage known (Optuna's pruner, called arm by
            # arm, would promote the first arms before it has seen the others), on each arm's first
            # `step` scores. Optuna's promotion rule: a value at least the k-th best, k = n // eta;
            # ties at the threshold (frequent with 0/1 scores) go to earlier candidates (seeds first).
            values = {arm: arms.mean(arm, up_to=step) for arm in alive}
            threshold = sorted(values.values(), reverse=True)[max(0, len(alive) // self.reduction - 1)]
            promotable = [arm for arm in alive if values[arm] >= threshold]
            quota = max(self.survivors, math.ceil(len(alive) / self.reduction))
            keep = sorted(promotable, key=lambda arm: (-values[arm], arm))[:quota]
            pruned.update(set(alive) - set(keep))
            alive = keep
            step *= self.reduction
        evaluate_stage(arms, [(arm, final) for arm in alive])
        return pruned


class _IndexPolicy(Policy):
    """Pull the arm with the highest index, ``batch`` fresh examples at a time, until the budget is spent."""

    def __init__(self, batch: int = 4) -> None:
        if batch < 1:
            raise ConfigError("batch must be >= 1")
        self.batch = batch

    @abstractmethod
    def index(self, mean: float, n: int, total: int) -> float: ...

    def allocate(self, arms: Arms, budget: int) -> set[int]:
        first = min(self.batch, arms.pool_size)
        missing = getattr(arms, "missing", None)
        if missing is None:
            for arm in range(arms.n_arms):
                if arms.spent + self.batch > budget:
                    return set()
                if arms.count(arm) == 0:
                    arms.evaluate_to(arm, first)
        else:  # the same first pulls, planned ahead and scored as one pool
            spent, stage, stopped = arms.spent, [], False
            for arm in range(arms.n_arms):
                if spent + self.batch > budget:
                    stopped = True
                    break
                if arms.count(arm) == 0:
                    stage.append((arm, first))
                    spent += missing(arm, first)
            evaluate_stage(arms, stage)
            if stopped:
                return set()
        while True:
            open_arms = [arm for arm in range(arms.n_arms) if arms.count(arm) < arms.pool_size]
            if not open_arms:
                return set()
            total = sum(arms.count(arm) for arm in range(arms.n_arms))
            chosen = max(open_arms, key=lambda arm: (self.index(arms.mean(arm), arms.count(arm), total), -arm))
            step = min(self.batch, arms.pool_size - arms.count(chosen), budget - arms.spent)
            if step <= 0:
                return set()
            arms.evaluate_to(chosen, arms.count(chosen) + step)


class UCB(_IndexPolicy):
    """UCB1: ``mean + c * sqrt(ln(t) / n)``, with ``t`` the examples evaluated over all arms so far.

    ``t`` counts from the first evaluation, so the exploration bonus is there from the first choice
    (ProTeGi's code takes the log of a counter starting at 0, which cancels it in round one).
    """

    name = "ucb"

    def __init__(self, c: float = 1.0, batch: int = 4) -> None:
        super().__init__(batch)
        self.c = c

    def index(self, mean: float, n: int, total: int) -> float:
        return mean + self.c * math.sqrt(math.log(max(total, 2)) / n)


class UCBE(_IndexPolicy):
    """UCB-E (Audibert, Bubeck & Munos 2010): ``mean + sqrt(a / n)``; ProTeGi's ``c`` is ``a = c**3``."""

    name = "ucb-e"

    def __init__(self, a: float = 1.0, batch: int = 4) -> None:
        super().__init__(batch)
        self.a = a

    def index(self, mean: float, n: int, total: int) -> float:
        return mean + math.sqrt(self.a / n)


class SuccessiveRejects(Policy):
    """Successive rejects (Audibert & Bubeck 2010): K-1 phases with the paper's schedule, one arm dropped per phase."""

    name = "successive-rejects"

    def allocate(self, arms: Arms, budget: int) -> set[int]:
        k = arms.n_arms
        if k == 1:
            arms.evaluate_to(0, min(arms.pool_size, budget))
            return set()
        log_bar = 0.5 + sum(1.0 / i for i in range(2, k + 1))
        alive = list(range(k))
        pruned: set[int] = set()
        for phase in range(1, k):
            target = min(arms.pool_size, max(1, math.ceil((budget - k) / (log_bar * (k + 1 - phase)))))
            evaluate_stage(arms, [(arm, target) for arm in alive])
            worst = min(alive, key=lambda arm: (arms.mean(arm, up_to=target), -arm))
            alive.remove(worst)
            pruned.add(worst)
        return pruned


class SuccessiveHalving(Policy):
    """Fixed-budget successive halving (Karnin, Koren & Somekh 2013): ceil(log2 K) rounds, top half kept."""

    name = "successive-halving"

    def allocate(self, arms: Arms, budget: int) -> set[int]:
        alive = list(range(arms.n_arms))
        rounds = max(1, math.ceil(math.log2(max(2, arms.n_arms))))
        pruned: set[int] = set()
        target = 0
        for _ in range(rounds):
            target = min(arms.pool_size, target + max(1, budget // (len(alive) * rounds)))
            evaluate_stage(arms, [(arm, target) for arm in alive])
            if len(alive) == 1:
                break
            ordered = sorted(alive, key=lambda arm: (-arms.mean(arm, up_to=target), arm))
            keep = ordered[: math.ceil(len(alive) / 2)]
            pruned.update(set(alive) - set(keep))
            alive = keep
        return pruned


class Wilcoxon(Policy):
    """Arms scored in turn on the same examples; Optuna's ``WilcoxonPruner`` stops an arm once it is
    significantly worse than the best finished arm (``p_threshold``), after ``n_startup_steps`` examples,
    testing every ``check_every`` examples.
    """

    name = "wilcoxon"

    def __init__(
        self, n_examples: int | None = None, p_threshold: float = 0.1, n_startup_steps: int = 5, check_every: int = 5
    ) -> None:
        self.n_examples = n_examples
        self.p_threshold = p_threshold
        self.n_startup_steps = n_startup_steps
        self.check_every = max(1, check_every)

    def default_budget(self, n_arms: int, pool_size: int) -> int:
        return n_arms * min(pool_size, self.n_examples or pool_size)

    def allocate(self, arms: Arms, budget: int) -> set[int]:
        per_arm = min(arms.pool_size, self.n_examples or arms.pool_size)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = optuna.pruners.WilcoxonPruner(p_threshold=self.p_threshold, n_startup_steps=self.n_startup_steps)
        shadow = optuna.create_study(
            direction="maximize",
            pruner=pruner,
        )
        pruned: set[int] = set()
        for arm in range(arms.n_arms):
            trial = shadow.ask()
            for step in range(per_arm):
                arms.evaluate_to(arm, step + 1)
                trial.report(arms.scores(arm)[step], step)
                # scipy falls back to a slow permutation test on tied 0/1 scores: test every few steps
                if (step + 1) % self.check_every == 0 and trial.should_prune():
                    pruned.add(arm)
                    shadow.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                shadow.tell(trial, arms.mean(arm))
        return pruned


def make_policy(name: str, **options: float | int | None) -> Policy:
    """A registered policy by name (cuecard's: ``full``, ``multistage``, ``ucb``, ``ucb-e``,
    ``successive-rejects``, ``successive-halving``, ``wilcoxon``; others through the ``cuecard.policies``
    entry points) with its options.

    Example:
        >>> make_policy("ucb").name
        'ucb'
    """
    from ..registry import policies

    known = policies()
    if name not in known:
        raise ConfigError(f"Unknown policy {name!r}; choose one of {sorted(known)}")
    return known[name](**options)
