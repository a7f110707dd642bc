"""APE: induction modes, hygiene, bad input, multi-stage cost, warm-cache rerun, quality, save/load."""

import json
import re

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.engine.policies import FullEvaluation
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE
from cuecard.teleprompters.ape import BLANK, DEMOS
from sentiment_cases import REVIEWS, Pipeline, level_task, load_ii, sentiment_program


def toy_train(n=12):
    return cuecard.datasets.reviews()[:n]




# ---- logic, with a scripted prompt model --------------------------------------------------------
def scripted_proposer(replies):
    queue = list(replies)
    return scripted_lm(lambda messages: queue.pop(0) if queue else "Say positive or negative.", name="scripted/proposer")


def test_hygiene_strips_echoes_and_drops_bad_proposals():
    proposer = scripted_proposer([
        'The instruction was to "label each review as positive or negative."',
        "",
        "x" * 600,
        "I loved this movie, the acting was wonderful and the story moved me.",
        "Review: a\nSentiment: b\nReview: c",
        "label each review as positive or negative.",
    ])
    task = scripted_lm(lambda messages: "positive")
    ape = APE(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, num_subsamples=1,
              num_demos=4, num_prompts_per_subsample=6, storage=":memory:", progress=False)
    compiled = ape.compile(sentiment_program(), trainset=toy_train(40))
    report = compiled.cuecard_report
    induced = [c.instructions["self"] for c in report.candidates if c.origin == "induced-forward"]
    assert induced == ["Label each review as positive or negative."]
    assert report.dropped == {"empty": 1, "too long": 1, "copies a demonstration": 1,
                              "echoes the demo format": 1, "duplicate": 1}


def test_forward_and_reverse_prompts_show_the_demos_by_field_name():
    proposer = scripted_proposer([])
    task = scripted_lm(lambda messages: "positive")
    for mode in ("forward", "reverse"):
        APE(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, mode=mode, num_subsamples=1,
            num_demos=3, num_prompts_per_subsample=1, storage=":memory:", progress=False,
            ).compile(sentiment_program(), trainset=toy_train())
    forward, reverse = (r[-1]["content"] for r in proposer.engine.requests)
    assert forward.count("Review: ") == 3 and forward.count("Sentiment: ") == 3
    assert forward.rstrip().lower().endswith("the instruction was to")
    assert "form of the outputs" not in forward and "form the output takes" not in reverse  # no task-tuned clause
    assert reverse.index("Instruction: ____") < reverse.index("Review: ")


def test_custom_template_and_its_markers():
    proposer = scripted_proposer(["Name the mood."])
    task = scripted_lm(lambda messages: "positive")
    template = f"Examples:\n{DEMOS}\nTask in five words: {BLANK}"
    APE(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, mode="custom", template=template,
        num_subsamples=1, num_demos=2, num_prompts_per_subsample=1, storage=":memory:", progress=False,
        ).compile(sentiment_program(), trainset=toy_train())
    assert proposer.engine.requests[0][-1]["content"].startswith("Examples:\nReview: ")
    with pytest.raises(ValueError, match=r"lacks the marker\(s\) \['\[\[INSTRUCTION\]\]'\]"):
        APE(metric=exact_match("sentiment"), task_lm=task, mode="custom", template=f"{DEMOS} only")


def test_bad_input_fails_before_any_lm_call():
    task = scripted_lm(lambda messages: "positive")
    with pytest.raises(ValueError, match="fewer than num_demos=5"):
        APE(metric=exact_match("sentiment"), task_lm=task, storage=":memory:").compile(sentiment_program(), trainset=toy_train(3))
    remote = cuecard.LM("anthropic/claude-3-5-haiku-latest")
    with pytest.raises(cuecard.ScoringUnsupportedError, match="cannot"):
        APE(metric=exact_match("sentiment"), task_lm=remote, objective="logprob", storage=":memory:").compile(
            sentiment_program(), trainset=toy_train())
    assert task.meter.usage.calls == 0 and remote.meter.usage.calls == 0


def test_seeds_always_compete_and_monte_carlo_adds_variations():
    proposer = scripted_proposer(["Say the mood."] + [f"Variation {i}." for i in range(20)])
    task = scripted_lm(lambda m: "positive" if "Variation 1." in m[-1]["content"] else "negative")
    ape = APE(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, num_subsamples=1, num_demos=3,
              num_prompts_per_subsample=1, seed_instructions=["Human seed."], mc_rounds=2, mc_top_fraction=1.0,
              mc_variations=2, storage=":memory:", progress=False, policy=FullEvaluation())
    report = ape.compile(sentiment_program(), trainset=toy_train(20)).cuecard_report
    origins = {c.origin for c in report.candidates}
    assert {"program", "user-seed", "induced-forward", "mc-variation"} <= origins
    variation = next(c for c in report.candidates if c.instructions["self"] == "Variation 1.")
    assert variation.parent is not None and variation.round == 1


def test_monte_carlo_stops_at_a_round_without_gain_unless_until_cap_spends_the_cap():
    def compile_flat(until_cap):
        counter = iter(range(1000))
        proposer = scripted_lm(lambda messages: f"Variation {next(counter)}.", name="scripted/proposer")
        task = scripted_lm(lambda m: "negative")  # every candidate scores alike: no round gains
        ape = APE(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, num_subsamples=1, num_demos=3,
                  num_prompts_per_subsample=2, mc_rounds=1, mc_top_fraction=1.0, mc_variations=2, until_cap=until_cap,
                  storage=":memory:", progress=False, policy=FullEvaluation(), limits=cuecard.Limits(max_calls=150))
        return ape.compile(sentiment_program(), trainset=toy_train(20)).cuecard_report

    stopped, spent = compile_flat(False), compile_flat(True)
    assert stopped.stop_reason.kind == "no improvement" and "Monte Carlo round 1: no gain" in stopped.stop_reason.text
    assert spent.stop_reason.kind in ("no room", "cap")
    assert max(c.round or 0 for c in spent.candidates) > 1 and spent.usage.calls > stopped.usage.calls
    assert sum("the search goes on: until_cap spends the cap" in note for note in spent.notes) == 1


def test_with_until_cap_the_room_left_scores_the_candidates_cut_short_on_every_dev_example():
    """The multi-stage scoring cuts candidates short on 5 examples; the room a search leaves under the cap
    (less than one more step) scores them on the whole pool, best first, until none is left or the next does
    not fit, and the winner is the best of the candidates scored on every dev example."""
    def compile_levels(until_cap, max_calls):
        levels = iter([3, 8, 5, 6, 2, 7])
        proposer = scripted_lm(lambda m: f"Level {next(levels, 1)}: label the review.", name="scripted/levels")
        ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=proposer, num_subsamples=1,
                  num_demos=3, num_prompts_per_subsample=6, mc_rounds=0, until_cap=until_cap, storage=":memory:",
                  progress=False, limits=cuecard.Limits(max_calls=max_calls), answer_form=False)  # the room left alone
        return ape.compile(sentiment_program(), trainset=REVIEWS[:40]).cuecard_report

    planned, spent, tight = compile_levels(False, 200), compile_levels(True, 200), compile_levels(True, 140)
    cut_short = [c.key for c in planned.candidates if c.dev_examples < planned.dev_size]
    assert cut_short, "the multi-stage scoring cut no candidate short: nothing for the room left to score"
    assert all(c.dev_examples == spent.dev_size and not c.pruned for c in spent.candidates if c.key in cut_short)
    assert spent.usage.calls > planned.usage.calls
    assert any("no candidate is left to score" in note for note in spent.notes), spent.notes
    best = max(c.dev_score for c in spent.candidates if c.dev_examples == spent.dev_size)
    assert spent.best.dev_score == best
    # a tighter cap: the room scores what fits, then says what the next one needs
    assert any("the next needs" in note for note in tight.notes), tight.notes
    assert tight.usage.calls <= 140


# ---- the real model ------------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("mode", ["forward", "reverse", "custom"])
def test_each_mode_induces_candidates_with_the_real_model(local_lm, mode):
    extra = {"template": f"Here are examples of a task.\n\n{DEMOS}\n\nThe task is: {BLANK}"} if mode == "custom" else {}
    ape = APE(metric=exact_match("sentiment"), task_lm=local_lm, mode=mode, num_subsamples=1, num_demos=4,
              num_prompts_per_subsample=4, storage=":memory:", progress=False, max_dev=4, policy=FullEvaluation(), **extra)
    report = ape.compile(sentiment_program(), trainset=toy_train(12)).cuecard_report
    induced = [c for c in report.candidates if c.origin == f"induced-{mode}"]
    assert induced, f"{mode}: every proposal dropped: {report.dropped}"
    # one model plays both roles: the proposals count as prompt-model use, the scoring as task-model use
    assert report.prompt_usage.model_calls > 0 and report.task_usage.model_calls > 0
    assert report.prompt_usage.calls + report.task_usage.calls == report.usage.calls


@pytest.mark.model
def test_ape_beats_the_seed_on_held_out_sentiment_and_reruns_from_cache(
    shared_data, local_lm, fresh_cache, tmp_path, same_answers_after_reload
):
    train = load_ii(shared_data, "induce", 40)
    test = load_ii(shared_data, "execute")
    humans = json.loads((shared_data / "instruction_induction" / "annotations" / "sentiment.json").read_text())["annotations"]
    metric = exact_match("sentiment")
    settings = dict(metric=metric, task_lm=local_lm, num_subsamples=2, num_prompts_per_subsample=5,
                    seed_instructions=humans, storage=":memory:", progress=False)

    first = APE(**settings).compile(sentiment_program(), trainset=train)
    report = first.cuecard_report
    full_cost = len(report.candidates) * report.dev_size
    assert report.evaluations < full_cost, "multi-stage scoring must spend less than full evaluation"

    before = local_lm.meter.usage
    second = APE(**settings).compile(sentiment_program(), trainset=train)
    rerun = local_lm.meter.usage - before
    assert second.cuecard_report.best.instructions == report.best.instructions
    assert rerun.model_calls == 0, rerun

    fresh_cache.restore()  # held-out answers go to the session cache, which the other teleprompter tests share
    evaluate = dspy.Evaluate(devset=test, metric=metric, num_threads=1, display_progress=False)
    with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
        seed_score = evaluate(sentiment_program()).score
        best_score = evaluate(first).score
    print(f"\nAPE sentiment: seed {seed_score:.1f}% -> {best_score:.1f}% on {len(test)} held-out; "
          f"winner {report.best.instructions['self']!r}; evaluations {report.evaluations} "
          f"(full: {full_cost}); LM calls {report.usage.model_calls}")
    assert best_score >= seed_score + 25

    same_answers_after_reload(first, tmp_path / "ape.json", [{"review": e.review} for e in test[:5]])


def summarizing_task(label):
    """A scripted task model for the Pipeline: the summary is "short " and the review's first 12 characters; the
    label step always answers ``label``."""
    def reply(messages):
        text = messages[-1]["content"]
        if text.startswith("Review: "):
            return "short " + text.split("\n")[0][len("Review: "):][:12]
        return label

    return reply


def test_pipeline_predictors_are_induced_from_their_own_traces():
    proposer = scripted_proposer([f"Proposal {i}." for i in range(10)])
    task = scripted_lm(summarizing_task("positive"))
    ape = APE(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, num_subsamples=1, num_demos=2,
              num_prompts_per_subsample=2, storage=":memory:", progress=False, policy=FullEvaluation())
    report = ape.compile(Pipeline(), trainset=toy_train(12)).cuecard_report
    prompts = [r[-1]["content"] for r in proposer.engine.requests]
    summarize_prompt = next(p for p in prompts if "Summary: short" in p and "Review: " in p)
    label_prompt = next(p for p in prompts if "Summary: short" in p and "Review: " not in p)
    assert "Sentiment: positive" in label_prompt and "Sentiment" not in summarize_prompt
    assert all(set(c.instructions) == {"summarize", "label"} for c in report.candidates)
    assert any(c.origin == "induced-forward" for c in report.candidates)


def test_a_pipeline_the_task_model_always_fails_induces_its_last_predictor_from_the_gold_outputs():
    """No run passes the metric (the label step always says "mixed"): the label predictor's demonstrations are
    its inputs in the program's runs with the gold labels; the first predictor, whose output has no gold,
    gets none and says so."""
    train = toy_train(12)
    proposer = scripted_proposer([f"Proposal {i}." for i in range(10)])
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(summarizing_task("mixed")), prompt_lm=proposer,
              num_subsamples=1, num_demos=3, num_prompts_per_subsample=2, storage=":memory:", progress=False,
              policy=FullEvaluation())
    report = ape.compile(Pipeline(), trainset=train).cuecard_report
    prompts = [r[-1]["content"] for r in proposer.engine.requests]
    induced = [p for p in prompts if "Summary: short" in p]
    assert induced and all("Review: " not in p and "mixed" not in p for p in induced), "only the label step is induced"
    gold_of = {"short " + e.review[:12]: e.sentiment for e in train}
    pairs = re.findall(r"Summary: (.*)\nSentiment: (.*)", induced[0])
    assert len(pairs) == 3 and all(gold_of[summary] == label for summary, label in pairs)
    assert any("label: no successful trace; inducing from its inputs" in note for note in report.notes)
    assert any("summarize: no successful trace to induce from" in note for note in report.notes)
    assert any(c.origin == "induced-forward" and c.instructions["label"] == "Proposal 0." for c in report.candidates)


def test_a_cap_reached_while_proposing_ends_the_compile_with_the_best_so_far_and_says_why():
    task = scripted_lm(level_task, name="scripted/task")
    proposer = scripted_lm(lambda messages: "Level 7 please.", name="scripted/proposer")
    compiled = APE(
        metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, storage=":memory:", progress=False,
        limits=cuecard.Limits(max_calls=12), num_subsamples=2, num_prompts_per_subsample=30,
    ).compile(sentiment_program(), trainset=REVIEWS[:20])
    report = compiled.cuecard_report
    assert report.usage.calls == 12 == len(proposer.engine.requests)
    assert report.stop_reason.kind == "cap" and "cap of 12 LM requests" in report.stop_reason.text
    assert compiled.signature.instructions == "Classify the sentiment."
