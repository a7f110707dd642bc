"""Do no harm: a winner replaces the seed only with paired evidence on the same dev examples."""

import pytest
from cuecard.clients.testing import BernoulliTask, scripted_lm
from cuecard.engine.acceptance import AlwaysAccept, NonInferiority, SignTest, sign_test_p
from cuecard.errors import CuecardError
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE


def test_the_sign_test_counts_wins_and_losses_and_leaves_ties_out():
    assert sign_test_p(3, 0) == pytest.approx(1 / 8)
    assert sign_test_p(5, 1) == pytest.approx(7 / 64)
    decision = SignTest(alpha=0.1).decide({0: 1, 1: 1, 2: 1, 3: 0, 4: 1}, {0: 0, 1: 0, 2: 1, 3: 0, 4: 0})
    assert (decision.wins, decision.losses, decision.ties) == (3, 0, 2)
    assert not decision.accepted and "p=0.125" in decision.reason
    assert SignTest(alpha=0.2).decide({0: 1, 1: 1, 2: 1}, {0: 0, 1: 0, 2: 0}).accepted


def record(wins, losses, ties):
    """Paired scores (winner, seed) with that record, the wins first."""
    pairs = [(1.0, 0.0)] * wins + [(0.0, 1.0)] * losses + [(0.0, 0.0)] * ties
    return {i: c for i, (c, _) in enumerate(pairs)}, {i: s for i, (_, s) in enumerate(pairs)}


def test_non_inferiority_keeps_a_find_the_sign_test_throws_away_and_still_refuses_a_doubtful_one():
    three_none = record(3, 0, 12)  # a reading that named the task: 0.200 vs 0.000 on 15 pairs
    assert not SignTest(alpha=0.1).decide(*three_none).accepted
    decision = NonInferiority(delta=0.05).decide(*three_none)
    # the t bound by hand: mean 0.2, sd of three 1s and twelve 0s, t(0.9, 14) = 1.345
    sd = ((3 * 0.8**2 + 12 * 0.2**2) / 14) ** 0.5
    assert decision.accepted and decision.lower_bound == pytest.approx(0.2 - 1.3450 * sd / 15**0.5, abs=1e-3)
    assert decision.differences == [1.0] * 3 + [0.0] * 12 and "non-inferior" in decision.reason and "+0.056" in decision.reason
    two_one = record(2, 1, 12)  # bound 0.067 - 1.345 * 0.458 / sqrt(15) = -0.092
    assert not NonInferiority(delta=0.05).decide(*two_one).accepted
    assert NonInferiority(delta=0.1).decide(*two_one).accepted
    boot = NonInferiority(delta=0.05, bound="bootstrap")
    assert boot.decide(*three_none).accepted and boot.decide(*three_none).lower_bound == boot.decide(*three_none).lower_bound
    assert not boot.decide(*record(2, 2, 11)).accepted  # as many losses as wins: never
    with pytest.raises(CuecardError, match="delta"):
        NonInferiority(delta=-0.1)


@pytest.mark.parametrize("rule", [SignTest(), NonInferiority()])
def test_a_tie_or_a_winner_that_loses_as_often_is_no_test_decision(rule):
    for pairs, what in ((record(0, 0, 15), "no paired example tells them apart"), (record(2, 3, 10), "did not win more")):
        decision = rule.decide(*pairs)
        assert not decision.accepted and decision.rule == "no test" and not decision.tested and decision.asked == rule.name
        assert what in decision.reason and "sign test" not in decision.reason


def test_when_the_seed_is_the_searchs_best_no_rule_is_said_to_have_decided():
    task = BernoulliTask([0.9, 0.1], pool_size=19, seed=3)  # the person's instruction is far worse
    report = compile_with(task)
    assert report.best.instructions == {"self": "arm 0"} and report.search_best is None
    assert report.acceptance.rule == "no test" and report.acceptance.asked == NonInferiority().name
    assert report.acceptance.reason.startswith("no test ran: the search's best candidate is the seed itself")


def compile_with(task, acceptance=None, dev=15):
    """APE on a simulated task: the program says "arm 0", a person's instruction "arm 1" competes."""
    proposer = scripted_lm(lambda messages: "arm 0", name="scripted/proposer")
    ape = APE(metric=task.metric, task_lm=task.lm, prompt_lm=proposer, storage=":memory:", progress=False,
              num_subsamples=1, num_prompts_per_subsample=1, num_demos=2, seed_instructions=["arm 1"],
              **({"acceptance": acceptance} if acceptance else {}))
    return ape.compile(task.program, trainset=task.examples[:4], valset=task.examples[4 : 4 + dev]).cuecard_report


def lead(task, dev):
    """Dev examples arm 1 gets right and arm 0 wrong, minus the reverse (the order is the valset's shuffle:
    the count does not depend on it)."""
    items = range(4, 4 + dev)
    wins = sum(task.outcome(1, i) and not task.outcome(0, i) for i in items)
    losses = sum(task.outcome(0, i) and not task.outcome(1, i) for i in items)
    return wins, losses


def test_under_the_sign_test_a_candidate_better_on_dev_by_noise_does_not_replace_the_seed():
    # two instructions of equal quality: find a draw where the person's one leads on dev by a little
    task = next(t for seed in range(50) if (t := BernoulliTask([0.5, 0.5], pool_size=19, seed=seed)) and 0 < lead(t, 15)[0] - lead(t, 15)[1] <= 2)
    report = compile_with(task, SignTest())
    assert report.search_best is not None and report.search_best.instructions == {"self": "arm 1"}
    assert report.best.instructions == {"self": "arm 0"}, "a lead by noise replaced the seed"
    assert not report.acceptance.accepted and "the seed is kept" in report.acceptance.reason
    assert any("did not replace the seed" in note for note in report.notes)
    unchecked = compile_with(task, AlwaysAccept())
    assert unchecked.best.instructions == {"self": "arm 1"}


def test_by_default_a_winner_that_may_be_worse_than_the_seed_does_not_replace_it():
    """The default guards against harm: a dev lead of one example with losses beside it (2-1, 3-2: the 90%
    lower bound of the paired difference is below -0.05) keeps the seed; the rule and its bound are named."""
    task = next(t for seed in range(200) if (t := BernoulliTask([0.5, 0.5], pool_size=19, seed=seed))
                and lead(t, 15)[0] - lead(t, 15)[1] == 1 and lead(t, 15)[1] >= 1)
    report = compile_with(task)
    assert report.search_best is not None and report.search_best.instructions == {"self": "arm 1"}
    assert report.best.instructions == {"self": "arm 0"}, "a winner that may be worse replaced the seed"
    decision = report.acceptance
    assert not decision.accepted and decision.rule == NonInferiority().name and decision.lower_bound < -0.05
    assert (decision.wins, decision.losses) == lead(task, 15) and "may be worse" in decision.reason


def test_a_clearly_better_candidate_replaces_the_seed():
    task = BernoulliTask([0.2, 0.95], pool_size=19, seed=1)
    wins, losses = lead(task, 15)
    assert sign_test_p(wins, losses) <= 0.1  # the evidence the rule needs is there
    report = compile_with(task)
    assert report.best.instructions == {"self": "arm 1"} and report.acceptance.accepted
    assert report.acceptance.examples == 15 and report.search_best is None


def test_the_seed_is_scored_on_the_winners_examples_before_the_comparison():
    """Multi-stage scoring may prune the seed after 5 examples; the comparison still uses all 15."""
    task = BernoulliTask([0.1, 0.9, 0.3, 0.2, 0.25, 0.15], pool_size=19, seed=2)
    proposals = iter(["arm 2", "arm 3", "arm 4", "arm 5"])
    proposer = scripted_lm(lambda messages: next(proposals), name="scripted/proposer")
    ape = APE(metric=exact_match("answer"), task_lm=task.lm, prompt_lm=proposer, storage=":memory:", progress=False,
              num_subsamples=1, num_prompts_per_subsample=4, num_demos=2, seed_instructions=["arm 1"])
    report = ape.compile(task.program, trainset=task.examples[:4], valset=task.examples[4:]).cuecard_report
    seed = next(c for c in report.candidates if c.instructions == {"self": "arm 0"})
    assert seed.pruned and report.acceptance.examples == 15 and seed.dev_examples == 15



def test_a_search_going_on_to_its_cap_keeps_room_for_the_seeds_check():
    """Past its planned steps, ``until_cap`` takes another step only if scoring the seed on the dev
    examples it lacks still fits under the cap afterwards (else the do-no-harm check is cut short)."""
    from types import SimpleNamespace

    from cuecard.engine.evaluate import Evaluator
    from cuecard.engine.study import Engine

    notes = []
    task = BernoulliTask([0.5], pool_size=15, seed=0)
    engine = Engine(Evaluator(task.program, task.metric, task_lm=task.lm), task.examples, storage=":memory:", progress=False)
    engine.add_candidate(task.candidate(0), origin="program")
    engine.evaluate(0, list(range(5)))  # the seed has 5 of the 15 dev examples: its check may take 10 more
    ape = APE(metric=exact_match("answer"), task_lm=scripted_lm(lambda m: "x"), until_cap=True, storage=":memory:",
              answer_form=False)

    def ctx(room):
        return SimpleNamespace(engine=engine, room=lambda: room, note=notes.append, stop=lambda kind, detail: notes.append(detail))

    assert ape.more_steps(ctx(30), done=1, planned=1, step_cost=20)  # 30 - 10 for the seed >= 20
    assert not ape.more_steps(ctx(29), done=1, planned=1, step_cost=20)
    assert "the seed's check on the winner's examples (10)" in notes[-1]
    assert ape.more_steps(ctx(0), done=0, planned=1, step_cost=20)  # planned steps are the plan's to bound

    with_form = APE(metric=exact_match("answer"), task_lm=scripted_lm(lambda m: "x"), until_cap=True, storage=":memory:")
    assert with_form.config.answer_form, "on by default"
    assert with_form.more_steps(ctx(45), done=1, planned=1, step_cost=20)  # 45 - 15 (the variant on all dev) - 10 >= 20
    assert not with_form.more_steps(ctx(44), done=1, planned=1, step_cost=20)
    assert "the answer-form check and the seed's check on the winner's examples (25)" in notes[-1]
