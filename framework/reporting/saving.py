"""Saving compiled programs: one JSON file plain ``dspy`` loads, with cuecard's own block inside.

The file is what ``program.save(path)`` writes (``Program().load(path)`` reads it and ignores the
extra key) plus a ``"cuecard"`` block: format version, the built-in program to rebuild, the
teleprompter and its config, seed, data fingerprint, scores, model names (never keys) and usage.
Loading never unpickles and never imports a module named in the file: it builds only cuecard's own
programs (``cuecard.programs``), or fills a program the caller passes in. A saved file is data:
loading keeps only each predictor's instructions, signature field texts and demos, checks their
types, and ignores (with a :class:`~cuecard.errors.SavedFileWarning`) anything else a file may
carry, such as a model (``lm``), an endpoint or call settings (``config``): the caller's model and
settings are the only ones used.

Example:
    >>> import cuecard
    >>> cuecard.save(compiled, "sentiment.json")  # doctest: +SKIP
    >>> program = cuecard.load("sentiment.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dspy
from pydantic import BaseModel, Field, ValidationError

from ..clients.usage import Usage
from ..errors import SavedFileWarning, SavedProgramError
from ..program import predictors

FORMAT_VERSION = 1
BLOCK = "cuecard"


class ProgramSpec(BaseModel):
    """How to rebuild a built-in program: its class name in ``cuecard.programs`` and its arguments."""

    class_name: str = Field(alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    model_config = {"populate_by_name": True}


class SavedBlock(BaseModel):
    """cuecard's block in a saved program file."""

    format_version: int
    saved_at: str
    program: ProgramSpec | None = None
    program_class: str = Field(description="the class of the saved program (informative; never imported)")
    predictors: list[str]
    teleprompter: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    data_fingerprint: str | None = None
    scores: dict[str, float] = Field(default_factory=dict, description="e.g. dev, train, test")
    task_model: str | None = None
    task_model_spec: str | None = Field(None, description="the model string the compile was given (never a key)")
    prompt_model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    report: dict[str, Any] | None = Field(None, description="the compile report (candidates, lineage, history)")


def save(
    program: dspy.Module,
    path: str | os.PathLike[str],
    *,
    scores: dict[str, float] | None = None,
    task_model: str | None = None,
    prompt_model: str | None = None,
) -> Path:
    """Write ``program`` to ``path`` (``.json``) with cuecard's block; atomic (a crash leaves no half file).

    The compile report attached by a teleprompter (``program.cuecard_report``) is kept in the block.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise SavedProgramError(f"A saved program is a .json file; got {path}")
    state = program_state(program, scores=scores, task_model=task_model, prompt_model=prompt_model)
    state["metadata"] = {"dependency_versions": _dependency_versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(state, out, indent=2, ensure_ascii=False, default=str)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a saved program is as readable as program.save()'s
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def program_state(
    program: dspy.Module,
    *,
    scores: dict[str, float] | None = None,
    task_model: str | None = None,
    prompt_model: str | None = None,
) -> dict[str, Any]:
    """What DSPy's ``dump_state`` gives for ``program``, plus cuecard's block; a program with one predictor also
    has that predictor's state at the top, so ``dspy.Predict(signature).load(path)`` reads the file too."""
    report = getattr(program, "cuecard_report", None)
    spec = getattr(program, "cuecard_spec", None)
    state = type(program).dump_state(program)  # the class's, not the instance's (see keep_block)
    named = predictors(program)
    if len(named) == 1 and not isinstance(program, dspy.Predict) and isinstance(state.get(named[0][0]), dict):
        state = {**state[named[0][0]], **state}
    block = SavedBlock(
        format_version=FORMAT_VERSION,
        saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        program=ProgramSpec(**spec) if spec else None,
        program_class=type(program).__name__,
        predictors=[name for name, _ in predictors(program)],
        teleprompter=report.teleprompter if report else None,
        config=report.config if report else {},
        seed=report.seed if report else None,
        data_fingerprint=report.data_fingerprint if report else None,
        scores={**({"dev": report.best.dev_score} if report else {}), **(scores or {})},
        task_model=task_model or (report.task_model if report else None),
        task_model_spec=task_model or (report.task_model_spec if report else None),
        prompt_model=prompt_model or (report.prompt_model if report else None),
        usage=report.usage if report else Usage(),
        report=report.model_dump(mode="json") if report else None,
    )
    state[BLOCK] = block.model_dump(mode="json", by_alias=True)
    return state


class _StateWithBlock:
    """A program's ``dump_state`` that adds cuecard's block (see :func:`keep_block`)."""

    def __init__(self, program: dspy.Module) -> None:
        self.program = program

    def __call__(self, json_mode: bool = True) -> dict[str, Any]:
        if not json_mode:
            return type(self.program).dump_state(self.program, json_mode=False)
        return program_state(self.program)


def keep_block(program: dspy.Module) -> dspy.Module:
    """Make DSPy's own ``program.save("x.json")`` write cuecard's block too (the report, the models, the scores),
    so ``cuecard report x.json`` works on it; ``program`` is returned.

    Example:
        >>> compiled = keep_block(compiled)  # doctest: +SKIP
        >>> compiled.save("sentiment.json")  # doctest: +SKIP
    """
    program.dump_state = _StateWithBlock(program)
    return program


def read_block(path: str | os.PathLike[str]) -> SavedBlock | None:
    """cuecard's block of a saved file (None for a plain dspy file); clear errors for bad files."""
    state = _read_state(Path(path))
    return _block(Path(path), state)


def load(path: str | os.PathLike[str], program: dspy.Module | None = None) -> dspy.Module:
    """Load a saved program: rebuild a built-in program from the file, or fill the ``program`` given.

    Raises :class:`SavedProgramError` naming what is wrong: an unreadable or truncated file, a newer
    format version, a user program not passed in, or predictors that do not match.
    """
    from ..registry import program_class, programs

    path = Path(path)
    state = _read_state(path)
    block = _block(path, state)
    if program is None:
        if block is None or block.program is None:
            kind = block.program_class if block else "a plain dspy program"
            raise SavedProgramError(
                f"{path} holds {kind}, not one of cuecard's built-in programs; build the program yourself "
                f"and pass it: cuecard.load(path, program=MyProgram())"
            )
        cls = program_class(block.program.class_name)
        if cls is None:
            raise SavedProgramError(
                f"{path} names the program class {block.program.class_name!r}, which no installed package registers "
                f"(registered: {sorted(c.__name__ for c in programs().values())})"
            )
        try:
            program = cls(**block.program.kwargs)
        except (TypeError, ValueError) as exc:
            raise SavedProgramError(f"{path}: cannot rebuild {block.program.class_name} from its saved arguments: {exc}") from exc
    _check_match(path, state, program, block)
    data = _data_only(path, state, program)
    try:
        program.load_state(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SavedProgramError(f"{path}: the saved state does not fit {type(program).__name__}: {exc!r}") from exc
    if block is not None and block.report is not None:
        from .report import CompileReport

        try:
            program.cuecard_report = CompileReport(**block.report)
            keep_block(program)
        except ValidationError:
            pass  # the report is informative; the program itself loaded
    return program


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix != ".json":
        raise SavedProgramError(f"{path}: cuecard loads .json files only (never pickles)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SavedProgramError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SavedProgramError(f"{path}: cannot be read: {exc}") from exc
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SavedProgramError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); the file is truncated or was edited"
        ) from exc
    except RecursionError:
        raise SavedProgramError(f"{path}: its JSON is nested too deeply to be a saved program; the file was edited or is not one") from None
    if not isinstance(state, dict):
        raise SavedProgramError(f"{path}: expected a JSON object, found {type(state).__name__}")
    return state


def _block(path: Path, state: dict[str, Any]) -> SavedBlock | None:
    raw = state.get(BLOCK)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SavedProgramError(f"{path}: the {BLOCK!r} block must be a JSON object")
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise SavedProgramError(f"{path}: the {BLOCK!r} block has no integer format_version")
    if version > FORMAT_VERSION:
        raise SavedProgramError(
            f"{path} was written in format version {version}; this cuecard reads up to {FORMAT_VERSION}. Upgrade cuecard."
        )
    try:
        return SavedBlock(**raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SavedProgramError(f"{path}: the {BLOCK!r} block is malformed ({problems})") from exc


def _check_match(path: Path, state: dict[str, Any], program: dspy.Module, block: SavedBlock | None) -> None:
    if isinstance(program, dspy.Predict):  # a bare predictor's state is its own, not keyed by name
        _check_fields(path, "self", state, program)
        return
    names = [name for name, _ in predictors(program)]
    top = (BLOCK, "metadata", *_PREDICTOR_DATA)  # a one-predictor file also holds its predictor's state at the top
    saved = [key for key, value in state.items() if key not in top and isinstance(value, dict)]
    missing = [name for name in names if name not in state]
    extra = [name for name in saved if name not in names]
    if missing or extra:
        raise SavedProgramError(
            f"{path} does not match {type(program).__name__}: predictors in the program but not the file {missing}, "
            f"in the file but not the program {extra}"
        )
    for name, predictor in predictors(program):
        _check_fields(path, name, state[name], program, predictor)


def _check_fields(path: Path, name: str, entry: Any, program: dspy.Module, predictor: dspy.Predict | None = None) -> None:
    predictor = predictor or program
    fields = (entry.get("signature") or {}).get("fields") if isinstance(entry, dict) else None
    if not isinstance(fields, list):
        raise SavedProgramError(f"{path}: predictor {name!r} has no signature fields in the file")
    expected = len(predictor.signature.fields)
    if len(fields) != expected:
        raise SavedProgramError(
            f"{path}: predictor {name!r} has {len(fields)} signature fields in the file but {expected} in "
            f"{type(program).__name__} ({', '.join(predictor.signature.fields)})"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_PREDICTOR_DATA = ("signature", "demos", "fields")
_IGNORED_QUIETLY = {"traces": [], "train": [], "lm": None}
_JSON_SCALARS = (str, int, float, bool, type(None))


def _data_only(path: Path, state: dict[str, Any], program: dspy.Module) -> dict[str, Any]:
    """The saved state reduced to data: each predictor's instructions, field texts, demos and decision
    fields, type-checked; anything else (a model, an endpoint, call settings) is left out with a warning."""
    if isinstance(program, dspy.Predict):
        block = state.get(BLOCK)
        named = block.get("predictors", []) if isinstance(block, dict) else []
        return _predictor_data(path, "self", {k: v for k, v in state.items() if k not in named}, top_level=True)
    return {name: _predictor_data(path, name, state[name]) for name, _ in predictors(program)}


def _predictor_data(path: Path, name: str, entry: dict[str, Any], *, top_level: bool = False) -> dict[str, Any]:
    where = f"{path}: predictor {name!r}"
    ignored = sorted(
        key
        for key, value in entry.items()
        if key not in _PREDICTOR_DATA
        and not (key in _IGNORED_QUIETLY and value == _IGNORED_QUIETLY[key])
        and not (top_level and key in (BLOCK, "metadata"))
    )
    if ignored:
        warnings.warn(
            f"{where}: ignored {ignored} from the file (a saved program never sets a model, an endpoint, a key "
            "or call settings; the ones you give are used)",
            SavedFileWarning,
            stacklevel=3,
        )
    signature = entry.get("signature")
    if not isinstance(signature, dict):
        raise SavedProgramError(f"{where}: 'signature' must be a JSON object")
    instructions = signature.get("instructions")
    if not isinstance(instructions, str):
        raise SavedProgramError(f"{where}: signature.instructions must be a string, found {type(instructions).__name__}")
    fields = []
    for number, saved in enumerate(signature.get("fields") or []):
        if not isinstance(saved, dict):
            raise SavedProgramError(f"{where}: signature.fields[{number}] must be a JSON object")
        texts = {}
        for key in ("prefix", "description"):
            value = saved.get(key)
            if not isinstance(value, str):
                raise SavedProgramError(f"{where}: signature.fields[{number}].{key} must be a string, found {type(value).__name__}")
            texts[key] = value
        fields.append(texts)
    demos = entry.get("demos") or []
    if not isinstance(demos, list) or not all(isinstance(demo, dict) for demo in demos):
        raise SavedProgramError(f"{where}: demos must be a list of JSON objects")
    for number, demo in enumerate(demos):
        bad = [key for key, value in demo.items() if not _is_json_data(value)]
        if bad:
            raise SavedProgramError(f"{where}: demos[{number}] has non-data values for {bad}")
    clean: dict[str, Any] = {
        "signature": {"instructions": instructions, "fields": fields},
        "demos": [dict(demo) for demo in demos],
        "traces": [],
        "train": [],
        "lm": None,
    }
    decision_fields = entry.get("fields")
    if decision_fields:
        if not isinstance(decision_fields, dict) or not _is_json_data(decision_fields):
            raise SavedProgramError(f"{where}: 'fields' must be a JSON object of output-field settings")
        clean["fields"] = decision_fields
    return clean


def _is_json_data(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list):
        return all(_is_json_data(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json_data(item, depth + 1) for key, item in value.items())
    return False


def _dependency_versions() -> dict[str, str]:
    from dspy.utils.saving import get_dependency_versions

    return get_dependency_versions()
