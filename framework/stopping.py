"""Why a search stopped, said once: set where the search stops, shown by the command line and the report.

Example:
    >>> from cuecard.stopping import StopReason
    >>> StopReason.cap("cap of 150 LM requests reached", limit="max_calls", limit_value=150).text
    'a cap was reached: cap of 150 LM requests reached'
    >>> StopReason().text
    'the search ran to its end'
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel


class StopKind(str, Enum):
    """The ways a search ends."""

    FINISHED = "finished"
    """It ran every step it planned (or could)."""
    CAP = "cap"
    """A cap (LM requests, model calls, tokens, dollars, evaluations) was reached."""
    NO_ROOM = "no room"
    """The cap on requests left too little for one more step (``until_cap``)."""
    NO_IMPROVEMENT = "no improvement"
    """The best score stopped improving (the method's patience)."""
    NOTHING_NEW = "nothing new"
    """The method had nothing left to try (no usable proposal, no error to learn from)."""
    FAILURES = "failures"
    """Too many evaluations failed."""
    METRIC_BLIND = "metric blind"
    """The metric gave every candidate the same score: it cannot tell them apart."""


_LEADS = {
    StopKind.FINISHED: "the search ran to its end",
    StopKind.CAP: "a cap was reached",
    StopKind.NO_ROOM: "the cap left no room for one more step",
    StopKind.NO_IMPROVEMENT: "the best score stopped improving",
    StopKind.NOTHING_NEW: "nothing new to try",
    StopKind.FAILURES: "too many evaluations failed",
    StopKind.METRIC_BLIND: "the metric cannot tell the candidates apart",
}


class StopReason(BaseModel):
    """Why a search stopped: its kind and, in one line, the particulars (which cap, how many requests...).

    A cap's reason is made once, where the cap is met (the usage meter or the engine), and travels
    unchanged: in :class:`~cuecard.errors.BudgetExhausted`, ``Allocation.capped``, the search context and
    the report.
    """

    kind: StopKind = StopKind.FINISHED
    detail: str = ""
    limit: str | None = None
    """Which cap was reached: ``max_calls``, ``max_model_calls``, ``max_tokens``, ``max_cost`` or ``max_evaluations``."""
    limit_value: int | float | None = None
    """That cap's value."""

    @classmethod
    def cap(cls, detail: str, *, limit: str | None = None, limit_value: float | None = None) -> StopReason:
        return cls(kind=StopKind.CAP, detail=detail, limit=limit, limit_value=limit_value)

    @property
    def by_cap(self) -> bool:
        """Whether a cap ended the search (the same command with a larger cap goes on)."""
        return self.kind in (StopKind.CAP, StopKind.NO_ROOM)

    @property
    def text(self) -> str:
        """The reason as one line for people."""
        lead = _LEADS[self.kind]
        detail = " ".join(self.detail.split())
        return f"{lead}: {detail}" if detail else lead

    @staticmethod
    def kind_of(text: str) -> StopKind | None:
        """The kind of a reason from its :attr:`text` (as a report or a note quotes it); None when no kind's
        wording starts it.

        Example:
            >>> StopReason.kind_of("the best score stopped improving: no gain over 0.933")
            <StopKind.NO_IMPROVEMENT: 'no improvement'>
        """
        text = text.strip()
        return next((kind for kind, lead in _LEADS.items() if text.startswith(lead)), None)
