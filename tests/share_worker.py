"""One of several processes sharing a study: ``python share_worker.py STORAGE OUT GO_FILE DELAY``.

Adds 6 simulated candidates and scores them all on 24 examples (full evaluation) through the real
engine on a shared SQLite storage, with a scripted LM that sleeps DELAY seconds per call. It signals
``OUT.ready`` once imported, starts when GO_FILE exists, and writes the ranking and the (arm, item)
pairs this process evaluated itself to OUT as JSON.
"""

import json
import sys
import time
from pathlib import Path

from cuecard.clients.testing import BernoulliTask
from cuecard.engine.evaluate import Evaluator
from cuecard.engine.policies import FullEvaluation
from cuecard.engine.study import Engine

ACCURACIES = [0.3, 0.9, 0.5, 0.7, 0.4, 0.6]


def run(storage: str, delay: float) -> dict:
    task = BernoulliTask(ACCURACIES, pool_size=24, seed=5)
    reply = task.lm.engine.reply

    def slow_reply(messages):
        time.sleep(delay)
        return reply(messages)

    task.lm.engine.reply = slow_reply
    engine = Engine(Evaluator(task.program, task.metric, task_lm=task.lm), task.examples, name="shared",
                    storage=storage, identity={"policy": "full"}, progress=False)
    arms = [engine.add_candidate(task.candidate(arm)) for arm in range(len(ACCURACIES))]
    allocation = engine.allocate(FullEvaluation(), arms)
    engine.finish()
    pairs = []
    for messages in task.lm.engine.requests:
        text = "\n".join(m["content"] for m in messages)
        pairs.append([int(text.split("arm ")[1].split()[0].strip(".,")), int(text.split("item ")[1].split()[0].strip(".,"))])
    ranking = [engine.candidates[e.arm].instructions["self"] for e in allocation.ranking]
    return {"ranking": ranking, "means": [e.mean for e in allocation.ranking], "pairs": pairs}


if __name__ == "__main__":
    storage, out, go, delay = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    Path(f"{out}.ready").touch()
    while not go.exists():
        time.sleep(0.05)
    out.write_text(json.dumps(run(storage, delay)))
