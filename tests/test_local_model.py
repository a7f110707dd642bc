"""The embedded SmolLM2 model end to end: answers, cache, determinism, sampling, log-prob scoring."""

import re

import cuecard
import dspy
import pytest
from cuecard.datasets import reviews
from cuecard.metrics import one_of_labels

pytestmark = pytest.mark.model

GOOD_INSTRUCTION = cuecard.datasets.SENTIMENT_INSTRUCTION


def accuracy(lm, instruction, examples):
    """Share of reviews whose answer names exactly one label, the gold one."""
    metric = one_of_labels(["positive", "negative"], field="sentiment")
    predict = dspy.Predict(dspy.Signature("review -> sentiment", instruction))
    with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
        return sum(bool(metric(example, predict(review=example.review))) for example in examples) / len(examples)


def test_sentiment_with_a_good_instruction_reaches_65_percent(local_lm):
    score = accuracy(local_lm, GOOD_INSTRUCTION, reviews()[:20])
    assert score >= 0.65, f"accuracy {score:.2f} with {GOOD_INSTRUCTION!r}"


def test_repeated_call_is_a_cache_hit_with_no_model_call(local_lm, fresh_cache):
    before = local_lm.meter.usage
    predict = dspy.Predict(dspy.Signature("review -> sentiment", GOOD_INSTRUCTION))
    with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
        first = predict(review="The food was cold and the waiter rude.").sentiment
        second = predict(review="The food was cold and the waiter rude.").sentiment
    used = local_lm.meter.usage - before
    assert first == second
    assert used.calls == 2 and used.model_calls == 1 and used.cache_hits == 1


def test_temperature_zero_is_deterministic(local_lm):
    outputs = {local_lm("Name a colour.", cache=False)[0] for _ in range(3)}
    assert len(outputs) == 1


def test_samples_are_distinct_reproducible_and_cached_one_by_one(local_lm, fresh_cache):
    prompt = "Write one sentence about the sea."
    samples = [local_lm(prompt, max_tokens=24, **cuecard.sampling_kwargs(0, i, 1.0))[0] for i in range(3)]
    assert len(set(samples)) == 3
    before = local_lm.meter.usage
    again = [local_lm(prompt, max_tokens=24, **cuecard.sampling_kwargs(0, i, 1.0))[0] for i in range(3)]
    used = local_lm.meter.usage - before
    assert again == samples
    assert used.cache_hits == 3 and used.model_calls == 0
    fresh = [local_lm(prompt, max_tokens=24, cache=False, **cuecard.sampling_kwargs(0, i, 1.0))[0] for i in range(3)]
    assert fresh == samples, "the same seed must give the same samples without the cache"


def test_log_prob_prefers_the_gold_label(local_lm):
    """Scores the answer in the form the model gives it on this layout ("The review is negative.")."""
    adapter = cuecard.PlainAdapter()
    signature = dspy.Signature("review -> sentiment", GOOD_INSTRUCTION)
    agree = 0
    examples = reviews()[:10]
    for example in examples:
        messages = adapter.format(signature, [], {"review": example.review})
        other = "negative" if example.sentiment == "positive" else "positive"
        gold = cuecard.score_logprob(local_lm, messages, f"The review is {example.sentiment}.")
        wrong = cuecard.score_logprob(local_lm, messages, f"The review is {other}.")
        agree += gold.total > wrong.total
    assert agree >= 7, f"gold label scored higher in only {agree} of {len(examples)}"


def test_log_prob_is_a_real_probability(local_lm):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    likely = cuecard.score_logprob(local_lm, messages, "Paris")
    unlikely = cuecard.score_logprob(local_lm, messages, "Banana")
    assert likely.total < 0 and unlikely.total < 0
    assert likely.total > unlikely.total
    assert likely.mean == pytest.approx(likely.total / likely.tokens)


def test_log_prob_scores_are_cached_and_metered(local_lm, fresh_cache):
    before = local_lm.meter.usage
    first = cuecard.score_logprob(local_lm, "The sky is", " blue")
    second = cuecard.score_logprob(local_lm, "The sky is", " blue")
    used = local_lm.meter.usage - before
    assert first.total == second.total
    assert used.calls == 2 and used.cache_hits == 1


def test_any_gguf_by_path_uses_its_own_chat_template():
    lm = cuecard.LM(f"local:{cuecard.embedded_model_path()}")
    answer = lm("Reply with the word hello.", cache=False)[0]
    assert answer.strip()
    assert "<|im_start|>" not in answer


def test_quickstart_runs_offline_and_answers():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "no_proxy": "*"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy on 20 hand-written reviews" in result.stdout
    answers = re.findall(r"answer='([^']*)'", result.stdout)
    assert len(answers) == 20 and set(answers) <= {"positive", "negative"}, answers  # labels, under the grammar


def test_a_saved_program_answers_the_same_after_reload_in_a_new_process(local_lm, tmp_path, answers_after_reload):
    program = dspy.Predict(dspy.Signature("review -> sentiment", GOOD_INSTRUCTION))
    path = tmp_path / "program.json"
    program.save(str(path))
    reviews_ = [example.review for example in reviews()[:2]]
    with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
        expected = [program(review=r).sentiment for r in reviews_]
    reloaded = answers_after_reload(path, "review -> sentiment", [{"review": r} for r in reviews_])
    assert [answer["sentiment"] for answer in reloaded] == expected


def test_under_the_grammar_a_typed_answer_is_always_a_valid_value(local_lm, fresh_cache):
    """An instruction that asks for anything but a label: the grammar still allows nothing but one."""
    from typing import Literal

    labelled = dspy.Signature("review -> sentiment", "Write a short poem about the review.").with_updated_fields(
        "sentiment", type_=Literal["positive", "negative"]
    )
    counted = dspy.Signature("review -> words", "How long is the review?").with_updated_fields("words", type_=int)
    free, constrained = cuecard.PlainAdapter(typed_answers=False), cuecard.PlainAdapter()
    examples = reviews()[:3]
    with dspy.context(lm=local_lm, adapter=free):
        unconstrained = [dspy.Predict(labelled)(review=e.review).sentiment for e in examples]
    with dspy.context(lm=local_lm, adapter=constrained):
        labels = [dspy.Predict(labelled)(review=e.review).sentiment for e in examples]
        counts = [dspy.Predict(counted)(review=e.review).words for e in examples]
    assert set(labels) <= {"positive", "negative"}, labels
    assert all(isinstance(count, int) for count in counts), counts
    assert unconstrained != labels, "the grammar changed nothing: is it reaching llama.cpp?"
