"""Replay the do-no-harm decision of every stored harness cell under several acceptance rules (no LM call).

Each of cuecard's cells stores the paired dev differences (winner minus seed) its decision rested on,
the search's own best on test (when the check kept the seed) and the seed's test score is in the
task's ``seed`` cell. A rule's decision on the stored differences then says what the cell would have
returned: the search's best (its test change over the seed) or the seed (no change). Per rule and per
half of the visible tasks (:func:`benchmarks.harness.tasks.task_halves`) it prints the test gains kept
(accepted cells whose search's best beat the seed on test, of those there were), the points gained, and
the test harms admitted (accepted cells more than 5 points below the seed on test).

The default rule is chosen on the tuning half only: the most points gained among the rules that admit
no more harms than the sign test; the report half is printed beside it, never used to choose.

Run: ``.venv/bin/python benchmarks/acceptance_replay.py runs/bench [more harness --out folders]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cuecard.engine.acceptance import (
    Acceptance,
    AcceptanceRule,
    AlwaysAccept,
    NonInferiority,
    SignTest,
    pairs,
    untested,
)
from pydantic import BaseModel

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.methods import BASELINES
from benchmarks.harness.results import CellResult
from benchmarks.harness.tasks import half_of, task_halves

HARM = 0.05
"""A test score more than this below the seed's is a harm."""


class MoreWins:
    """Accept whenever the winner wins more paired examples than it loses (no bound at all)."""

    name = "more wins than losses"

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance:
        found = pairs(candidate, seed)
        if found is None or found.wins <= found.losses:
            return untested(self.name, "no more wins than losses")
        return Acceptance(accepted=True, rule=self.name, reason="more wins than losses", **found.figures())


def default_rules() -> list[AcceptanceRule]:
    """The rules replayed: today's sign test (and a looser one), non-inferiority at a few margins with a t
    and a bootstrap bound, more wins than losses, and no check at all."""
    loose = SignTest(alpha=0.2)
    loose.name = "sign-test(alpha=0.2)"
    return [
        SignTest(alpha=0.1), loose,
        NonInferiority(delta=0.0), NonInferiority(delta=0.05), NonInferiority(delta=0.1),
        NonInferiority(delta=0.05, bound="bootstrap"), MoreWins(), AlwaysAccept(),
    ]


class Case(BaseModel):
    """One cell's decision to replay: its paired differences and what each outcome scores on test."""

    task: str
    method: str
    seed: int | None
    half: str
    differences: list[float]
    candidate_test: float
    seed_test: float


class RuleOutcome(BaseModel):
    """A rule over a set of cases."""

    rule: str
    half: str
    cases: int
    accepted: int
    gains_available: int
    gains_kept: int
    points_gained: float
    harms_available: int
    harms_admitted: int


def load_cases(folders: Sequence[str | Path], data: str | Path | None = None) -> tuple[list[Case], list[str]]:
    """The replayable cells of harness output folders, and a line for each cell left out (and why)."""
    cases, skipped = [], []
    for folder in folders:
        cells = [CellResult.model_validate_json(p.read_text(encoding="utf-8")) for p in sorted(Path(folder, "cells").glob("*.json"))]
        config_data = data
        if config_data is None:
            results = Path(folder, "results.json")
            if results.is_file():
                import json

                config_data = json.loads(results.read_text(encoding="utf-8")).get("config", {}).get("data")
        halves = task_halves(config_data) if config_data and Path(config_data).is_dir() else {}
        seed_tests = {c.task: c.test_accuracy for c in cells if c.method == "seed" and c.test_accuracy is not None}
        for cell in cells:
            if cell.method in BASELINES or cell.test_accuracy is None:
                continue
            label = f"{folder}: {cell.task}/{cell.method}/seed{cell.seed}"
            decision = Acceptance.model_validate(cell.acceptance) if cell.acceptance else None
            if decision is None:
                skipped.append(f"{label}: no stored decision (a DSPy cell, or stored before decisions were kept)")
                continue
            if cell.task not in seed_tests:
                skipped.append(f"{label}: no seed cell for its task")
                continue
            if not decision.differences:
                skipped.append(f"{label}: nothing to decide ({decision.reason})")
                continue
            kept_seed = cell.search_best_test_accuracy is not None
            cases.append(Case(
                task=cell.task, method=cell.method, seed=cell.seed, half=half_of(cell.task, halves) or "other",
                differences=decision.differences,
                candidate_test=cell.search_best_test_accuracy if kept_seed else cell.test_accuracy,
                seed_test=seed_tests[cell.task],
            ))
    return cases, skipped


def replay(cases: Sequence[Case], rules: Sequence[AcceptanceRule], half: str) -> list[RuleOutcome]:
    """Each rule's decisions on the cases of ``half`` (``"all"``: every case)."""
    chosen = [c for c in cases if half == "all" or c.half == half]
    out = []
    for rule in rules:
        accepted = gains_kept = harms = 0
        points = 0.0
        for case in chosen:
            decision = rule.decide(dict(enumerate(case.differences)), dict.fromkeys(range(len(case.differences)), 0.0))
            change = case.candidate_test - case.seed_test
            if decision.accepted:
                accepted += 1
                points += change
                gains_kept += change > 0
                harms += change < -HARM - 1e-9
        out.append(RuleOutcome(
            rule=rule.name, half=half, cases=len(chosen), accepted=accepted,
            gains_available=sum(c.candidate_test > c.seed_test for c in chosen), gains_kept=gains_kept,
            points_gained=100 * points, harms_available=sum(c.candidate_test - c.seed_test < -HARM - 1e-9 for c in chosen),
            harms_admitted=harms,
        ))
    return out


def choose_default(tuning: Sequence[RuleOutcome], reference: str = "sign-test") -> str | None:
    """The rule with the most points gained on the tuning half among those admitting no more harms than
    ``reference`` (ties: the fewer harms, then the order given); None without tuning cases."""
    if not tuning or tuning[0].cases == 0:
        return None
    limit = next((o.harms_admitted for o in tuning if o.rule == reference), 0)
    eligible = [o for o in tuning if o.harms_admitted <= limit]
    return max(eligible, key=lambda o: (round(o.points_gained, 6), -o.harms_admitted)).rule


def table(outcomes: Sequence[RuleOutcome]) -> str:
    lines = ["| half | rule | cells | accepted | test gains kept (of those there were) | points gained (sum) | "
             "test harms admitted (of those there were) |", "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.half} | {o.rule} | {o.cases} | {o.accepted} | {o.gains_kept} of {o.gains_available} | "
                     f"{o.points_gained:+.1f} | {o.harms_admitted} of {o.harms_available} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="harness --out folders (their cells/ are read)")
    parser.add_argument("--data", default=None, help="the benchmark data folder the halves come from (default: each run's own)")
    args = parser.parse_args(argv)
    cases, skipped = load_cases(args.folders, args.data)
    for line in skipped:
        print(f"left out: {line}")
    if not cases:
        print("no cell with stored paired scores to replay", file=sys.stderr)
        return 1
    rules = default_rules()
    outcomes = [o for half in ("tuning", "report", "other", "all") for o in replay(cases, rules, half) if o.cases]
    print(table(outcomes))
    default = choose_default([o for o in outcomes if o.half == "tuning"])
    print(f"\ndefault chosen on the tuning half: {default or 'none (no tuning-half cell)'} "
          "(most points gained among the rules admitting no more test harms than the sign test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
