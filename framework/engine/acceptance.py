"""Do no harm: the winner replaces the program's own instructions only with paired evidence.

A search ranks its candidates on small dev samples, where a candidate can lead by luck (on 6
examples a 0.5 vs 0.33 lead is one example). Before a compile hands back a winner, the engine scores
the winner and the seed (the program as written) on the same dev examples and an acceptance rule
compares them example by example. Unless the rule is satisfied the seed is kept, and the report says
why, with the figures.

:class:`SignTest`: one-sided exact sign test on the paired differences (ties left out),
accepted when ``p <= alpha`` and the winner wins at least ``min_margin`` more examples than it loses.
It asks for evidence of a gain, which on 15 pairs takes at least 4 wins and no loss.

:class:`NonInferiority` (the default, ``delta=0.05``): a guard against harm rather than against gains. Accepted when the winner wins
more paired examples than it loses and a one-sided ``1 - alpha`` lower confidence bound of the paired
mean difference (winner minus seed) is above ``-delta``. The bound is Student's t on the paired
differences (``mean - t(1 - alpha, n - 1) * sd / sqrt(n)``; the paired t-interval of a non-inferiority
trial), or ``bound="bootstrap"``: the ``alpha`` percentile of the mean over seeded resamples of the pairs.

When the search's best is the seed itself, or no paired example tells the two apart, or the winner does
not win more examples than it loses, no test runs: the decision's ``rule`` is ``"no test"`` and its reason
says what decided (``tested`` is False).

Example:
    >>> rule = SignTest(alpha=0.1)
    >>> rule.decide({i: 1.0 for i in range(6)}, {i: 0.0 for i in range(6)}).accepted
    True
    >>> rule.decide({0: 1.0, 1: 1.0, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 1.0}).accepted
    False
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, field_validator

from ..errors import ConfigError
from ..stopping import StopReason


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
    cut_short: StopReason | None = None
    """The cap that stopped the scoring of the two on the same examples, if one did."""
    tested: bool = True
    """Whether the rule's test decided (False: the seed was the best, or the pairs never favoured the winner)."""
    asked: str | None = None
    """The rule the compile was given (``rule`` is ``"no test"`` when no test ran)."""
    lower_bound: float | None = None
    """The lower confidence bound of the paired mean difference (non-inferiority rules)."""
    differences: list[float] = Field(default_factory=list)
    """The paired differences (winner minus seed) on the examples compared, in example order: a replay of
    the decision under another rule needs nothing else."""

    @field_validator("cut_short", mode="before")
    @classmethod
    def _cap_of_older_reports(cls, value: Any) -> Any:
        """A report saved when the cap was a line of text: that line is the cap's detail."""
        return StopReason.cap(value) if isinstance(value, str) else value


def untested(asked: str, reason: str, *, accepted: bool = False, **figures: Any) -> Acceptance:
    """A decision no test made (the seed was the search's best, or the pairs never favoured the winner):
    ``rule`` is ``"no test"``, ``asked`` the rule the compile was given."""
    return Acceptance(accepted=accepted, rule="no test", asked=asked, tested=False, reason=reason, **figures)


class _Pairs(BaseModel):
    """The paired scores of the winner and the seed on the examples both were scored on."""

    differences: list[float]
    wins: int
    losses: int
    candidate_mean: float
    seed_mean: float

    @property
    def ties(self) -> int:
        return len(self.differences) - self.wins - self.losses

    def evidence(self) -> str:
        return (f"on {len(self.differences)} paired dev examples the winner won {self.wins}, lost {self.losses}, "
                f"tied {self.ties} (mean {self.candidate_mean:.3f} vs the seed's {self.seed_mean:.3f}")

    def figures(self) -> dict[str, Any]:
        return dict(examples=len(self.differences), wins=self.wins, losses=self.losses, ties=self.ties,
                    candidate_mean=self.candidate_mean, seed_mean=self.seed_mean, differences=self.differences)


def pairs(candidate: Mapping[int, float], seed: Mapping[int, float]) -> _Pairs | None:
    """The paired differences on the examples both were scored on (None when there is none)."""
    common = sorted(set(candidate) & set(seed))
    if not common:
        return None
    differences = [float(candidate[i]) - float(seed[i]) for i in common]
    return _Pairs(
        differences=differences, wins=sum(d > 0 for d in differences), losses=sum(d < 0 for d in differences),
        candidate_mean=sum(candidate[i] for i in common) / len(common), seed_mean=sum(seed[i] for i in common) / len(common),
    )


def _no_test(asked: str, found: _Pairs | None) -> Acceptance | None:
    """The decision when no test is needed: no pair, no example telling the two apart, or no more wins than losses."""
    if found is None:
        return untested(asked, "the seed is kept: no dev example was scored for both the winner and the seed")
    if found.wins <= found.losses:
        what = "no paired example tells them apart" if found.wins == found.losses == 0 else "the winner did not win more examples than it lost"
        return untested(asked, f"the seed is kept without a test: {what} ({found.evidence()}))", **{
            k: v for k, v in found.figures().items() if k != "differences"}).model_copy(update={"differences": found.differences})
    return None


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
            raise ConfigError(f"alpha={alpha} must be in (0, 1)")
        self.alpha = alpha
        self.min_margin = min_margin

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance:
        found = pairs(candidate, seed)
        skipped = _no_test(self.name, found)
        if skipped is not None:
            return skipped
        p = sign_test_p(found.wins, found.losses)
        accepted = p <= self.alpha and found.wins - found.losses >= self.min_margin
        evidence = f"{found.evidence()}; one-sided sign test p={p:.3g}"
        if accepted:
            reason = f"accepted by the sign test: {evidence} <= {self.alpha:g})"
        else:
            reason = f"the seed is kept by the sign test: {evidence}, needs p <= {self.alpha:g} and {self.min_margin} more win(s) than losses)"
        return Acceptance(accepted=accepted, rule=self.name, asked=self.name, reason=reason, p_value=p, **found.figures())


class NonInferiority:
    """Accept a winner that wins more paired dev examples than it loses, unless a one-sided ``1 - alpha``
    lower confidence bound of the paired mean difference reaches ``-delta`` or below (it may be worse by
    more than ``delta``).

    Example:
        >>> NonInferiority(delta=0.05).decide({i: float(i < 3) for i in range(15)}, {i: 0.0 for i in range(15)}).accepted
        True
    """

    def __init__(self, delta: float = 0.05, alpha: float = 0.1, bound: Literal["t", "bootstrap"] = "t",
                 resamples: int = 2000, seed: int = 0) -> None:
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha={alpha} must be in (0, 1)")
        if delta < 0:
            raise ConfigError(f"delta={delta} must be >= 0")
        if bound not in ("t", "bootstrap"):
            raise ConfigError(f"bound={bound!r}: choose 't' or 'bootstrap'")
        self.delta, self.alpha, self.bound, self.resamples, self.seed = delta, alpha, bound, resamples, seed
        self.name = f"non-inferiority({bound}, delta={delta:g})"

    def lower_bound(self, differences: Sequence[float]) -> float:
        """The one-sided ``1 - alpha`` lower confidence bound of the mean of ``differences``."""
        n = len(differences)
        mean = statistics.fmean(differences)
        if n < 2:
            return mean if self.bound == "bootstrap" else -math.inf
        if self.bound == "t":
            from scipy.special import stdtrit  # the t quantile; scipy.stats takes over a second to import

            return mean - float(stdtrit(n - 1, 1 - self.alpha)) * statistics.stdev(differences) / math.sqrt(n)
        import numpy as np

        rng = np.random.default_rng(self.seed)
        values = np.asarray(differences, dtype=float)
        means = values[rng.integers(0, n, size=(self.resamples, n))].mean(axis=1)
        return float(np.quantile(means, self.alpha))

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance:
        found = pairs(candidate, seed)
        skipped = _no_test(self.name, found)
        if skipped is not None:
            return skipped
        low = self.lower_bound(found.differences)
        accepted = low > -self.delta
        evidence = (f"{found.evidence()}; {100 * (1 - self.alpha):g}% lower bound of the mean difference "
                    f"({'t' if self.bound == 't' else 'bootstrap'}) {low:+.3f}")
        if accepted:
            reason = f"accepted as non-inferior: {evidence} > -{self.delta:g})"
        else:
            reason = f"the seed is kept: the winner may be worse by more than {self.delta:g}: {evidence} <= -{self.delta:g})"
        return Acceptance(accepted=accepted, rule=self.name, asked=self.name, reason=reason, lower_bound=low, **found.figures())


class AlwaysAccept:
    """No check: the search's own winner is returned (the behaviour of most optimisers)."""

    name = "always"

    def decide(self, candidate: Mapping[int, float], seed: Mapping[int, float]) -> Acceptance:
        found = pairs(candidate, seed)
        return Acceptance(accepted=True, rule=self.name, asked=self.name, reason="accepted without a check (acceptance='always')",
                          **(found.figures() if found else {}))


__all__ = ["Acceptance", "AcceptanceRule", "AlwaysAccept", "NonInferiority", "SignTest", "pairs", "sign_test_p", "untested"]
