"""Allocation policies on simulated candidates, through the real engine and a scripted LM."""

import pytest
from cuecard.clients.testing import BernoulliTask
from cuecard.engine.evaluate import Evaluator
from cuecard.engine.policies import (
    UCB,
    UCBE,
    FullEvaluation,
    MultiStage,
    SuccessiveHalving,
    SuccessiveRejects,
    Wilcoxon,
    make_policy,
)
from cuecard.engine.study import Engine

CLEAR_WINNER = [0.80] + [0.50 + 0.15 * i / 14 for i in range(15)]
SEEDS = range(12)


def allocate(task, policy, budget=None):
    engine = Engine(Evaluator(task.program, task.metric, task_lm=task.lm), task.examples, storage=":memory:", progress=False)
    for arm in range(len(task.accuracies)):
        engine.add_candidate(task.candidate(arm))
    return engine.allocate(policy, budget=budget)


@pytest.mark.parametrize("policy", [UCB(), UCBE(), SuccessiveRejects(), SuccessiveHalving()], ids=lambda p: p.name)
def test_bandits_find_the_best_arm_at_least_as_often_as_full_evaluation(policy):
    hits = full_hits = 0
    for seed in SEEDS:
        allocation = allocate(BernoulliTask(CLEAR_WINNER, pool_size=200, seed=seed), policy)
        full = allocate(BernoulliTask(CLEAR_WINNER, pool_size=200, seed=seed), FullEvaluation(), budget=allocation.evaluations)
        assert full.evaluations <= allocation.evaluations
        hits += allocation.best.arm == 0
        full_hits += full.best.arm == 0
    assert hits >= full_hits, f"{policy.name}: {hits} vs full evaluation {full_hits} of {len(SEEDS)}"


def test_multistage_spends_3x_fewer_evaluations_and_picks_as_well():
    accuracies = [0.30 + 0.50 * i / 29 for i in range(30)]
    full_used = stage_used = 0
    gaps = []
    for seed in range(4):
        full = allocate(BernoulliTask(accuracies, pool_size=100, seed=seed), FullEvaluation(n_examples=100))
        stage = allocate(BernoulliTask(accuracies, pool_size=100, seed=seed), MultiStage())
        full_used += full.evaluations
        stage_used += stage.evaluations
        gaps.append(accuracies[full.best.arm] - accuracies[stage.best.arm])
    assert full_used >= 3 * stage_used, (full_used, stage_used)
    assert sum(gaps) / len(gaps) <= 0.02, gaps


def test_multistage_prunes_through_the_study_and_flags_pruned_arms():
    task = BernoulliTask([0.3 + 0.5 * i / 29 for i in range(30)], pool_size=100, seed=9)
    allocation = allocate(task, MultiStage())
    pruned = [e for e in allocation.ranking if e.pruned]
    survivors = [e for e in allocation.ranking if not e.pruned]
    assert len(pruned) >= 20
    assert all(e.n == 100 for e in survivors)
    assert all(e.n < 100 for e in pruned)


def test_ucb_explores_from_the_first_choice():
    # log(t) with t counted from the first evaluation: the bonus is positive at once
    assert UCB().index(0.5, n=4, total=4) > 0.5
    allocation = allocate(BernoulliTask(CLEAR_WINNER, pool_size=200, seed=0), UCB(batch=4), budget=64)
    assert all(e.n >= 4 for e in allocation.ranking), "every arm is tried before any is exploited"


def test_successive_rejects_drops_one_arm_per_phase_within_budget():
    allocation = allocate(BernoulliTask(CLEAR_WINNER, pool_size=200, seed=1), SuccessiveRejects(), budget=300)
    assert allocation.evaluations <= 300
    assert sum(e.pruned for e in allocation.ranking) == len(CLEAR_WINNER) - 1


def test_successive_halving_keeps_halving():
    allocation = allocate(BernoulliTask(CLEAR_WINNER, pool_size=200, seed=2), SuccessiveHalving(), budget=320)
    assert allocation.evaluations <= 320
    assert sum(not e.pruned for e in allocation.ranking) == 1


def test_wilcoxon_stops_clearly_worse_arms_early():
    accuracies = [0.9, 0.1, 0.1, 0.1]
    allocation = allocate(BernoulliTask(accuracies, pool_size=40, seed=3), Wilcoxon())
    assert allocation.best.arm == 0
    assert allocation.evaluations < 4 * 40
    assert sum(e.pruned for e in allocation.ranking) == 3


def test_unknown_policy_name_lists_the_choices():
    with pytest.raises(ValueError, match="successive-halving"):
        make_policy("thompson")


class _PrescoredArms:
    """Arms with fixed 0/1 scores; the first ``scored`` arms were scored on the whole pool before (read back)."""

    def __init__(self, table, scored):
        self.table, self.seen = table, [len(row) if arm < scored else 0 for arm, row in enumerate(table)]
        self.spent = 0

    n_arms = property(lambda self: len(self.table))
    pool_size = property(lambda self: len(self.table[0]))

    def count(self, arm):
        return self.seen[arm]

    def scores(self, arm, up_to=None):
        return self.table[arm][: min(self.seen[arm], up_to if up_to is not None else self.seen[arm])]

    def mean(self, arm, up_to=None):
        values = self.scores(arm, up_to)
        return sum(values) / len(values) if values else 0.0

    def evaluate_to(self, arm, n):
        if n > self.seen[arm]:
            self.spent += n - self.seen[arm]
            self.seen[arm] = n

    def should_prune(self, arm):
        return False


@pytest.mark.parametrize(("parents", "fresh"), [(1, 1), (1, 3), (2, 6), (3, 3), (1, 9)])
def test_a_step_beside_scored_parents_costs_no_more_than_its_fresh_arms_plan(parents, fresh):
    """APE's Monte Carlo round rescores its parents with their variations: their scores are read back, so the
    round's cost is the fresh arms' (what sizes the last step to the room left), never more, and some draw
    reaches it (the bound is not loose by construction)."""
    import random

    policy = MultiStage(min_examples=3, reduction=3, survivors=2)
    bound = policy.planned_new_evaluations(fresh, 15, scored=parents)
    assert bound < policy.planned_evaluations(parents + fresh, 15, None)
    spent = []
    for draw in range(200):
        rng = random.Random(draw)
        table = [[float(rng.random() < rng.random()) for _ in range(15)] for _ in range(parents + fresh)]
        arms = _PrescoredArms(table, scored=parents)
        policy.allocate(arms, policy.default_budget(parents + fresh, 15))
        spent.append(arms.spent)
    assert max(spent) <= bound and bound in spent, (bound, sorted(set(spent)))
