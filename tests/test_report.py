"""Reports: the PNG and the HTML page of a compile (scripted models; the real path is in test_cli)."""

import re

from cuecard.metrics import exact_match
from cuecard.policies import SuccessiveHalving
from cuecard.report import lineage, write_report
from cuecard.teleprompters import ProTeGi
from cuecard.testing import scripted_lm
from sentiment_cases import REVIEWS, sentiment_program
from test_protegi import ScriptedProposer, task_reply


def test_report_png_and_html_show_the_search_lineage_and_cost(tmp_path):
    proposer = ScriptedProposer()
    report = ProTeGi(metric=exact_match("sentiment"), task_lm=scripted_lm(task_reply), prompt_lm=proposer.lm,
                     policy=SuccessiveHalving(), storage=":memory:", progress=False, patience=5, rounds=2, beam_size=2,
                     minibatch_size=10, n_gradients=2, errors_per_gradient=3, mc_samples_per_step=1,
                     max_expansion_factor=4, samples_per_eval=4, eval_rounds=2, prompts_per_round=3,
                     ).compile(sentiment_program(), trainset=REVIEWS).cuecard_report
    png, page = write_report(report, tmp_path / "report")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    chain = lineage(report)
    assert chain[0] == report.best and chain[-1].parent is None
    assert all(child.parent == parent.key for child, parent in zip(chain, chain[1:], strict=False))
    listed = re.search(r"<ol>(.*?)</ol>", html, re.S).group(1)
    assert listed.count("<li>") == len(chain)
    assert "gradient: Reason" in listed  # why the winner changed
    assert html.count("<tr><td>") == min(15, len(report.candidates))
    assert f"{report.usage.calls} LM calls" in html and "src=\"data:image/png;base64," in html
    assert not re.search(r"<link|<script|src=\"http", html)  # self-contained: nothing fetched when viewed
