"""The errors cuecard raises on purpose. Each message names the thing at fault."""

from __future__ import annotations

from typing import Any

from .stopping import StopReason


class CuecardError(Exception):
    """Base class of every error cuecard raises on purpose."""


class ModelSpecError(CuecardError, ValueError):
    """A model string that names no model cuecard can build."""


class ModelFileError(CuecardError, FileNotFoundError):
    """A GGUF file that is missing, unreadable or not a GGUF model."""


class MissingCredentialsError(CuecardError, RuntimeError):
    """A remote model was called without the API key its provider needs."""


class ScoringUnsupportedError(CuecardError, NotImplementedError):
    """The model cannot return the log-probability of a given text."""


class SignatureError(CuecardError, ValueError):
    """A DSPy signature cuecard cannot work with (for instance, no output field)."""


class BudgetExhausted(CuecardError, RuntimeError):
    """A cap (LM requests, model calls, tokens, dollars or example evaluations) was reached; no further call was made.

    ``reason`` is the cap's :class:`~cuecard.stopping.StopReason` (which cap, its value, one line), made where
    the cap was met; the search and the report keep that same value.

    Example:
        >>> BudgetExhausted(StopReason.cap("run: cap of 5 LM requests reached", limit="max_calls", limit_value=5)).reason.limit
        'max_calls'
    """

    def __init__(self, reason: StopReason | str) -> None:
        self.reason = reason if isinstance(reason, StopReason) else StopReason.cap(str(reason))
        super().__init__(self.reason.detail)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason,)


class StorageError(CuecardError, RuntimeError):
    """The Optuna storage URL cannot be opened (bad URL, missing driver, unreachable server)."""


class RunConfigMismatch(CuecardError, ValueError):
    """A run with this name already exists with another identity (model, metric, program, data...)."""


class EvaluationFailed(CuecardError, RuntimeError):
    """Too many examples failed (LM errors, timeouts, metric exceptions) to trust the scores."""


class SavedProgramError(CuecardError, ValueError):
    """A saved program file that cannot be loaded: unreadable, from a newer format, or not matching."""


class DataFileError(CuecardError, ValueError):
    """A data file that cannot be read as examples (the message names the file, line or field)."""


class ContextOverflowError(CuecardError, ValueError):
    """An input longer than the task model's context window (the message names the example)."""


class ConfigError(CuecardError, ValueError):
    """A setting or argument that cannot work: a policy's, the engine's, a model's, an evaluator's
    (the message names it)."""


class TeleprompterConfigError(ConfigError):
    """A teleprompter setting or argument that cannot work (the message names it)."""


class MetricError(CuecardError, ValueError):
    """A metric that cannot be used: bad arguments, or a score that is not a number in [0, 1]."""


class SavedFileWarning(UserWarning):
    """Something in a saved program file that loading ignores (a model, an endpoint, call settings...)."""


class DataWarning(UserWarning):
    """Something in the examples a compile sets aside and says so (exact duplicates, a valset overlapping the trainset)."""



class MetricBlindWarning(DataWarning):
    """The metric gave every candidate the same score on every example of the first stage: it cannot see a
    difference between them (often an answer in another form than the gold: a sentence where a word is scored)."""
