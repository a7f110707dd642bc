"""The run identity: everything that changes a stored score, defined once.

A stored score (or a stored LM reply) is reused only by a run with an equal identity: the same
teleprompter and config, policy, objective, task model and the settings that change its answers,
adapter and layout, prompt model, program structure (predictor names, signatures with field names,
types and labels, starting instructions and demos), metric, and examples. The identity is hashed
into the default run name, stored in the run's study, and checked when a run is opened again; the
CLI, the Python API and the benchmark harness all use it.

Secrets never enter an identity: LM settings whose names look like credentials are left out.

Example:
    >>> import dspy
    >>> from cuecard.clients.testing import scripted_lm
    >>> lm = scripted_lm(lambda messages: "yes", name="scripted/a")
    >>> lm_identity(lm)["model"]
    'scripted/a'
    >>> program = dspy.Predict(dspy.Signature("question -> answer", "Answer."))
    >>> program_structure(program)["predictors"][0]["fields"][0]["name"]
    'question'
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import textwrap
import threading
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dspy
from pydantic import BaseModel, Field
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from .redact import redact_url

IDENTITY_VERSION = 3  # 3: token caps (max_tokens, the adapter's short_answer_tokens) are part of it

_SECRET = re.compile(r"key|token|secret|password|passwd|auth|credential|cookie|header", re.IGNORECASE)
_NOT_ANSWER_CHANGING = frozenset({"num_retries", "max_retries", "timeout", "request_timeout", "cache", "callbacks"})
_TOKEN_CAP = re.compile(r"^(max|max_completion|short_answer)_tokens$")  # "token" in the name, but caps on answers


def _not_secret(name: str) -> bool:
    return bool(_TOKEN_CAP.match(name)) or not _SECRET.search(name)


def _answer_setting(name: str) -> bool:
    """Whether a model setting goes into an identity: not a secret, and one that can change an answer."""
    return name not in _NOT_ANSWER_CHANGING and _not_secret(name)


def digest(value: Any, length: int = 16) -> str:
    """A short sha256 of ``value`` as canonical JSON.

    >>> digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
    True
    """
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def lm_identity(lm: Any) -> dict[str, Any] | None:
    """A model and the settings that change its answers (temperature, max tokens, endpoint...); never keys."""
    if lm is None:
        return None
    kwargs = {
        name: _describe(value)
        for name, value in sorted((getattr(lm, "kwargs", None) or {}).items())
        if _answer_setting(name)
    }
    identity: dict[str, Any] = {"model": str(getattr(lm, "model", type(lm).__name__)), "settings": kwargs}
    engine = getattr(lm, "engine", None)
    path = getattr(engine, "model_path", None)
    if path:
        import os

        identity["model_file"] = {"name": os.path.basename(path), "bytes": os.path.getsize(path)}
    return identity


def adapter_identity(adapter: Any) -> dict[str, Any] | None:
    """An adapter's class and its layout settings."""
    if adapter is None:
        return None
    return {"class": type(adapter).__qualname__, "settings": _describe(_public_state(adapter), depth=2)}


def policy_identity(policy: Any) -> dict[str, Any] | None:
    """A policy's name and parameters."""
    if policy is None:
        return None
    return {"name": getattr(policy, "name", type(policy).__qualname__), "settings": _describe(_public_state(policy), depth=2)}


def program_structure(program: dspy.Module) -> dict[str, Any]:
    """The program's predictors: names, signature fields (name, input/output, type, prefix,
    description), starting instructions and demos. Labels live in the field types (``Literal[...]``)."""
    from .program import predictors

    found = []
    for name, predictor in predictors(program):
        signature = predictor.signature
        fields = []
        for field_name, info in signature.fields.items():
            extra = info.json_schema_extra or {}
            fields.append(
                {
                    "name": field_name,
                    "kind": "input" if field_name in signature.input_fields else "output",
                    "type": _type_name(info.annotation),
                    "prefix": extra.get("prefix"),
                    "description": extra.get("desc"),
                }
            )
        demos = [dict(demo) for demo in (predictor.demos or [])]
        found.append(
            {
                "name": name,
                "instructions": signature.instructions,
                "fields": fields,
                "demos": digest(demos) if demos else None,
            }
        )
    return {"class": type(program).__qualname__, "predictors": found}


def metric_identity(metric: Any, version: str | None = None) -> dict[str, Any] | None:
    """A metric's qualified name and a fingerprint of its code and state.

    The fingerprint covers the source of functions (and the values they close over), the class
    source and attributes of callable objects, and the identity of any LM a metric holds (a judge).
    ``version`` (or a ``metric_version`` attribute on the metric) replaces the code fingerprint for
    metrics whose code cannot be read or should be versioned by hand.

    >>> from cuecard.metrics import exact_match
    >>> metric_identity(exact_match("a"))["fingerprint"] != metric_identity(exact_match("b"))["fingerprint"]
    True
    """
    if metric is None:
        return None
    name = getattr(metric, "__qualname__", None) or getattr(metric, "__name__", None) or type(metric).__qualname__
    version = version if version is not None else getattr(metric, "metric_version", None)
    if version is not None:
        return {"name": str(name), "version": str(version)}
    return {"name": str(name), "fingerprint": digest(_describe(metric, depth=0))}


def data_fingerprint(examples: Sequence[dspy.Example]) -> str:
    """A hash of the examples in order, with which fields are inputs."""
    return digest([[dict(example.items()), sorted(getattr(example, "_input_keys", None) or [])] for example in examples])


class RunIdentity(BaseModel):
    """What makes two runs the same run. Stored in the study; hashed into the default run name.

    Example:
        >>> a = RunIdentity(teleprompter="ape", data="d1")
        >>> b = RunIdentity(teleprompter="ape", data="d2")
        >>> a.differences(b)
        ["data: 'd1' here, 'd2' stored"]
    """

    version: int = IDENTITY_VERSION
    teleprompter: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="the method's settings")
    policy: dict[str, Any] | None = None
    objective: str = "metric"
    task_model: dict[str, Any] | None = None
    prompt_model: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    program: dict[str, Any] | None = None
    metric: dict[str, Any] | None = None
    data: str | None = Field(None, description="fingerprint of the trainset and valset the run was given")
    extras: dict[str, Any] = Field(default_factory=dict, description="method-specific parts (e.g. BPO's judge)")

    def digest(self) -> str:
        return digest(self.as_stored(), length=12)

    def as_stored(self) -> dict[str, Any]:
        """The identity as JSON data (what the study keeps)."""
        return json.loads(json.dumps(self.model_dump(mode="json"), default=str))

    def differences(self, stored: RunIdentity | Mapping[str, Any]) -> list[str]:
        """Readable ``path: here vs stored`` lines for every leaf that differs."""
        other = stored.as_stored() if isinstance(stored, RunIdentity) else json.loads(json.dumps(stored, default=str))
        found: list[str] = []
        _diff(self.as_stored(), other, "", found)
        return found


def _diff(here: Any, stored: Any, path: str, found: list[str]) -> None:
    if isinstance(here, dict) and isinstance(stored, dict):
        for key in sorted(set(here) | set(stored)):
            _diff(here.get(key), stored.get(key), f"{path}.{key}" if path else str(key), found)
        return
    if isinstance(here, list) and isinstance(stored, list) and len(here) == len(stored):
        for index, (mine, theirs) in enumerate(zip(here, stored, strict=True)):
            _diff(mine, theirs, f"{path}[{index}]", found)
        return
    if isinstance(here, list) and isinstance(stored, list):
        found.append(f"{path}: {len(here)} item(s) here, {len(stored)} stored")
        return
    if here != stored:
        mine, theirs = _text(here), _text(stored)
        start = _first_difference(mine, theirs)
        found.append(f"{path}: {_short(mine, start)} here, {_short(theirs, start)} stored")


def _text(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else repr(value)


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _short(text: str, start: int = 0) -> str:
    """At most 80 characters of ``text``, from a little before ``start`` (where two texts part)."""
    if len(text) <= 80:
        return text
    begin = max(0, min(start - 20, len(text) - 74))
    head, tail = ("..." if begin else ""), ("..." if begin + 74 < len(text) else "")
    return head + text[begin : begin + 74] + tail


# ---- fingerprints of code and state ----------------------------------------------------------
def _type_name(annotation: Any) -> str:
    text = repr(annotation)
    return re.sub(r" at 0x[0-9a-f]+", "", text.replace("typing.", ""))


def _public_state(obj: Any) -> dict[str, Any]:
    state = getattr(obj, "__dict__", None) or {}
    return {k: v for k, v in state.items() if not k.startswith("_") and _not_secret(k)}


_SOURCES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_SOURCES_LOCK = threading.Lock()


def _is_ast_depth_race(error: BaseException) -> bool:
    # CPython 3.11.7 keeps the AST constructor's recursion counter in state shared between threads: a parse
    # (inspect.getsource of a class parses its module) beside another thread's parse can fail spuriously.
    return isinstance(error, SystemError) and "AST constructor recursion depth mismatch" in str(error)


def _read_source(obj: Any) -> str:
    for attempt in Retrying(retry=retry_if_exception(_is_ast_depth_race), stop=stop_after_attempt(5), reraise=True):
        with attempt:
            return textwrap.dedent(inspect.getsource(obj))
    raise AssertionError("unreachable")


def _source(obj: Any) -> str:
    """The source of a class or function, read (and parsed) once per object per process."""
    try:
        with _SOURCES_LOCK:
            try:
                cached = _SOURCES.get(obj)
            except TypeError:  # not weakly referenceable: read it every time
                return _read_source(obj)
            if cached is None:
                cached = _SOURCES[obj] = _read_source(obj)
            return cached
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is not None:
            return digest([code.co_code.hex(), [repr(c) for c in code.co_consts], list(code.co_names)])
        return ""


def _describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able description of ``value`` that changes when its behaviour may change."""
    if depth > 5:
        return type(value).__qualname__
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value  # an endpoint held by a metric or a setting: no secret
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(item, depth + 1) for item in list(value)[:200]]
    if isinstance(value, (set, frozenset)):
        return sorted((_describe(item, depth + 1) for item in value), key=str)
    if isinstance(value, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))[:200]}
    if isinstance(value, re.Pattern):
        return {"pattern": value.pattern, "flags": value.flags}
    if isinstance(value, types.ModuleType):
        return {"module": value.__name__}
    if isinstance(value, type):
        return {"class": f"{value.__module__}.{value.__qualname__}"}
    if isinstance(value, dspy.LM) or hasattr(value, "kwargs") and hasattr(value, "model") and callable(value):
        return {"lm": lm_identity(value)}
    if isinstance(value, types.MethodType):
        return {"method": _describe(value.__func__, depth + 1), "self": _describe(value.__self__, depth + 1)}
    if isinstance(value, (types.FunctionType, types.LambdaType)):
        return _describe_function(value, depth)
    if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return {"builtin": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
    if isinstance(value, BaseModel):
        return {"model": type(value).__qualname__, "fields": _describe(value.model_dump(), depth + 1)}
    if isinstance(value, dspy.Module):
        return {"program": program_structure(value)}
    cls = type(value)
    return {
        "object": f"{cls.__module__}.{cls.__qualname__}",
        "source": digest(_source(cls)),
        "state": _describe(_public_state(value) or _private_state(value), depth + 1),
    }


def _private_state(value: Any) -> dict[str, Any]:
    state = getattr(value, "__dict__", None) or {}
    return {k: v for k, v in state.items() if not _SECRET.search(k)}


def _describe_function(function: Callable[..., Any], depth: int) -> dict[str, Any]:
    closure = [cell.cell_contents for cell in (function.__closure__ or ()) if _cell_filled(cell)]
    return {
        "function": f"{function.__module__}.{function.__qualname__}",
        "source": digest(_source(function)),
        "closure": [_describe(item, depth + 1) for item in closure],
        "defaults": _describe(function.__defaults__ or (), depth + 1),
        "kwdefaults": _describe(function.__kwdefaults__ or {}, depth + 1),
    }


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


__all__ = [
    "IDENTITY_VERSION",
    "RunIdentity",
    "adapter_identity",
    "data_fingerprint",
    "digest",
    "lm_identity",
    "metric_identity",
    "policy_identity",
    "program_structure",
]
