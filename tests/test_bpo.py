"""BPO: the pairwise judge (positions, parsing, win rates), data construction, the search over
rewriters, bad input; end to end on the embedded model with save and reload."""

import json
import re
import subprocess
import sys

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.judge import PairwiseJudge, WinRate, parse_verdict
from cuecard.programs import Respond, Rewritten
from cuecard.teleprompters import BPO
from cuecard.teleprompters.bpo import parse_construction, win_rate

PROMPTS = [f"Tell me about topic {i}." for i in range(12)]


def prompts():
    return [dspy.Example(request=p).with_inputs("request") for p in PROMPTS]


def answers_in(messages):
    text = messages[-1]["content"]
    a = re.search(r"\[Answer of assistant A\]\n(.*?)\n\[End of answer A\]", text, re.S).group(1)
    b = re.search(r"\[Answer of assistant B\]\n(.*?)\n\[End of answer B\]", text, re.S).group(1)
    return a, b


def detail_judge(messages):
    """Prefers the answer that says "detailed"; cannot read topic 11 at all."""
    if "topic 11" in messages[-1]["content"]:
        return "I really cannot say."
    a, b = answers_in(messages)
    if ("detailed" in a) == ("detailed" in b):
        return "Both are alike. [[C]]"
    return "A is more helpful. [[A]]" if "detailed" in a else "B covers more. [[B]]"


def target(messages):
    text = messages[-1]["content"]
    return "A detailed answer with steps." if "DETAILED" in text else "A short answer."


def rewriter(messages):
    text = messages[-1]["content"]
    if "Good response:" in text:  # data construction
        prompt = re.search(r"User prompt:\n(.*?)\n\nGood response", text, re.S).group(1)
        if "huge" in prompt:
            return "Comparison: the good one is longer.\nOptimized prompt: " + "very " * 200 + "[END]"
        return f"Comparison: the good one has steps.\nOptimized prompt: {prompt} Answer in DETAILED steps.\n[END]"
    request = re.search(r"Request: (.*)", text).group(1)
    if "Answer in DETAILED steps" in "\n".join(m["content"] for m in messages[:-1]):  # the demos show the way
        return f"{request} Answer in DETAILED steps."
    return request


# ---- the judge ------------------------------------------------------------------------------------
def test_parse_verdict_is_lenient_and_admits_failure():
    assert parse_verdict("... so [[A]] wins. Final: [[B]]") == "B"
    assert parse_verdict("[[C]]") == "C"
    assert parse_verdict("Assistant B is clearly better here.") == "B"
    assert parse_verdict("It is a tie.") == "C"
    assert parse_verdict("A") == "A"
    assert parse_verdict("I cannot decide.") is None


def test_positions_are_swapped_per_item_as_seeded_and_verdicts_are_from_our_side():
    judge = PairwiseJudge(scripted_lm(detail_judge), seed=3)
    items = [f"item {i}" for i in range(40)]
    flags = [judge.swapped(item) for item in items]
    assert flags == [PairwiseJudge(scripted_lm(detail_judge), seed=3).swapped(item) for item in items]
    assert flags != [PairwiseJudge(scripted_lm(detail_judge), seed=4).swapped(item) for item in items]
    assert 10 < sum(flags) < 30
    for item, swapped in zip(items, flags, strict=True):
        verdict = judge.compare("Tell me about topic 1.", "detailed answer", "short", item=item)
        assert verdict.outcome == "win" and verdict.swapped == swapped
    # the answer under test really sat in the swapped slot
    first_swapped = flags.index(True)
    a, b = answers_in(judge.lm.engine.requests[first_swapped])
    assert (a, b) == ("short", "detailed answer")


def test_win_tie_lose_and_delta_wr_with_ties_and_unreadable_verdicts():
    judge = PairwiseJudge(scripted_lm(detail_judge), seed=0)
    cases = [("topic 1", "detailed", "short", "win"), ("topic 2", "short", "detailed", "lose"),
             ("topic 3", "short", "short", "tie"), ("topic 4", "detailed", "short", "win"),
             ("topic 11", "detailed", "short", "tie")]
    verdicts = [judge.compare(q, ours, theirs, item=q) for q, ours, theirs, _ in cases]
    assert [v.outcome for v in verdicts] == [expected for *_, expected in cases]
    rate = WinRate.of(verdicts)
    assert (rate.win, rate.tie, rate.lose, rate.unparsed, rate.n) == (2, 2, 1, 1, 5)
    assert rate.delta_wr == pytest.approx((2 - 1) / 5)
    assert judge.win_rate == rate


def test_judging_both_orders_turns_a_position_bias_into_ties_and_keeps_a_real_preference():
    first_slot_judge = PairwiseJudge(scripted_lm(lambda m: "The first one. [[A]]"), seed=0, both_orders=True)
    items = [f"topic {i}" for i in range(8)]
    biased = [first_slot_judge.compare(q, "detailed", "short", item=q) for q in items]
    assert {v.outcome for v in biased} == {"tie"} and not any(v.consistent for v in biased)
    assert WinRate.of(biased).inconsistent == len(items) and len(first_slot_judge.lm.engine.requests) == 2 * len(items)
    one_order = PairwiseJudge(scripted_lm(lambda m: "The first one. [[A]]"), seed=0)
    assert {v.outcome for v in (one_order.compare(q, "detailed", "short", item=q) for q in items)} == {"win", "lose"}

    fair = PairwiseJudge(scripted_lm(detail_judge), seed=0, both_orders=True)
    verdict = fair.compare("topic 1", "detailed", "short", item="topic 1")
    assert (verdict.outcome, verdict.orders, verdict.consistent) == ("win", ["win", "win"], True)
    a_first, b_first = (answers_in(request) for request in fair.lm.engine.requests)
    assert a_first == b_first[::-1], "the second call did not swap the answers"
    assert fair.compare("topic 2", "short", "detailed", item="topic 2").outcome == "lose"


def test_parse_construction():
    comparison, optimized = parse_construction("Detailed Comparison Result: B lacks steps.\nOptimized Instruction: Do X step by step. [END]")
    assert comparison == "B lacks steps." and optimized == "Do X step by step."
    assert parse_construction("no structure at all") == ("", None)


# ---- the teleprompter ----------------------------------------------------------------------------
def bpo(**config):
    return BPO(task_lm=scripted_lm(target), prompt_lm=scripted_lm(rewriter, name="scripted/rewriter"),
               judge_lm=scripted_lm(detail_judge, name="scripted/judge"), storage=":memory:", progress=False, **config)


RECORDS = [
    {"prompt": "Explain tides.", "good_res": "Tides come from the moon, in steps: ...", "bad_res": "Water."},
    {"prompt": "A huge request.", "good_res": "ok", "bad_res": "no"},
    {"prompt": "Describe rain."},  # no responses: the target answers twice and the judge ranks them
]


def test_bpo_constructs_pairs_and_picks_the_rewriter_that_wins(tmp_path):
    teleprompter = bpo(preferences=RECORDS, demo_sets=1, demos_per_set=1, export_pairs=str(tmp_path / "pairs.jsonl"))
    compiled = teleprompter.compile(Respond(), trainset=prompts())
    report = compiled.cuecard_report
    # construction: the huge rewrite is dropped by the length rule, the others become pairs
    assert report.dropped == {"construction: extreme length ratio": 1}
    exported = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in exported] == ["Explain tides.", "Describe rain."]
    assert all(p["optimized_prompt"].endswith("Answer in DETAILED steps.") for p in exported)
    # candidates: instructions x (no demos, one demo set); the winner carries the demos and wins every
    # readable dev prompt against the original prompts' answers
    assert {c.meta["demos"] for c in report.candidates if c.origin == "bpo"} == {0, 1}
    assert report.best.meta["demos"] == 1
    dev = [e for e in prompts() if e.request in {p for p in PROMPTS}][: report.dev_size]
    step = report.history[-1]
    assert step["winner_lose"] == 0 and step["winner_win"] >= report.dev_size - 1
    assert any("delta-WR" in note for note in report.notes)
    # the compiled program: the rewriter in front, the target program untouched
    assert isinstance(compiled, Rewritten)
    assert compiled.program.respond.signature.instructions == Respond().respond.signature.instructions
    with dspy.context(lm=teleprompter.task_lm, adapter=cuecard.PlainAdapter()):
        assert compiled(request="Tell me about topic 2.").response == "A detailed answer with steps."
        assert Respond()(request="Tell me about topic 2.").response == "A short answer."
    rate = win_rate(compiled, Respond(), dev, PairwiseJudge(scripted_lm(detail_judge), seed=1), question="request",
                    answer="response", lm=teleprompter.task_lm)
    assert rate.lose == 0 and rate.win == len([e for e in dev if "topic 11" not in e.request])


def test_the_cap_met_inside_the_judge_stops_the_search_and_fails_no_example():
    from cuecard.engine.study import Limits

    for cap in range(24, 64, 3):
        report = bpo(preferences=[{"prompt": "Tell me about topic 1."}], limits=Limits(max_calls=cap)).compile(
            Respond(), trainset=prompts()).cuecard_report
        assert report.usage.calls <= cap and report.capped, cap
        assert report.failures == {}, f"cap {cap}: the cap was stored as a failure: {report.failures}"


def test_iterative_and_aggressive_inference():
    calls = []

    def counting_rewriter(messages):
        calls.append(messages[-1]["content"])
        request = re.search(r"Request: (.*)", messages[-1]["content"]).group(1)
        return request + " DETAILED" if len(calls) % 3 == 0 else request + " more"

    program = Rewritten(Respond(), passes=3)
    program.rewriter_lm = scripted_lm(counting_rewriter, name="scripted/counting")
    with dspy.context(lm=scripted_lm(target), adapter=cuecard.PlainAdapter()):
        program(request="Hi.")
    seen = [re.search(r"Request: (.*)", call).group(1) for call in calls]
    assert seen == ["Hi.", "Hi. more", "Hi. more more"]  # each pass rewrites the previous rewrite

    calls.clear()
    aggressive = Rewritten(Respond(), samples=3)
    aggressive.rewriter_lm = scripted_lm(counting_rewriter, name="scripted/counting2")
    aggressive.judge = PairwiseJudge(scripted_lm(detail_judge), seed=0)
    with dspy.context(lm=scripted_lm(target), adapter=cuecard.PlainAdapter()):
        answer = aggressive(request="Tell me about topic 5.")
    assert len(calls) == 3  # three sampled rewrites; only the third asks for detail
    assert answer.response == "A detailed answer with steps."  # the judge kept the best answer


def test_bad_input_and_empty_rewrites():
    with pytest.raises(ValueError, match=r"preferences\[1\] has no 'prompt'"):
        bpo(preferences=[{"prompt": "ok", "good_res": "a", "bad_res": "b"}, {"text": "x"}]).compile(Respond(), trainset=prompts())
    with pytest.raises(ValueError, match=r"preferences\[0\] has one of 'good_res'/'bad_res'"):
        bpo(preferences=[{"prompt": "ok", "good_res": "a"}]).compile(Respond(), trainset=prompts())
    with pytest.raises(ValueError, match="min_length_ratio"):
        bpo(min_length_ratio=3, max_length_ratio=2)
    with pytest.raises(ValueError, match=r"judge's user prompt lacks \['\{b\}'\]"):
        bpo(judge_user="Q: {question} A: {a}")

    program = Rewritten(Respond())
    program.rewriter_lm = scripted_lm(lambda m: "   ", name="scripted/silent")
    with dspy.context(lm=scripted_lm(target), adapter=cuecard.PlainAdapter()):
        assert program(request="Keep me.").response == "A short answer."
    assert program.kept_original == 1


# ---- the real model ------------------------------------------------------------------------------
RELOAD = """
import json, sys, cuecard, dspy
program = cuecard.load(sys.argv[1])
lm = cuecard.LM("local", max_tokens=48)
with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
    print(json.dumps([program(request=p).response for p in json.loads(sys.argv[2])]))
"""


@pytest.mark.model
def test_bpo_end_to_end_with_the_embedded_model_as_rewriter_target_and_judge(shared_data, tmp_path):
    lm = cuecard.LM("local", max_tokens=48)  # short answers keep the whole path affordable on CPU
    rows = [json.loads(line) for line in (shared_data / "bpo" / "vicuna_eval.jsonl").read_text().splitlines()][:6]
    requests = [dspy.Example(request=row["text"]).with_inputs("request") for row in rows]
    records = json.loads((shared_data / "bpo" / "bpo_test.json").read_text())[:3]
    teleprompter = BPO(task_lm=lm, prompt_lm=lm, judge_lm=lm, preferences=records, storage=":memory:", progress=False,
                       max_dev=3, demo_sets=1, demos_per_set=1, instructions=[], max_construction_tokens=120,
                       judge_max_tokens=48)
    compiled = teleprompter.compile(Respond(), trainset=requests)
    report = compiled.cuecard_report
    assert len(report.candidates) >= 1 and report.evaluations > 0
    step = report.history[-1]
    assert step["winner_win"] + step["winner_tie"] + step["winner_lose"] == report.best.dev_examples

    rate = win_rate(compiled, Respond(), requests[:4], teleprompter.judge, question="request", answer="response", lm=lm)
    print(f"\nBPO on {rate.n} vicuna prompts (embedded model as rewriter, target and judge): {rate}; "
          f"pairs {step['usable_pairs']}/{len(records)}; compile LM calls {report.usage.calls}")
    assert rate.n == 4

    path = cuecard.save(compiled, tmp_path / "bpo.json")
    check = [row["text"] for row in rows[:1]]
    with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
        compiled.rewriter_lm = None  # the reloaded program rewrites with the LM in context, as here
        expected = [compiled(request=p).response for p in check]
    result = subprocess.run([sys.executable, "-c", RELOAD, str(path), json.dumps(check)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
