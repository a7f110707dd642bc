"""BPO's evaluation: win / tie / lose and delta-WR of a BPO-compiled rewriter against the original prompts.

Compiles ``Respond`` with BPO on the first N prompts of ../shared/data/bpo/vicuna_eval.jsonl (rewriter
demonstrations constructed from bpo_test.json records), then judges the compiled program's answers
against the untouched program's answers on the same N prompts. Every model is configurable: the
embedded model by default, or "local:/path/model.gguf", or a litellm model string.

Every verdict is asked twice, with the two answers in both orders: the table gives win / tie / lose
for the seeded order, for the order swapped, and for both together (a win or a loss only when the
two agree, as BPO's compile judges by default, ``--one-order`` for the old way), and how often the
verdict survives the swap (a judge that prefers a position more than an answer shows up there).

    .venv/bin/python benchmarks/bpo_winrate.py --prompts 20
    .venv/bin/python benchmarks/bpo_winrate.py --prompts 30 --rewriter-model qwen1.5b --judge-model qwen1.5b
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuecard  # noqa: E402
import dspy  # noqa: E402
from cuecard.clients.adapter import adapter_for  # noqa: E402
from cuecard.judge import PairwiseJudge, Verdict, WinRate, agreed  # noqa: E402
from cuecard.programs import Respond  # noqa: E402
from cuecard.teleprompters import BPO  # noqa: E402

from benchmarks.models import resolve_model_spec  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bpo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=20, help="vicuna prompts to compile on and judge (default 20)")
    parser.add_argument("--records", type=int, default=4, help="preference records for data construction (default 4)")
    parser.add_argument("--target-model", default="local", help="the model that answers the prompts: 'local' (the embedded model), a .gguf path, a name from "
                        "benchmarks/models.py (qwen1.5b), or a litellm model string")
    parser.add_argument("--rewriter-model", default="local", help="the model that rewrites the prompts (default: local)")
    parser.add_argument("--judge-model", default="local", help="the pairwise judge (default: local); a stronger one gives a truer verdict")
    parser.add_argument("--max-tokens", type=int, default=64, help="cap on every generated reply (default 64)")
    parser.add_argument("--one-order", action="store_true", help="the compile's judge asks one seeded A/B order per prompt "
                        "(BPO's judge_both_orders=False), not both")
    parser.add_argument("--seed", type=int, default=0, help="seed of the compile: demo sampling and the judge's A/B position swaps (default 0)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"benchmark data not found at {DATA}", file=sys.stderr)
        return 2
    models: dict[str, dspy.LM] = {}

    def model(spec: str) -> dspy.LM:
        if spec not in models:
            models[spec] = cuecard.LM(resolve_model_spec(spec), max_tokens=args.max_tokens)
        return models[spec]

    target, rewriter, judge_lm = model(args.target_model), model(args.rewriter_model), model(args.judge_model)
    rows = [json.loads(line) for line in (DATA / "vicuna_eval.jsonl").read_text().splitlines()][: args.prompts]
    requests = [dspy.Example(request=row["text"]).with_inputs("request") for row in rows]
    records = json.loads((DATA / "bpo_test.json").read_text())[: args.records]
    started = time.perf_counter()
    bpo = BPO(task_lm=target, prompt_lm=rewriter, judge_lm=judge_lm, preferences=records, storage=":memory:",
              seed=args.seed, demo_sets=2, demos_per_set=1, max_construction_tokens=args.max_tokens * 2,
              judge_max_tokens=args.max_tokens, judge_both_orders=not args.one_order)
    compiled = bpo.compile(Respond(), trainset=requests)
    report = compiled.cuecard_report
    compile_seconds = time.perf_counter() - started
    seeded, swapped = judge_both_orders(compiled, requests, target, judge_lm, args)
    step = report.history[-1]
    print(f"target {args.target_model}, rewriter {args.rewriter_model}, judge {args.judge_model}; {len(requests)} prompts")
    print(f"constructed pairs: {step['usable_pairs']} of {len(records)} records; candidates {len(report.candidates)}; "
          f"winner: {report.best.instructions[next(k for k in report.best.instructions if k.startswith('rewrite_'))][:80]!r} "
          f"with {report.best.meta.get('demos', 0)} demos")
    print(f"compile: {report.usage.calls} LM calls ({report.usage.model_calls} reached a model), {compile_seconds:.0f} s")
    print("\n| order | win | tie | lose | delta-WR | unreadable |\n|---|---|---|---|---|---|")
    both = [Verdict(item=a.item, outcome=agreed([a.outcome, b.outcome]), swapped=a.swapped, parsed=a.parsed and b.parsed,
                    orders=[a.outcome, b.outcome]) for a, b in zip(seeded, swapped, strict=True)]
    for name, verdicts in (("seeded", seeded), ("swapped", swapped), ("both orders (counted only when they agree)", both)):
        rate = WinRate.of(verdicts)
        print(f"| {name} | {rate.win} | {rate.tie} | {rate.lose} | {rate.delta_wr:+.2f} | {rate.unparsed} |")
    same = sum(a.outcome == b.outcome for a, b in zip(seeded, swapped, strict=True))
    print(f"\nthe verdict survives swapping A and B on {same} of {len(seeded)} prompts ({same / len(seeded):.0%})")
    print(f"judge verdicts in the compile ({'one order' if args.one_order else 'both orders'}): {len(bpo.judge.verdicts)}, "
          f"unreadable {sum(not v.parsed for v in bpo.judge.verdicts)}, orders disagreed {sum(not v.consistent for v in bpo.judge.verdicts)}")
    return 0


class SwappedJudge(PairwiseJudge):
    """The same judge with every item's A/B order reversed."""

    def swapped(self, item: str) -> bool:
        return not super().swapped(item)


def judge_both_orders(compiled: dspy.Module, requests: list[dspy.Example], target: dspy.LM, judge_lm: dspy.LM,
                      args: argparse.Namespace) -> tuple[list[Verdict], list[Verdict]]:
    """Each prompt's two answers (rewritten prompt, original prompt) judged in the seeded order and reversed."""
    judges = (PairwiseJudge(judge_lm, seed=args.seed, max_tokens=args.max_tokens),
              SwappedJudge(judge_lm, seed=args.seed, max_tokens=args.max_tokens))
    verdicts: tuple[list[Verdict], list[Verdict]] = ([], [])
    original = Respond()
    for example in requests:
        with dspy.context(lm=target, adapter=adapter_for(target)):
            ours, theirs = str(compiled(request=example.request).response), str(original(request=example.request).response)
        for judge, kept in zip(judges, verdicts, strict=True):
            kept.append(judge.compare(example.request, ours, theirs, item=example.request))
    return verdicts


if __name__ == "__main__":
    sys.exit(main())
