"""Why a search stopped, said once: set where the search stops, shown by the command line and the report.

Example:
    >>> from cuecard.engine.stopping import StopReason
    >>> StopReason.cap("cap of 150 LM requests reached").text
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
    """Why a search stopped: its kind and, in one line, the particulars (which cap, how many requests...)."""

    kind: StopKind = StopKind.FINISHED
    detail: str = ""

    @classmethod
    def cap(cls, detail: str) -> StopReason:
        return cls(kind=StopKind.CAP, detail=detail)

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
