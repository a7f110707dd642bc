"""Teleprompters and programs found by name through entry points, ours and third parties' alike.

A package adds a teleprompter to the ``cuecard`` command, the listing and the benchmark harness
with one line in its ``pyproject.toml``::

    [project.entry-points."cuecard.teleprompters"]
    mymethod = "mypackage.mymethod:MyMethod"

The class subclasses :class:`cuecard.teleprompters.Teleprompter` and declares ``name``, ``Config``
(its settings), ``default_policy``, ``needs_labels`` and a one-line ``summary``. Programs are found
the same way in the group ``cuecard.programs``; a program class builds itself from the command's
options with ``from_options(**options)``, and :func:`cuecard.load` rebuilds only registered programs.
Allocation policies (``--policy``, :func:`cuecard.engine.policies.make_policy`) are found in the group
``cuecard.policies``, each under its class's ``name``. A teleprompter's own command-line inputs are
declared in its ``cli_inputs`` (see :mod:`cuecard.command.cli_inputs`).

``framework/`` (this package) imports nothing from ``cuecard.teleprompters`` or ``cuecard.programs``:
they stand on it, and it finds them only through these entry points.

Example:
    >>> sorted(teleprompters())[:3]
    ['ape', 'bpo', 'opro']
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from .errors import CuecardError

TELEPROMPTERS = "cuecard.teleprompters"
PROGRAMS = "cuecard.programs"
POLICIES = "cuecard.policies"


class RegistryError(CuecardError, LookupError):
    """A teleprompter or program name nothing is registered under, or an entry point that cannot load."""


def _load(group: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for entry in importlib.metadata.entry_points(group=group):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken third-party entry point must not hide the others
            raise RegistryError(f"the {group} entry point {entry.name!r} ({entry.value}) cannot be loaded: {exc}") from exc
    return found


def teleprompters() -> dict[str, Any]:
    """Every registered teleprompter class, by name."""
    return _load(TELEPROMPTERS)


def programs() -> dict[str, Any]:
    """Every registered program class, by name (the names ``--program`` takes)."""
    return _load(PROGRAMS)


def policies() -> dict[str, Any]:
    """Every registered allocation policy class, by name (the names ``--policy`` takes).

    Example:
        >>> policies()["full"].__name__
        'FullEvaluation'
    """
    return _load(POLICIES)


def teleprompter(name: str) -> Any:
    """The teleprompter class registered as ``name``; :class:`RegistryError` names the known ones."""
    found = teleprompters()
    if name not in found:
        raise RegistryError(f"no teleprompter {name!r}; registered: {', '.join(sorted(found))}")
    return found[name]


def program_class(class_name: str) -> Any | None:
    """The registered program class whose class name is ``class_name`` (what a saved file records), or None."""
    return next((cls for cls in programs().values() if cls.__name__ == class_name), None)


__all__ = [
    "POLICIES",
    "PROGRAMS",
    "TELEPROMPTERS",
    "RegistryError",
    "policies",
    "program_class",
    "programs",
    "teleprompter",
    "teleprompters",
]
