"""Allocation policies on simulated candidates: best-arm rate, regret and evaluations used.

Every example evaluation travels the real path (Engine -> Evaluator -> dspy.Predict -> plain
adapter -> a scripted LM -> metric); the scripted LM answers right with each arm's known accuracy.

1. 16 arms, one clear winner (0.80; the others 0.50-0.65), a pool of 200 examples, 50 seeds: each
   policy at its default budget, against full evaluation given the same number of evaluations.
2. 30 arms (accuracies spread evenly over 0.30-0.80), 100 examples: multi-stage pruning against
   full evaluation of every arm on all 100 examples.

    .venv/bin/python benchmarks/policies.py [--seeds 50]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

from cuecard.clients.testing import BernoulliTask
from cuecard.engine.evaluate import Evaluator
from cuecard.engine.policies import (
    UCB,
    UCBE,
    FullEvaluation,
    MultiStage,
    Policy,
    SuccessiveHalving,
    SuccessiveRejects,
    Wilcoxon,
)
from cuecard.engine.study import Engine


def run(task: BernoulliTask, policy: Policy, budget: int | None = None) -> tuple[int, int]:
    """(chosen arm, evaluations used) for one policy on one simulated task."""
    engine = Engine(Evaluator(task.program, task.metric, task_lm=task.lm), task.examples, storage=":memory:", progress=False)
    for arm in range(len(task.accuracies)):
        engine.add_candidate(task.candidate(arm))
    allocation = engine.allocate(policy, budget=budget)
    return allocation.best.arm, allocation.evaluations


def clear_winner(n_arms: int = 16) -> list[float]:
    return [0.80] + [0.50 + 0.15 * i / (n_arms - 2) for i in range(n_arms - 1)]


def best_arm_table(seeds: int) -> None:
    accuracies = clear_winner()
    policies = [UCB(), UCBE(), SuccessiveRejects(), SuccessiveHalving(), MultiStage(), Wilcoxon()]
    print(f"\n## 1. Best-arm identification: 16 arms (best 0.80, others 0.50-0.65), pool 200, {seeds} seeds\n")
    print("| policy | evaluations (mean) | best-arm rate | mean regret | full eval, same evaluations: best-arm rate | mean regret | wall s |")
    print("|---|---|---|---|---|---|---|")
    for policy in policies:
        hits = full_hits = 0
        regret = full_regret = 0.0
        used_total = 0
        start = time.perf_counter()
        for seed in range(seeds):
            task = BernoulliTask(accuracies, pool_size=200, seed=seed)
            chosen, used = run(task, policy)
            full_chosen, _ = run(BernoulliTask(accuracies, pool_size=200, seed=seed), FullEvaluation(), budget=used)
            used_total += used
            hits += chosen == task.best_arm
            full_hits += full_chosen == task.best_arm
            regret += accuracies[task.best_arm] - accuracies[chosen]
            full_regret += accuracies[task.best_arm] - accuracies[full_chosen]
        wall = time.perf_counter() - start
        print(
            f"| {policy.name} | {used_total / seeds:.0f} | {hits / seeds:.2f} | {regret / seeds:.4f} "
            f"| {full_hits / seeds:.2f} | {full_regret / seeds:.4f} | {wall:.1f} |"
        )


def multistage_table(seeds: int) -> None:
    accuracies = [0.30 + 0.50 * i / 29 for i in range(30)]
    print(f"\n## 2. Multi-stage pruning vs full evaluation: 30 arms (0.30-0.80), 100 examples, {seeds} seeds\n")
    full_used = stage_used = 0
    gaps = []
    for seed in range(seeds):
        full_arm, full_n = run(BernoulliTask(accuracies, pool_size=100, seed=seed), FullEvaluation(n_examples=100))
        stage_arm, stage_n = run(BernoulliTask(accuracies, pool_size=100, seed=seed), MultiStage())
        full_used += full_n
        stage_used += stage_n
        gaps.append(accuracies[full_arm] - accuracies[stage_arm])
    print("| | full evaluation | multi-stage |")
    print("|---|---|---|")
    print(f"| example evaluations (mean) | {full_used / seeds:.0f} | {stage_used / seeds:.0f} |")
    print(f"| ratio full / multi-stage | | {full_used / stage_used:.2f}x fewer |")
    print(f"| true accuracy of pick: full minus multi-stage (mean) | | {sum(gaps) / seeds:+.4f} |")
    print(f"| seeds where multi-stage's pick is within 0.02 of full's | | {sum(g <= 0.02 for g in gaps)}/{seeds} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    best_arm_table(args.seeds)
    multistage_table(args.seeds)


if __name__ == "__main__":
    main()
