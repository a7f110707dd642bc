"""Reports: the PNG and the HTML page of a compile (scripted models; the real path is in test_cli)."""

import base64
import html
import itertools
import re

import matplotlib.collections
import matplotlib.figure
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.engine.policies import SuccessiveHalving
from cuecard.metrics import exact_match
from cuecard.reporting.plots import plot_search
from cuecard.reporting.report import lineage, word_diff, write_report
from cuecard.teleprompters import APE, ProTeGi
from sentiment_cases import REVIEWS, level_task, sentiment_program
from test_protegi import ScriptedProposer, task_reply

MARKUP_SEED = 'Say <b>positive</b> & "negative", don\'t <script>guess</script>.'


@pytest.fixture(scope="module")
def replaced():
    """ProTeGi on scripted models: an edit of the seed clearly wins and replaces it."""
    proposer = ScriptedProposer()
    protegi = ProTeGi(metric=exact_match("sentiment"), task_lm=scripted_lm(task_reply), prompt_lm=proposer.lm, task_rule=False,
                      policy=SuccessiveHalving(), storage=":memory:", progress=False, patience=5, rounds=2,
                      beam_size=2, minibatch_size=10, n_gradients=2, errors_per_gradient=3,
                      mc_samples_per_step=1, max_expansion_factor=4, samples_per_eval=4, eval_rounds=2,
                      prompts_per_round=3)
    return protegi.compile(sentiment_program(), trainset=REVIEWS).cuecard_report


@pytest.fixture(scope="module")
def kept():
    """APE stopped by a cap of example evaluations: the search's winner leads by one example (the seed is
    kept), the last proposal is never scored, and the seed's instruction is full of markup."""
    levels = itertools.count(3)
    proposer = scripted_lm(lambda messages: f"Level {next(levels) % 10} please.", name="scripted/proposer")
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task, name="scripted/task"),
              prompt_lm=proposer, storage=":memory:", progress=False, max_evaluations=20, num_subsamples=1,
              num_prompts_per_subsample=4)
    return ape.compile(sentiment_program(MARKUP_SEED), trainset=REVIEWS[:20]).cuecard_report


def section(page, heading):
    """The part of the page under the <h2> that starts with ``heading``, up to the next <h2>."""
    return re.search(rf"<h2>{re.escape(heading)}.*?</h2>(.*?)(?=<h2>|</body>)", page, re.S).group(1)


def rows(table_html):
    """The cells (their inner HTML, stripped) of every body row of a table."""
    return [[cell.strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table_html, re.S) if "<td" in row]


def table(page, css_class):
    return re.search(rf'<table class="{css_class}">(.*?)</table>', page, re.S).group(1)


def text(value):
    """What the page shows for a text (the page escapes with html.escape)."""
    return html.escape(value)


def ci(candidate):
    low, high = candidate.dev_interval
    return f"{low:.3f}\u2013{high:.3f}"


def test_report_png_and_html_show_the_search_lineage_and_cost(replaced, tmp_path):
    report = replaced
    png, page = write_report(report, tmp_path / "report")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = page.read_text()
    chain = lineage(report)
    assert chain[0] == report.best and chain[-1].parent is None
    assert all(child.parent == parent.key for child, parent in zip(chain, chain[1:], strict=False))
    listed = re.search(r'<ol class="lineage">(.*?)</ol>', page, re.S).group(1)
    assert listed.count("<li>") == len(chain)
    assert "gradient: Reason" in listed  # why the winner changed, in the method's words
    assert all(text(c.why) in listed for c in chain if c.why)
    assert [row[0] for row in rows(table(page, "candidates"))] == [str(c.arm) for c in report.candidates[:15]]
    cost = section(page, "Cost")
    assert f"{report.usage.calls} LM calls" in cost
    task, prompt = report.task_usage.model_calls, report.prompt_usage.model_calls
    assert f"task model {task} calls, prompt model {prompt} calls" in cost
    assert text(next(iter(report.dropped))) in cost
    assert 'src="data:image/png;base64,' in page
    assert not re.search(r"<link|<script|src=\"http|url\(", page)  # self-contained: nothing fetched


def test_the_headline_gives_both_scores_with_intervals_and_why_the_winner_won(replaced, tmp_path):
    report = replaced
    page = write_report(report, tmp_path)[1].read_text()
    headline = re.search(r'<section class="headline replaced">(.*?)</section>', page, re.S).group(1)
    seed = next(c for c in report.candidates if c.instructions == report.seed_instructions)
    assert report.acceptance.accepted and report.best.key != seed.key
    for candidate in (report.best, seed):
        assert f"{candidate.dev_score:.3f}" in headline and ci(candidate) in headline
        assert f"dev score on {candidate.dev_examples} of {report.dev_size} examples" in headline
    assert "replaced the program" in headline and text(report.acceptance.reason) in headline
    # every scored candidate's interval is in the table, next to its score and number of examples
    for row, candidate in zip(rows(table(page, "candidates")), report.candidates, strict=False):
        assert row[1:4] == [f"{candidate.dev_score:.3f}", ci(candidate), str(candidate.dev_examples)]


def test_the_evidence_table_has_the_examples_where_winner_and_seed_differ_both_outputs(replaced, tmp_path):
    report = replaced
    page = write_report(report, tmp_path)[1].read_text()
    assert report.evidence, "the winner and the seed scored differently on some dev examples"
    shown = rows(table(page, "evidence"))
    expected = [
        [str(e.index), text(e.inputs["review"]), text(e.gold["sentiment"]), text(e.seed_output["sentiment"]),
         f"{e.seed_score:.2f}", text(e.winner_output["sentiment"]), f"{e.winner_score:.2f}"]
        for e in report.evidence
    ]
    assert shown == expected
    assert any(e.seed_output != e.winner_output for e in report.evidence)


def test_the_winner_is_shown_as_a_word_diff_against_its_parent(replaced, tmp_path):
    report = replaced
    page = write_report(report, tmp_path)[1].read_text()
    parent = next(c for c in report.candidates if c.key == report.best.parent)
    old, new = parent.instructions["self"], report.best.instructions["self"]
    pieces = word_diff(old, new)
    assert "".join(t for op, t in pieces if op != "insert") == old
    assert "".join(t for op, t in pieces if op != "delete") == new
    tags = {"delete": "del", "insert": "ins"}
    expected = "".join(f"<{tags[op]}>{text(t)}</{tags[op]}>" if op in tags else text(t) for op, t in pieces)
    changed = section(page, "What changed")
    assert f"Candidate #{report.best.arm} against its parent, #{parent.arm}" in changed
    assert f'<div class="diff">{expected}</div>' in changed
    assert "<del>" in expected and "<ins>" in expected


def test_a_kept_seed_shows_the_searchs_own_winner_and_an_unscored_candidate_is_not_scored(kept, tmp_path):
    report = kept
    page = write_report(report, tmp_path)[1].read_text()
    assert report.search_best is not None and not report.acceptance.accepted and report.capped
    headline = re.search(r'<section class="headline kept">(.*?)</section>', page, re.S).group(1)
    assert "not distinguishable" in headline and text(report.acceptance.reason) in headline
    for candidate in (report.best, report.search_best):
        assert f"{candidate.dev_score:.3f}" in headline and ci(candidate) in headline
    assert text(report.capped.detail) in headline
    unscored = [c for c in report.candidates if c.dev_examples == 0]
    assert unscored, "the cap left a proposal unscored"
    by_arm = {row[0]: row for row in rows(table(page, "candidates"))}
    for candidate in unscored:
        assert by_arm[str(candidate.arm)][1] == "not scored"
    assert "0.000" not in "".join(by_arm[str(c.arm)][1] + by_arm[str(c.arm)][2] for c in unscored)
    changed = section(page, "What changed")  # the search's winner against what it came from
    assert f"Candidate #{report.search_best.arm}" in changed


def test_instructions_are_escaped(kept, tmp_path):
    page = write_report(kept, tmp_path)[1].read_text()
    assert kept.seed_instructions["self"] == MARKUP_SEED
    assert "<b>positive</b>" not in page and "<script" not in page
    assert text(MARKUP_SEED) in page  # as text, in the table, the lineage or the diff


def test_a_template_of_ones_own_is_used_with_autoescaping(kept, tmp_path):
    template = tmp_path / "mine.html.j2"
    template.write_text("<p>{{ report.run_name }}|{{ outcome.winner.arm }}"
                        "|{{ report.seed_instructions['self'] }}|{{ candidates | length }}"
                        "|{{ report.search_best | score }}|{{ image | length }}</p>")
    png, page = write_report(kept, tmp_path / "out", template=template)
    image = base64.b64encode(png.read_bytes()).decode()
    expected = (f"<p>{text(kept.run_name)}|{kept.best.arm}|{text(MARKUP_SEED)}"
                f"|{min(15, len(kept.candidates))}"
                f"|{kept.search_best.dev_score:.3f}|{len(image)}</p>")
    assert page.read_text() == expected
    with pytest.raises(FileNotFoundError, match="nowhere.j2"):
        write_report(kept, tmp_path / "out", template=tmp_path / "nowhere.j2")


def test_the_plot_leaves_unscored_candidates_out_its_x_is_the_candidate_number(kept, tmp_path, monkeypatch):
    seen = {}
    save = matplotlib.figure.Figure.savefig

    def record(figure, *args, **kwargs):
        axes = figure.axes[0]
        points = [c for c in axes.collections if isinstance(c, matplotlib.collections.PathCollection)]
        seen["x"] = {float(x) for collection in points for x, _ in collection.get_offsets()}
        seen["ylabel"] = axes.get_ylabel()
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    plot_search(kept, tmp_path / "search.png")
    scored = {float(c.arm) for c in kept.candidates if c.dev_examples}
    assert seen["x"] == scored and all(c.dev_examples for c in kept.candidates if float(c.arm) in seen["x"])
    assert "each candidate got" in " ".join(seen["ylabel"].split())
