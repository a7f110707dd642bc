"""The acceptance replay: stored harness cells decided again under other rules, with no LM call."""

from cuecard.engine.acceptance import NonInferiority, SignTest

from benchmarks.acceptance_replay import choose_default, load_cases, main, replay
from benchmarks.harness.results import CellResult, CellStore


def decided(task, method, differences, *, test, search_best_test=None, accepted=False):
    rule = SignTest()
    decision = rule.decide(dict(enumerate(d for d in differences)), dict.fromkeys(range(len(differences)), 0.0))
    return CellResult(task=task, method=method, seed=0, fingerprint="f", test_accuracy=test,
                      acceptance=decision.model_copy(update={"accepted": accepted}).model_dump(),
                      search_best_test_accuracy=search_best_test)


def store_run(root, data):
    store = CellStore(root)
    for task, seed_test in (("antonyms", 0.2), ("diff", 0.5)):  # tuning and report half
        store.put(CellResult(task=task, method="seed", seed=0, fingerprint="f", test_accuracy=seed_test))
    # a 3-0-12 find the sign test threw away: the seed kept (0.2 on test), the find scores 0.35 on test
    store.put(decided("antonyms", "opro", [1.0] * 3 + [0.0] * 12, test=0.2, search_best_test=0.35))
    # a 6-0-9 winner accepted that falls 10 points below the seed on test (a harm)
    store.put(decided("diff", "ape", [1.0] * 6 + [0.0] * 9, test=0.4, accepted=True))
    # a 2-1-12 winner the check kept out; on test it would have gained 5 points
    store.put(decided("antonyms", "pe2", [1.0, 1.0, -1.0] + [0.0] * 12, test=0.2, search_best_test=0.25))
    # a DSPy cell has no decision to replay
    store.put(CellResult(task="diff", method="gepa", seed=0, fingerprint="f", test_accuracy=0.5))
    return root


def test_cells_are_replayed_per_half_with_gains_kept_and_harms_admitted(tmp_path):
    data = tmp_path / "data"
    for path in (data / "instruction_induction" / "induce" / "antonyms.json", data / "instruction_induction" / "induce" / "diff.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (data / "bbh").mkdir()
    cases, skipped = load_cases([store_run(tmp_path / "run", data)], data)
    assert sorted((c.task, c.method, c.half) for c in cases) == [("antonyms", "opro", "tuning"), ("antonyms", "pe2", "tuning"), ("diff", "ape", "report")]
    assert len(skipped) == 1 and "gepa" in skipped[0]
    sign, ni5, ni10 = SignTest(), NonInferiority(delta=0.05), NonInferiority(delta=0.1)
    tuning = {o.rule: o for o in replay(cases, [sign, ni5, ni10], "tuning")}
    assert (tuning["sign-test"].accepted, tuning["sign-test"].gains_kept, tuning["sign-test"].gains_available) == (0, 0, 2)
    assert (tuning[ni5.name].gains_kept, round(tuning[ni5.name].points_gained, 6)) == (1, 15.0)  # 3-0 kept, 2-1 not
    assert (tuning[ni10.name].gains_kept, round(tuning[ni10.name].points_gained, 6)) == (2, 20.0)
    report = {o.rule: o for o in replay(cases, [sign, ni5], "report")}
    assert report["sign-test"].harms_admitted == 1 and report["sign-test"].harms_available == 1
    assert choose_default(list(tuning.values())) == ni10.name


def test_the_command_prints_every_rule_per_half_and_the_default_chosen_on_tuning(tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("antonyms", "diff"):
        path = data / "instruction_induction" / "induce" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (data / "bbh").mkdir()
    assert main([str(store_run(tmp_path / "run", data)), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "| tuning | sign-test | 2 | 0 | 0 of 2 |" in out and "| report | sign-test | 1 | 1 | 0 of 0 | -10.0 | 1 of 1 |" in out
    assert "default chosen on the tuning half: non-inferiority(t, delta=0.1)" in out
    assert main([str(tmp_path / "empty")]) == 1
