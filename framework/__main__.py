"""``python -m cuecard ...`` runs the ``cuecard`` command."""

from .command.cli import entry

entry()
