"""A study run in its own process, for the resume test: ``python resume_worker.py STORAGE OUT [DELAY]``.

Scores 16 simulated candidates with successive halving through the real engine, a SQLite study and a
scripted LM that sleeps ``DELAY`` seconds per call; writes the winner and the (arm, item) pairs this
process evaluated to OUT as JSON.
"""

import json
import sys
import time

from cuecard.clients.testing import BernoulliTask
from cuecard.engine.evaluate import Evaluator
from cuecard.engine.policies import SuccessiveHalving
from cuecard.engine.study import Engine

ACCURACIES = [0.8] + [0.5 + 0.15 * i / 14 for i in range(15)]


def run(storage: str, delay: float) -> dict:
    task = BernoulliTask(ACCURACIES, pool_size=60, seed=11)
    reply = task.lm.engine.reply

    def slow_reply(messages):
        time.sleep(delay)
        return reply(messages)

    task.lm.engine.reply = slow_reply
    engine = Engine(Evaluator(task.program, task.metric, task_lm=task.lm), task.examples, name="resume",
                    storage=storage, identity={"policy": "successive-halving"}, progress=False)
    for arm in range(len(ACCURACIES)):
        engine.add_candidate(task.candidate(arm))
    allocation = engine.allocate(SuccessiveHalving(), budget=320)
    engine.finish()
    pairs = []
    for messages in task.lm.engine.requests:
        text = "\n".join(m["content"] for m in messages)
        arm = int(text.split("arm ")[1].split()[0].strip(".,"))
        item = int(text.split("item ")[1].split()[0].strip(".,"))
        pairs.append([arm, item])
    return {"best": allocation.best.arm, "ranking": [e.arm for e in allocation.ranking], "pairs": pairs}


if __name__ == "__main__":
    result = run(sys.argv[1], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    with open(sys.argv[2], "w") as handle:
        json.dump(result, handle)
