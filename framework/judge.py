"""A pairwise judge: which of two answers to one question is better (A, B, or a tie).

Positions are swapped at random per item with a seeded coin, so a judge that favours the first (or
second) slot does not favour one side. With ``both_orders`` each pair is judged in both orders and
a win or a loss counts only when the two agree (a tie otherwise), so a judge's position bias turns
into ties rather than into noise. A verdict that cannot be read counts as a tie and is counted.
The judge is also a metric for label-free optimisation: :class:`PairwiseMetric` scores a prediction
1 (win), 0.5 (tie) or 0 (lose) against a baseline answer, so a mean score ``s`` is a delta win rate
of ``2 s - 1``.

Example:
    >>> from cuecard.clients.testing import scripted_lm
    >>> judge = PairwiseJudge(scripted_lm(lambda m: "[[A]]"), seed=0)
    >>> judge.compare("Say hi", "Hello!", "hi", item="q1").outcome in ("win", "lose")
    True
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections.abc import Callable
from typing import Any, Literal

import dspy
from pydantic import BaseModel, Field

from .errors import ConfigError
from .metrics import score_to_float

JUDGE_SYSTEM = (
    "You judge answers fairly. You will see a user's question and two answers to it, from assistant A "
    "and assistant B. Decide which answer serves the user better: first whether it is correct, then how "
    "helpful, relevant, detailed and harmless it is. The order in which the answers are shown, their "
    "length, and the assistants' names must not sway you. Explain your decision in a few sentences, then "
    'end with your verdict in exactly this form: "[[A]]" if A is better, "[[B]]" if B is better, "[[C]]" for a tie.'
)
JUDGE_USER = "[Question]\n{question}\n\n[Answer of assistant A]\n{a}\n[End of answer A]\n\n[Answer of assistant B]\n{b}\n[End of answer B]"

Outcome = Literal["win", "tie", "lose"]


class Verdict(BaseModel):
    """One judgement, from the side of the answer under test ("ours")."""

    item: str
    outcome: Outcome
    swapped: bool = Field(description="ours was shown as B (in the first order asked, when both were)")
    raw: str = ""
    parsed: bool = True
    orders: list[Outcome] = Field(default_factory=list, description="each order's outcome when both orders were judged")

    @property
    def consistent(self) -> bool:
        """Whether every order asked gave the same outcome (always, for one order)."""
        return len(set(self.orders)) <= 1


class WinRate(BaseModel):
    """Win / tie / lose counts and delta-WR = (win - lose) / n."""

    win: int = 0
    tie: int = 0
    lose: int = 0
    unparsed: int = Field(0, description="verdicts that could not be read (counted as ties)")
    inconsistent: int = Field(0, description="verdicts whose two orders disagreed (counted as ties)")

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def delta_wr(self) -> float:
        return (self.win - self.lose) / self.n if self.n else 0.0

    def add(self, verdict: Verdict) -> None:
        setattr(self, verdict.outcome, getattr(self, verdict.outcome) + 1)
        self.unparsed += not verdict.parsed
        self.inconsistent += not verdict.consistent

    @classmethod
    def of(cls, verdicts: list[Verdict]) -> WinRate:
        rate = cls()
        for verdict in verdicts:
            rate.add(verdict)
        return rate

    def __str__(self) -> str:
        shown = f"win {self.win} / tie {self.tie} / lose {self.lose} (delta-WR {self.delta_wr:+.2f}, unparsed {self.unparsed}"
        return shown + (f", orders disagreed {self.inconsistent})" if self.inconsistent else ")")


def agreed(outcomes: list[Outcome]) -> Outcome:
    """One outcome from a pair judged in several orders: theirs when all agree, a tie otherwise.

    >>> agreed(["win", "win"]), agreed(["win", "lose"]), agreed(["win", "tie"])
    ('win', 'tie', 'tie')
    """
    return outcomes[0] if len(set(outcomes)) == 1 else "tie"


_BRACKETED = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_LOOSE = [
    (re.compile(r"\b(?:tie|equally good|both (?:are )?equal)\b", re.IGNORECASE), "C"),
    (re.compile(r"\b(?:assistant|answer)\s+A\b[^.]*\bbetter\b|\bA is better\b", re.IGNORECASE), "A"),
    (re.compile(r"\b(?:assistant|answer)\s+B\b[^.]*\bbetter\b|\bB is better\b", re.IGNORECASE), "B"),
    (re.compile(r"^\s*\[?\s*([ABC])\s*\]?\s*\.?\s*$"), None),
]


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "C" (tie) from a judge's reply: the last ``[[X]]``, else a lenient reading; None if unreadable."""
    found = _BRACKETED.findall(text or "")
    if found:
        return found[-1]
    for pattern, letter in _LOOSE:
        match = pattern.search(text or "")
        if match:
            return letter or match.group(1)
    return None


class PairwiseJudge:
    """Compares two answers with an LM (MT-bench-style pair prompt, temperature 0), positions swapped per item.

    Args:
        lm: the judge LM (any).
        seed: seeds the per-item position coin (same seed and item, same order).
        system / user: the judge's prompt (``{question}``, ``{a}``, ``{b}`` in ``user``).
        max_tokens: cap on the judge's reply.
        both_orders: judge every pair in both A/B orders (two calls) and count a win or a loss only
            when they agree; a tie otherwise.
    """

    def __init__(self, lm: dspy.LM, *, seed: int = 0, system: str = JUDGE_SYSTEM, user: str = JUDGE_USER, max_tokens: int = 160,
                 both_orders: bool = False) -> None:
        missing = [slot for slot in ("{question}", "{a}", "{b}") if slot not in user]
        if missing:
            raise ConfigError(f"The judge's user prompt lacks {missing}")
        self.lm = lm
        self.seed = seed
        self.system = system
        self.user = user
        self.max_tokens = max_tokens
        self.both_orders = both_orders
        self.verdicts: list[Verdict] = []
        self._lock = threading.Lock()

    def swapped(self, item: str) -> bool:
        """Whether the answer under test is shown second for this item (a seeded coin)."""
        digest = hashlib.sha256(f"{self.seed}:{item}".encode()).hexdigest()
        return random.Random(digest).random() < 0.5

    def compare(self, question: str, ours: str, theirs: str, *, item: str) -> Verdict:
        """Judge ``ours`` against ``theirs`` for ``question``; the verdict is from our side."""
        swapped = self.swapped(item)
        readings = [self._judge_once(question, ours, theirs, order) for order in ((swapped, not swapped) if self.both_orders else (swapped,))]
        outcomes = [outcome for outcome, _, _ in readings]
        verdict = Verdict(
            item=item,
            outcome=agreed(outcomes),
            swapped=swapped,
            raw="\n---\n".join(raw[-300:] for _, raw, _ in readings),
            parsed=all(parsed for _, _, parsed in readings),
            orders=outcomes if self.both_orders else [],
        )
        with self._lock:
            self.verdicts.append(verdict)
        return verdict

    def _judge_once(self, question: str, ours: str, theirs: str, swapped: bool) -> tuple[Outcome, str, bool]:
        """(outcome from our side, the judge's reply, whether it could be read) with ours shown as B if ``swapped``."""
        a, b = (theirs, ours) if swapped else (ours, theirs)
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(question=question, a=a, b=b)},
        ]
        raw = (self.lm(messages=messages, max_tokens=self.max_tokens, temperature=0.0) or [""])[0] or ""
        letter = parse_verdict(raw)
        if letter is None or letter == "C":
            return "tie", raw, letter is not None
        return ("win" if (letter == "A") != swapped else "lose"), raw, True

    @property
    def win_rate(self) -> WinRate:
        return WinRate.of(self.verdicts)


OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "lose": 0.0}


class PairwiseMetric:
    """A label-free metric: the prediction's answer judged against a baseline answer to the same input.

    Args:
        judge: the :class:`PairwiseJudge`.
        question: the example field holding the question the judge sees.
        answer: the prediction field holding the answer.
        baseline: ``baseline(example) -> str``, the answer to beat (e.g. the unoptimised program's).

    Scores 1 / 0.5 / 0 for win / tie / lose; a mean ``s`` is a delta-WR of ``2 s - 1``.
    """

    def __init__(self, judge: PairwiseJudge, *, question: str, answer: str, baseline: Callable[[dspy.Example], str]) -> None:
        self.judge = judge
        self.question = question
        self.answer = answer
        self.baseline = baseline
        self.__name__ = f"pairwise({answer})"

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        ours = prediction[self.answer]  # KeyError for a prediction without the answer: nothing to judge
        question = str(example[self.question])
        verdict = self.judge.compare(question, str(ours), self.baseline(example), item=question)
        return score_to_float(OUTCOME_SCORE[verdict.outcome])
