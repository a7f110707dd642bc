"""Overhead of cuecard + DSPy over raw llama-cpp-python on the same prompts.

For each of 50 distinct reviews, the same chat messages (as the plain adapter renders them for
``dspy.Predict("review -> sentiment")``) are answered twice, uncached: once through
``dspy.Predict`` on ``cuecard.LM("local")`` (adapter, DSPy call path, usage meter, parsing) and
once by calling ``Llama.create_chat_completion`` directly on the same loaded model with the same
options. The KV cache is reset before every call and the order alternates per prompt, so neither
side gains from the other's prefix. Prints the ratio of total wall times (goal: at most 1.10).

    .venv/bin/python benchmarks/lm_overhead.py [--prompts 50]
"""

from __future__ import annotations

import argparse
import logging
import time

import cuecard
import dspy
from cuecard.clients.local import load_model
from cuecard.datasets import SENTIMENT_INSTRUCTION, reviews

OPENERS = ["", "Honestly, ", "In short: ", "My verdict: ", "Update: "]


def prompts(count: int) -> list[str]:
    texts = [example.review for example in reviews()]
    return [OPENERS[i // len(texts) % len(OPENERS)] + texts[i % len(texts)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.ERROR)

    lm = cuecard.LM("local", cache=False)
    adapter = cuecard.PlainAdapter()
    signature = dspy.Signature("review -> sentiment", SENTIMENT_INSTRUCTION)
    predict = dspy.Predict(signature)
    loaded = load_model(lm.engine.model_path, n_ctx=lm.engine.n_ctx)
    options = {"temperature": 0.0, "max_tokens": lm.kwargs["max_tokens"], "stop": ["\n"]}

    def raw(review: str) -> str:
        messages = adapter.format(signature, [], {"review": review})
        with loaded.lock:
            return loaded.llama.create_chat_completion(messages=messages, **options)["choices"][0]["message"]["content"]

    def through_cuecard(review: str) -> str:
        with dspy.context(lm=lm, adapter=adapter):
            return predict(review=review).sentiment

    raw("warm-up"), through_cuecard("warm-up")
    totals = {"raw": 0.0, "cuecard": 0.0}
    agree = 0
    for index, review in enumerate(prompts(args.prompts)):
        order = [("raw", raw), ("cuecard", through_cuecard)]
        answers = {}
        for name, run in order if index % 2 == 0 else reversed(order):
            loaded.llama.reset()
            start = time.perf_counter()
            answers[name] = run(review)
            totals[name] += time.perf_counter() - start
        agree += answers["raw"].strip() == (answers["cuecard"] or "").strip()

    print(f"prompts: {args.prompts} (uncached, KV cache reset before each call)")
    print(f"raw llama-cpp-python: {totals['raw']:.2f} s  ({totals['raw'] / args.prompts * 1000:.0f} ms/call)")
    print(f"cuecard + DSPy:       {totals['cuecard']:.2f} s  ({totals['cuecard'] / args.prompts * 1000:.0f} ms/call)")
    print(f"identical answers:    {agree}/{args.prompts}")
    print(f"ratio cuecard/raw:    {totals['cuecard'] / totals['raw']:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
