"""The benchmarks' names for the models cuecard can fetch (``cuecard models``): a thin wrapper.

The fetcher lives in the package (``cuecard.clients.models``, ``cuecard models pull NAME``); this file keeps
the benchmarks' short names (``qwen1.5b``, ``qwen0.5b``, aliases of ``qwen2.5-coder-1.5b`` and
``qwen2.5-coder-0.5b``) and its old command line working:

    .venv/bin/python benchmarks/models.py fetch qwen1.5b qwen0.5b
    .venv/bin/python benchmarks/models.py path qwen1.5b
    .venv/bin/python benchmarks/models.py list
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cuecard.clients.models import (  # noqa: F401 - re-exported for the benchmarks
    MODELS,
    ModelFetchError,
    ModelNotFetchedError,
    fetched_path,
    find_model,
    listing,
    pull,
)


def resolve_model_spec(spec: str) -> str:
    """A fetchable model's name or alias -> its cached GGUF path; any other model spec unchanged.

    Raises:
        ModelNotFetchedError: ``spec`` names a fetchable model that has not been pulled.

    Example:
        >>> resolve_model_spec("local")
        'local'
    """
    return str(fetched_path(spec)) if find_model(spec) is not None else spec


def fetch(name: str) -> Path:
    """Pull model ``name`` (a name or an alias) into the cache; see :func:`cuecard.clients.models.pull`."""
    return pull(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/models.py",
                                     description="Fetch the models the benchmarks name (same as `cuecard models`).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch_cmd = commands.add_parser("fetch", help="download, join and verify models (`cuecard models pull`)")
    fetch_cmd.add_argument("names", nargs="*", default=["qwen1.5b"], metavar="NAME")
    path_cmd = commands.add_parser("path", help="print a fetched model's path (exit 1 if it is not fetched)")
    path_cmd.add_argument("name", metavar="NAME")
    commands.add_parser("list", help="the fetchable models and whether each is fetched")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for name in dict.fromkeys(args.names):
                fetch(name)
        elif args.command == "path":
            print(fetched_path(args.name))
        else:
            print("\n".join(listing()))
    except (ModelFetchError, ModelNotFetchedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the model being fetched was not kept; run the same command again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
