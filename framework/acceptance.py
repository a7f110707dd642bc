"""Do no harm: the winner replaces the program's own instructions only with paired evidence.

A search ranks its candidates on small dev samples, where a candidate can lead by luck (on 6
examples a 0.5 vs 0.33 lead is one example). Before a compile hands back a winner, the engine scores
the winner and the seed (the program as written) on the same dev examples and an acceptance rule
compares them example by example. Unless the rule is satisfied the seed is kept, and the report says
why, with the figures.

:class:`SignTest` (the default): one-sided exact sign test on the paired differences (ties left out),
accepted when ``p <= alpha`` and the winner wins at least ``min_margin`` more examples than it loses.

Example:
    >>> rule = SignTest(alpha=0.1)
    >>> rule.decide({i: 1.0 for i in range(6)}, {i: 0.0 for i in range(6)}).accepted
    True
    >>> rule.decide({0: 1.0, 1: 1.0, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 1.0}).accepted
    False
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from pydantic import BaseModel


class Acceptance(BaseModel):
    """The decision on a winner against the seed, with the paired evidence it rests on."""

    accepted: bool
    reason: str
    rule: str
    examples: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    p_value: float | None = None
    candidate_mean: float | None = None
    seed_mean: float | None = None
    cut_short: str | None = None
    """The cap that stopped the scoring of the two on the same examples, if one did."""


class AcceptanceRule(Protocol):
    name: str

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance: ...


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least ``wins`` successes in ``wins + losses`` fair coin flips).

    >>> round(sign_test_p(4, 0), 4)
    0.0625
    """
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


class SignTest:
    """Accept a winner when a one-sided sign test on the paired dev examples gives ``p <= alpha`` and it
    wins at least ``min_margin`` more examples than it loses."""

    name = "sign-test"

    def __init__(self, alpha: float = 0.1, min_margin: int = 1) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha={alpha} must be in (0, 1)")
        self.alpha = alpha
        self.min_margin = min_margin

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance:
        common = sorted(set(candidate) & set(seed))
        if not common:
            return Acceptance(accepted=False, rule=self.name, reason="no dev example was scored for both the winner and the seed")
        wins = sum(1 for i in common if candidate[i] > seed[i])
        losses = sum(1 for i in common if candidate[i] < seed[i])
        ties = len(common) - wins - losses
        p = sign_test_p(wins, losses)
        means = (sum(candidate[i] for i in common) / len(common), sum(seed[i] for i in common) / len(common))
        accepted = p <= self.alpha and wins - losses >= self.min_margin
        evidence = (
            f"on {len(common)} paired dev examples the winner won {wins}, lost {losses}, tied {ties} "
            f"(mean {means[0]:.3f} vs the seed's {means[1]:.3f}; one-sided sign test p={p:.3g}"
        )
        if accepted:
            reason = f"accepted: {evidence} <= {self.alpha:g})"
        else:
            reason = f"the seed is kept: {evidence}, needs p <= {self.alpha:g} and {self.min_margin} more win(s) than losses)"
        return Acceptance(
            accepted=accepted, rule=self.name, reason=reason, examples=len(common), wins=wins, losses=losses,
            ties=ties, p_value=p, candidate_mean=means[0], seed_mean=means[1],
        )


class AlwaysAccept:
    """No check: the search's own winner is returned (the behaviour of most optimisers)."""

    name = "always"

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance:
        return Acceptance(accepted=True, rule=self.name, reason="accepted without a check (acceptance='always')")


__all__ = ["Acceptance", "AcceptanceRule", "AlwaysAccept", "SignTest", "sign_test_p"]
