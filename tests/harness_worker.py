"""The harness command on scripted models, for the Ctrl-C test: ``python harness_worker.py ARGS...``.

Runs ``benchmarks.harness``'s ``main`` with ARGS, but on the scripted "levels" task of ``test_harness``
and scripted task and prompt models whose task replies take 20 ms each (a local model's pace, scaled
down), so a signal can arrive in the middle of a compile.
"""

import importlib
import sys
import time

import cuecard
from cuecard.clients.testing import scripted_lm
from test_harness import level_reply, proposer_reply, scripted_task

from benchmarks.harness import __main__ as command

harness_run = importlib.import_module("benchmarks.harness.run")  # the package exports a function of that name


def slow_level_reply(messages):
    time.sleep(0.02)
    return level_reply(messages)


def scripted_models(config):
    cuecard.configure_cache(f"{config.out}/lm-cache")
    return harness_run.Models(
        scripted_lm(slow_level_reply, name="scripted/task", cache=True),
        scripted_lm(proposer_reply, name="scripted/prompt", cache=True),
    )


if __name__ == "__main__":
    harness_run.load_task = lambda spec, data, *rest: scripted_task()
    harness_run.Models.from_config = staticmethod(scripted_models)
    sys.exit(command.main(sys.argv[1:]))
