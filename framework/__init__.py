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

import importlib as _importlib
import importlib.abc as _importlib_abc
import importlib.machinery as _importlib_machinery
import importlib.util as _importlib_util
import os as _os
import sys as _sys

# litellm fetches a price list from the network at import unless told not to; cuecard runs offline.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from . import datasets, identity, metrics  # noqa: E402
from .clients.adapter import PlainAdapter, adapter_for, configure  # noqa: E402
from .clients.lm import LM, CuecardLM, configure_cache, sampling_kwargs, score_logprob  # noqa: E402
from .clients.local import LlamaCppEngine, LogProb, embedded_model_path  # noqa: E402
from .clients.usage import Limits, Usage, UsageMeter, track  # noqa: E402
from .errors import (  # noqa: E402
    BudgetExhausted,
    CuecardError,
    MissingCredentialsError,
    ModelFileError,
    ModelSpecError,
    ScoringUnsupportedError,
    SignatureError,
)
from .redact import redact_text, redact_url  # noqa: E402
from .reporting.saving import SavedProgramError, load, read_block, save  # noqa: E402

# The module paths the README documented before cuecard had subpackages: each imports as the module it
# names here (the same module object, not a copy), loaded only when first imported.
_SHORT_PATHS = {
    "cuecard.acceptance": "cuecard.engine.acceptance",
    "cuecard.cli": "cuecard.command.cli",
    "cuecard.cli_inputs": "cuecard.command.cli_inputs",
    "cuecard.evaluate": "cuecard.engine.evaluate",
    "cuecard.models": "cuecard.clients.models",
    "cuecard.plots": "cuecard.reporting.plots",
    "cuecard.policies": "cuecard.engine.policies",
    "cuecard.report": "cuecard.reporting.report",
    "cuecard.study": "cuecard.engine.study",
}


class _ShortPath(_importlib_abc.MetaPathFinder, _importlib_abc.Loader):
    """Imports a short path as the module it names: one module under two names in ``sys.modules``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _SHORT_PATHS:
            return None
        real = _importlib_util.find_spec(_SHORT_PATHS[fullname])
        return _importlib_machinery.ModuleSpec(fullname, self, origin=real.origin if real else None)

    def create_module(self, spec):
        module = _importlib.import_module(_SHORT_PATHS[spec.name])
        spec.loader_state = module.__spec__  # the import system writes this spec over the module's own
        return module

    def exec_module(self, module):  # the module already ran under its own name
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname):  # ``python -m`` with a short path runs the module's code
        real = _importlib_util.find_spec(_SHORT_PATHS[fullname])
        return real.loader.get_code(real.name)


_sys.meta_path[:] = [finder for finder in _sys.meta_path if type(finder).__name__ != "_ShortPath"]
_sys.meta_path.append(_ShortPath())

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
