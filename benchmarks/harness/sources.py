"""The source files a method really runs: the modules it imports, followed from module to module.

A cell's fingerprint hashes these files, so a cell goes stale when any code under its method changes:
the method's own module, the shared modules it imports (``teleprompters/induction.py``, ``base.py``,
the engine in ``framework/``) and the harness file that runs it, and not when another method changes.

Imports are read from the source (function-level ones too), not from what happens to be loaded. A
name imported from a package (``from cuecard.teleprompters import PE2``) counts as the module that
defines it (``cuecard.teleprompters.pe2``), not the package's ``__init__`` and everything it imports;
a constant (``from .ape import FORWARD_TEMPLATE``) counts as the module it comes from.

Example:
    >>> names = [path.name for path in module_files(["cuecard.teleprompters.pe2"], within=["cuecard"])]
    >>> {"pe2.py", "induction.py", "base.py", "study.py"} <= set(names), "opro.py" in names
    (True, False)
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path


def _inside(name: str, within: Sequence[str]) -> bool:
    return any(name == top or name.startswith(top + ".") for top in within)


@functools.cache
def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # the parent is not a package
        return False


def _defining_module(package: str, name: str) -> str:
    """The module ``from package import name`` really reads: a submodule, the module defining a class or
    function, or ``package`` itself (for a constant)."""
    if _is_module(f"{package}.{name}"):
        return f"{package}.{name}"
    defined_in = getattr(getattr(importlib.import_module(package), name, None), "__module__", None)
    return defined_in if isinstance(defined_in, str) and _is_module(defined_in) and defined_in != "builtins" else package


def imported_modules(module: str) -> Iterable[str]:
    """Every module named by an import statement in ``module``'s source, relative imports resolved."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return
    if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):  # a short path cuecard keeps for
        spec = importlib.import_module(module).__spec__  # users: read as the module it names
    package = spec.name if spec.submodule_search_locations is not None else spec.name.rpartition(".")[0]
    for node in ast.walk(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            for alias in node.names:
                yield f"{base}.{alias.name}" if alias.name != "*" else base  # resolved by module_files


def module_files(roots: Sequence[str], within: Sequence[str]) -> list[Path]:
    """The source files of ``roots`` and of every module they import, transitively, inside the packages
    ``within`` (third-party libraries are left out: their versions are identified elsewhere).

    The list is worked out once per process (the files' contents are read by whoever hashes them)."""
    return list(_module_files(tuple(roots), tuple(within)))


@functools.cache
def _module_files(roots: tuple[str, ...], within: tuple[str, ...]) -> tuple[Path, ...]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imported_modules(name):
            if not _inside(imported, within):
                continue
            package, _, attribute = imported.rpartition(".")
            target = imported if _is_module(imported) or not package else _defining_module(package, attribute)
            if _inside(target, within) and target not in seen:
                todo.append(target)
    files = {Path(spec.origin) for name in seen if (spec := importlib.util.find_spec(name)) is not None and spec.origin}
    return tuple(sorted(path for path in files if path.suffix == ".py"))


__all__ = ["imported_modules", "module_files"]
