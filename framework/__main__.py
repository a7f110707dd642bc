"""``python -m cuecard ...`` runs the ``cuecard`` command."""

import sys

from .command.cli import main

sys.exit(main())
