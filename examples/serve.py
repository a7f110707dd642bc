"""Serve a compiled program: load it (no user code needed for built-in programs) and answer reviews
typed on stdin, one per line.

    .venv/bin/python examples/compile_sentiment.py ape
    echo "The soup was cold." | .venv/bin/python examples/serve.py compiled/ape.json
"""

import sys

import cuecard
import dspy


def main(path: str) -> None:
    program = cuecard.load(path)  # JSON only; rebuilds cuecard's built-in programs, never unpickles
    block = cuecard.read_block(path)
    print(f"loaded {block.program_class} compiled by {block.teleprompter} (scores {block.scores})", file=sys.stderr)
    lm = cuecard.LM("local")
    with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
        for line in sys.stdin:
            if line.strip():
                print(program(review=line.strip()).sentiment, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "compiled/ape.json")
