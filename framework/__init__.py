"""cuecard: prompt optimization for DSPy programs.

Each method from the automatic-prompt-engineering literature (APE, ProTeGi, OPRO, PE2, BPO) is a
teleprompter that rewrites a DSPy program's instructions; all share one evaluation engine.

Example:
    >>> import dspy, cuecard
    >>> lm = cuecard.LM("local")                      # the embedded SmolLM2, offline
    >>> cuecard.configure(lm)                         # dspy.configure with the plain adapter
    >>> dspy.Predict("review -> sentiment")(review="Loved it!").sentiment  # doctest: +SKIP
    'positive'
"""

import os as _os

# litellm fetches a price list from the network at import unless told not to; cuecard runs offline.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from . import datasets, identity, metrics  # noqa: E402
from .adapter import PlainAdapter, adapter_for, configure  # noqa: E402
from .errors import (  # noqa: E402
    BudgetExhausted,
    CuecardError,
    MissingCredentialsError,
    ModelFileError,
    ModelSpecError,
    ScoringUnsupportedError,
    SignatureError,
)
from .lm import LM, CuecardLM, configure_cache, sampling_kwargs, score_logprob  # noqa: E402
from .local import LlamaCppEngine, LogProb, embedded_model_path  # noqa: E402
from .redact import redact_text, redact_url  # noqa: E402
from .saving import SavedProgramError, load, read_block, save  # noqa: E402
from .usage import Limits, Usage, UsageMeter, track  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LM",
    "datasets",
    "identity",
    "metrics",
    "BudgetExhausted",
    "CuecardError",
    "CuecardLM",
    "Limits",
    "LlamaCppEngine",
    "LogProb",
    "MissingCredentialsError",
    "ModelFileError",
    "ModelSpecError",
    "PlainAdapter",
    "SavedProgramError",
    "ScoringUnsupportedError",
    "SignatureError",
    "Usage",
    "UsageMeter",
    "adapter_for",
    "configure",
    "configure_cache",
    "embedded_model_path",
    "load",
    "read_block",
    "redact_text",
    "redact_url",
    "save",
    "sampling_kwargs",
    "score_logprob",
    "track",
]
