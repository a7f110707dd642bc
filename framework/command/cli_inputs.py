"""Command-line inputs a teleprompter declares for itself: files, models and switches of its own.

The ``cuecard`` command knows no method by name. A teleprompter lists what it takes from the command
line in its ``cli_inputs`` (a tuple of :class:`CLIInput`); ``cuecard compile`` adds each flag once,
grouped per method in ``--help``, reads the value the way the input says (a file through the
method's own reader, a model spec through the command's model options, a switch as ``True``) and
passes it to the teleprompter's constructor under ``keyword``. A flag given for a method that does not
declare it is refused with one line before any file is read or any model is built. A flag the user
leaves out is not passed: the constructor's default holds.

Example:
    >>> class Mine:  # a third party's teleprompter (normally a Teleprompter subclass)
    ...     cli_inputs = (CLIInput(flag="--critic-model", keyword="critic_lm", kind="model", help="the critic"),)
    >>> [spec.flag for spec in inputs_of(Mine)]
    ['--critic-model']
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..registry import RegistryError


class CLIInput(BaseModel):
    """One input a teleprompter takes from the ``cuecard compile`` command line.

    ``kind``: ``file`` (the path is given to ``read``, whose errors name the file; without ``read`` the
    path itself is passed), ``model`` (a model spec the command builds like ``--task-model``), ``switch``
    (no value: ``True`` when given) or ``value`` (text, given to ``read`` when there is one).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    flag: str = Field(description="the flag, e.g. --preferences")
    keyword: str = Field(description="the constructor keyword the value is passed as")
    kind: Literal["file", "model", "switch", "value"]
    help: str = ""
    read: Callable[[str], Any] | None = Field(None, description="turns the flag's text into the value passed")
    metavar: str | None = None

    @field_validator("flag")
    @classmethod
    def _long_flag(cls, flag: str) -> str:
        if not flag.startswith("--") or len(flag) < 3 or " " in flag:
            raise ValueError(f"a command-line input's flag is a long option such as --my-file, not {flag!r}")
        return flag

    @property
    def dest(self) -> str:
        """Where argparse keeps the value (a name no option of the command itself uses)."""
        return "method_input" + self.flag.replace("-", "_")


def inputs_of(cls: Any) -> tuple[CLIInput, ...]:
    """The command-line inputs a teleprompter class declares (none when it declares nothing)."""
    return tuple(getattr(cls, "cli_inputs", ()) or ())


def add_method_options(parser: argparse.ArgumentParser, teleprompters: Mapping[str, Any]) -> None:
    """Each registered teleprompter's flags, once each, in one ``--help`` group per method (a flag
    several methods declare alike is shared; declared differently, it is a :class:`RegistryError`)."""
    owners: dict[str, list[tuple[str, CLIInput]]] = {}
    for name, cls in sorted(teleprompters.items()):
        for spec in inputs_of(cls):
            owners.setdefault(spec.flag, []).append((name, spec))
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for flag, declared in owners.items():
        kinds = {spec.kind for _, spec in declared}
        if len(kinds) > 1:
            described = ", ".join(f"{name} ({spec.kind})" for name, spec in declared)
            raise RegistryError(f"teleprompters declare {flag} as different kinds of input: {described}")
        names = tuple(name for name, _ in declared)
        if names not in groups:
            groups[names] = parser.add_argument_group(f"{' and '.join(names)} options",
                                                      f"inputs of --teleprompter {' / '.join(names)}")
        spec = declared[0][1]
        options: dict[str, Any] = {"dest": spec.dest, "help": spec.help or None, "default": None}
        if spec.kind == "switch":
            options.update(action="store_const", const=True)
        else:
            options["metavar"] = spec.metavar or {"file": "FILE", "model": "MODEL"}.get(spec.kind, "VALUE")
        try:
            groups[names].add_argument(spec.flag, **options)
        except argparse.ArgumentError as exc:
            raise RegistryError(f"teleprompter {names[0]!r} declares {flag}, which the cuecard command has already: {exc}") from None


def foreign_flags(cls: Any, args: argparse.Namespace, teleprompters: Mapping[str, Any]) -> list[str]:
    """Method flags given on the command line that ``cls`` does not declare."""
    own = {spec.flag for spec in inputs_of(cls)}
    given = {spec.flag for other in teleprompters.values() for spec in inputs_of(other)
             if getattr(args, spec.dest, None) is not None}
    return sorted(given - own)


def method_inputs(cls: Any, args: argparse.Namespace, build_model: Callable[[str], Any]) -> dict[str, Any]:
    """The constructor keywords of ``cls``'s inputs that were given, read as each declares."""
    values: dict[str, Any] = {}
    for spec in inputs_of(cls):
        text = getattr(args, spec.dest, None)
        if text is None:
            continue
        if spec.kind == "model":
            values[spec.keyword] = build_model(text)
        elif spec.kind == "switch":
            values[spec.keyword] = True
        else:
            values[spec.keyword] = spec.read(text) if spec.read is not None else text
    return values


__all__ = ["CLIInput", "add_method_options", "foreign_flags", "inputs_of", "method_inputs"]
