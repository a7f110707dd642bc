"""BPO (Cheng et al., "Black-Box Prompt Optimization: Aligning LLMs without Model Training", ACL 2024).

BPO leaves the target LM and the program untouched and puts a rewriter in front of it: each user
prompt is rewritten, then the program answers the rewritten prompt. No gold labels are needed: a
pairwise judge compares the answer to the rewritten prompt with the answer to the original one.

Data construction: from preference records (a prompt, a good and a bad response) the prompt LM
compares the two responses and writes an optimised prompt that would lead to the good one; pairs
whose length ratio is extreme are dropped. The pairs become the rewriter's demonstrations (and can
be exported as JSONL to fine-tune a rewriter elsewhere). Records without responses get two sampled
answers from the target program, ranked by the judge.

Search: candidate rewriters (instruction x demonstration set) are trials of the shared engine,
scored per prompt 1 / 0.5 / 0 for win / tie / lose against the original prompt's answer, so a mean
score ``s`` is a delta win rate of ``2 s - 1``; the engine's policy allocates the judging.

Example:
    >>> from cuecard.programs import Respond
    >>> from cuecard.teleprompters import BPO
    >>> bpo = BPO(task_lm=target_lm, prompt_lm=rewriter_lm, judge_lm=judge_lm, preferences=records)  # doctest: +SKIP
    >>> aligned = bpo.compile(Respond(), trainset=prompts)  # doctest: +SKIP
    >>> aligned(request="how do i learn piano fast").response  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy
from cuecard.command.cli_inputs import CLIInput
from cuecard.engine.policies import Allocation, FullEvaluation
from cuecard.errors import DataFileError, TeleprompterConfigError
from cuecard.identity import digest, lm_identity
from cuecard.judge import JUDGE_SYSTEM, JUDGE_USER, PairwiseJudge, PairwiseMetric, WinRate
from cuecard.program import demos_key, encode_demos, get_instructions, predictors, required_inputs
from cuecard.programs import Rewritten
from pydantic import Field, model_validator

from .base import SearchContext, Teleprompter, TeleprompterConfig

CONSTRUCTION_PROMPT = (
    "You improve the prompts people give to AI assistants. Below are a user's prompt and two responses "
    "to it, a good one and a bad one.\n"
    "First compare them: what makes the good response better? Judge correctness first, then helpfulness "
    "and harmlessness.\n"
    "Then rewrite the user's prompt so that an assistant would answer it like the good response. Keep "
    "every piece of information in the prompt, do not include the answer, and make an unsafe request harmless.\n"
    "Reply in this form:\nComparison: <your comparison>\nOptimized prompt: <the rewritten prompt>\n[END]\n\n"
    "User prompt:\n{prompt}\n\nGood response:\n{good}\n\nBad response:\n{bad}"
)
EXTRA_INSTRUCTIONS = [
    "Make the user's request clearer and more specific, so an assistant knows exactly what to answer and "
    "in what form. Keep its meaning and all its details. Reply with the improved request only.",
]

_OPTIMIZED = re.compile(r"optimi[sz]ed\s+(?:prompt|instruction)\s*:\s*(.*?)(?:\[END\]|$)", re.IGNORECASE | re.DOTALL)
_COMPARISON = re.compile(r"(?:detailed\s+)?comparison(?:\s+result)?\s*:\s*(.*?)(?=optimi[sz]ed\s+(?:prompt|instruction)\s*:|$)", re.IGNORECASE | re.DOTALL)


def parse_construction(text: str) -> tuple[str, str | None]:
    """(comparison, optimized prompt or None) from a construction reply, leniently."""
    text = text or ""
    optimized = _OPTIMIZED.search(text)
    comparison = _COMPARISON.search(text)
    prompt = optimized.group(1).strip().strip("\"'") if optimized else None
    return (comparison.group(1).strip() if comparison else ""), (prompt or None)


def read_preferences(path: str) -> list[dict[str, Any]]:
    """Preference records (``prompt``, optionally ``good_res``/``bad_res``) from a JSON list or JSONL file.

    Example:
        >>> read_preferences("records.jsonl")[0]["prompt"]  # doctest: +SKIP
        'Explain tides.'
    """
    file = Path(path)
    if not file.is_file():
        raise DataFileError(f"{path}: no such file")
    text = file.read_text(encoding="utf-8-sig")
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataFileError(f"{path}: expected a list of objects with a 'prompt' field")
    return records


class BPOConfig(TeleprompterConfig):
    """BPO's settings. The pairs-per-set and length-ratio bounds are ours (the paper drops "extreme" ratios)."""

    fields: list[str] | None = Field(None, description="input fields to rewrite (default: the program's only input)")
    answer_form: bool = Field(False, description="off: BPO's candidates are rewriters, not the program's instructions")
    max_records: int = Field(16, ge=0, description="preference records turned into rewriting pairs")
    min_length_ratio: float = Field(0.5, gt=0, description="drop pairs whose optimized prompt is shorter than this x the original")
    max_length_ratio: float = Field(8.0, gt=0)
    demo_sets: int = Field(2, ge=0, description="demonstration sets tried (besides none)")
    demos_per_set: int = Field(2, ge=1)
    instructions: list[str] = Field(default_factory=lambda: list(EXTRA_INSTRUCTIONS), description="rewriter instructions tried besides the program's")
    construction_prompt: str = CONSTRUCTION_PROMPT
    max_construction_tokens: int = Field(300, ge=16)
    passes: int = Field(1, ge=1, description="iterative rewriting at inference")
    samples: int = Field(1, ge=1, description="'aggressive' inference: rewrites sampled, the judge keeps the best answer")
    judge_max_tokens: int = Field(160, ge=1)
    judge_both_orders: bool = Field(True, description="judge each pair in both A/B orders (two judge calls) and count a win or a "
                                    "loss only when they agree; off: one seeded order per prompt, half the judge calls")
    judge_system: str = Field(JUDGE_SYSTEM, description="the pairwise judge's system prompt")
    judge_user: str = Field(JUDGE_USER, description="the judge's user prompt, with {question}, {a} and {b}")
    export_pairs: str | None = Field(None, description="write the constructed (prompt, optimized prompt) pairs here as JSONL")

    @model_validator(mode="after")
    def _check(self) -> BPOConfig:
        if self.min_length_ratio >= self.max_length_ratio:
            raise TeleprompterConfigError(f"min_length_ratio={self.min_length_ratio} must be below max_length_ratio={self.max_length_ratio}")
        missing = [slot for slot in ("{prompt}", "{good}", "{bad}") if slot not in self.construction_prompt]
        if missing:
            raise TeleprompterConfigError(f"The construction prompt lacks {missing}")
        missing = [slot for slot in ("{question}", "{a}", "{b}") if slot not in self.judge_user]
        if missing:
            raise TeleprompterConfigError(f"The judge's user prompt lacks {missing}")
        return self


class BPO(Teleprompter):
    """Black-box prompt optimisation: a rewriter in front of an untouched program, chosen by pairwise win rate.

    Args (besides the shared ones): ``judge_lm`` (default: the task LM), ``preferences`` (records with
    ``prompt`` and optionally ``good_res``/``bad_res``), ``rewriter_template`` (use a fine-tuned
    rewriter model as ``prompt_lm`` with this one-message template, ``{prompt}`` in it). No metric.
    """

    name = "bpo"
    summary = "a rewriter in front of the untouched program, chosen by pairwise win rate; no labels (Cheng et al. 2024)"
    needs_labels = False
    Config = BPOConfig
    config: BPOConfig

    default_policy = FullEvaluation
    cli_inputs = (
        CLIInput(flag="--preferences", keyword="preferences", kind="file", read=read_preferences,
                 help="preference records (.json list or .jsonl) with prompt, good_res, bad_res"),
        CLIInput(flag="--judge-model", keyword="judge_lm", kind="model", help="the pairwise judge (default: the task model)"),
    )

    def __init__(
        self,
        *,
        task_lm: dspy.LM | None = None,
        judge_lm: dspy.LM | None = None,
        preferences: Sequence[Mapping[str, Any]] = (),
        rewriter_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "metric" in kwargs:
            raise TeleprompterConfigError("BPO takes no metric: it keeps a rewrite by its pairwise win rate, given by judge_lm")
        super().__init__(metric=None, task_lm=task_lm, **kwargs)
        self._judge_lm = judge_lm
        self.preferences = [dict(record) for record in preferences]
        self.rewriter_template = rewriter_template
        self.judge: PairwiseJudge | None = None
        self.pairs: list[dict[str, str]] = []

    # ---- the program searched: a rewriter in front, judged against its own answers ----------------------
    def prepare(self, student: dspy.Module) -> tuple[dspy.Module, Any]:
        """The student wrapped with a rewriting stage, and a pairwise metric: the wrapped program's answer
        against the untouched student's answer to the original prompt, judged by ``judge_lm``."""
        fields = self.config.fields or required_inputs(student)
        self.check_preferences()
        wrapper = Rewritten(student, fields=fields, passes=self.config.passes, samples=self.config.samples, template=self.rewriter_template)
        wrapper.rewriter_lm = self.prompt_lm
        output = next(name for name in predictors(student)[-1][1].signature.output_fields if name != "reasoning")
        self.judge = PairwiseJudge(self.judge_lm, seed=self.config.seed, max_tokens=self.config.judge_max_tokens,
                                   system=self.config.judge_system, user=self.config.judge_user,
                                   both_orders=self.config.judge_both_orders)
        baselines: dict[str, str] = {}

        def baseline(example: dspy.Example) -> str:
            key = json.dumps(dict(example.inputs()), sort_keys=True, default=str)
            if key not in baselines:
                with dspy.context(lm=self.task_lm, adapter=self.task_adapter()):
                    baselines[key] = str(student(**example.inputs())[output])
            return baselines[key]

        return wrapper, PairwiseMetric(self.judge, question=fields[0], answer=output, baseline=baseline)

    def finalize(self, compiled: dspy.Module, report: Any) -> dspy.Module:
        compiled.rewriter_lm = self.prompt_lm
        report.notes.append(f"judge model: {self.judge_lm.model}")
        return compiled

    @property
    def judge_lm(self) -> dspy.LM:
        """The pairwise judge (default: the task LM)."""
        return self._judge_lm or self.task_lm

    def evaluation_calls(self, student: dspy.Module) -> int:
        """The wrapped program's predictors, the judge (once per order) and the untouched program's answer."""
        return len(predictors(student)) + (2 if self.config.judge_both_orders else 1) + 1

    def metric_identity(self, metric: Any = None) -> dict[str, Any]:
        return {"name": "pairwise judge", "judge": lm_identity(self.judge_lm)}

    def identity_extras(self) -> dict[str, Any]:
        return {"preferences": digest(self.preferences), "rewriter_template": self.rewriter_template}

    def check_preferences(self) -> None:
        for index, record in enumerate(self.preferences):
            if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
                raise TeleprompterConfigError(f"preferences[{index}] has no 'prompt' (fields: {sorted(record)})")
            if ("good_res" in record) != ("bad_res" in record):
                raise TeleprompterConfigError(f"preferences[{index}] has one of 'good_res'/'bad_res' but not the other")

    # ---- the search --------------------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Allocation:
        engine = ctx.engine
        seed = get_instructions(ctx.student)
        rewriters = [name for name in seed if name.startswith("rewrite_")]
        self.pairs = self.construct_pairs(ctx)
        if self.config.export_pairs:
            self.export(self.pairs, self.config.export_pairs)
        demo_sets: list[list[dict[str, str]]] = [[]]
        usable = [pair for pair in self.pairs if pair["optimized"]]
        for _ in range(self.config.demo_sets if usable else 0):
            demo_sets.append(ctx.rng.sample(usable, min(self.config.demos_per_set, len(usable))))
        instructions = [seed[rewriters[0]], *self.config.instructions]
        for instruction in dict.fromkeys(instructions):
            for number, demos in enumerate(demo_sets):
                candidate = dict(seed)
                for name in rewriters:
                    field = name[len("rewrite_"):]
                    candidate[name] = instruction
                    if demos:
                        candidate[demos_key(name)] = encode_demos([{field: d["prompt"], "rewritten": d["optimized"]} for d in demos])
                engine.add_candidate(candidate, origin="bpo", meta={"demo_set": number, "demos": len(demos)})
        allocation = ctx.allocate()
        best = allocation.best
        outcomes = WinRate()
        for score in engine.scores(best.arm).values():
            outcomes.win += score == 1.0
            outcomes.tie += score == 0.5
            outcomes.lose += score == 0.0
        verdicts = self.judge.verdicts if self.judge else []
        outcomes.unparsed = sum(not v.parsed for v in verdicts)
        outcomes.inconsistent = sum(not v.consistent for v in verdicts)
        ctx.history.append({"pairs": len(self.pairs), "usable_pairs": len(usable), "demo_sets": len(demo_sets),
                            "winner_win": outcomes.win, "winner_tie": outcomes.tie, "winner_lose": outcomes.lose,
                            "winner_delta_wr": outcomes.delta_wr, "unparsed_verdicts": outcomes.unparsed,
                            "inconsistent_verdicts": outcomes.inconsistent, "verdicts": len(verdicts)})
        ctx.note(f"winner on dev against the original prompts: {outcomes}")
        return allocation

    # ---- data construction -------------------------------------------------------------------------
    def construct_pairs(self, ctx: SearchContext) -> list[dict[str, str]]:
        """(prompt, optimized prompt) pairs from the preference records; failures are counted, not raised."""
        pairs = []
        for record in self.preferences[: self.config.max_records]:
            good, bad = record.get("good_res"), record.get("bad_res")
            if good is None:
                good, bad = self.rank_responses(ctx, record["prompt"])
            reply = self.ask_prompt_lm(
                ctx,
                [{"role": "user", "content": self.config.construction_prompt.format(prompt=record["prompt"], good=good, bad=bad)}],
                temperature=0.0,
                max_tokens=self.config.max_construction_tokens,
            )
            if reply is None:
                continue  # the prompt model failed (counted in the report's failures)
            comparison, optimized = parse_construction(reply)
            if optimized is None:
                ctx.drop("construction: no optimized prompt in the reply")
                continue
            ratio = len(optimized) / max(1, len(record["prompt"]))
            if not self.config.min_length_ratio <= ratio <= self.config.max_length_ratio:
                ctx.drop("construction: extreme length ratio")
                continue
            pairs.append({"prompt": record["prompt"], "optimized": optimized, "comparison": comparison})
        return pairs

    def rank_responses(self, ctx: SearchContext, prompt: str) -> tuple[str, str]:
        """Two sampled answers of the target program to ``prompt``, ordered (good, bad) by the judge."""
        program = ctx.student.program
        field = (self.config.fields or required_inputs(program))[0]
        output = next(name for name in predictors(program)[-1][1].signature.output_fields if name != "reasoning")
        answers = []
        for sample in range(2):
            with dspy.context(lm=self.task_lm, adapter=ctx.engine.scorer.adapter):
                prediction = program(**{field: prompt}, config={"temperature": 0.8, "rollout_id": ctx.next_sample_index() + sample})
            answers.append(str(prediction[output]))
        verdict = self.judge.compare(prompt, answers[0], answers[1], item=f"construction:{prompt}")
        return (answers[0], answers[1]) if verdict.outcome != "lose" else (answers[1], answers[0])

    @staticmethod
    def export(pairs: list[dict[str, str]], path: str) -> Path:
        """The pairs as JSONL (``{"prompt", "optimized_prompt"}`` per line), to fine-tune a rewriter elsewhere."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as handle:
            for pair in pairs:
                handle.write(json.dumps({"prompt": pair["prompt"], "optimized_prompt": pair["optimized"]}, ensure_ascii=False) + "\n")
        return out


def win_rate(program: dspy.Module, baseline: dspy.Module, examples: Sequence[dspy.Example], judge: PairwiseJudge, *,
             question: str, answer: str, lm: dspy.LM, adapter: dspy.Adapter | None = None) -> WinRate:
    """Win / tie / lose of ``program``'s answers against ``baseline``'s on ``examples`` (the BPO evaluation)."""
    from cuecard.clients.adapter import adapter_for

    verdicts = []
    with dspy.context(lm=lm, adapter=adapter or adapter_for(lm)):
        for example in examples:
            ours = str(program(**example.inputs())[answer])
            theirs = str(baseline(**example.inputs())[answer])
            verdicts.append(judge.compare(str(example[question]), ours, theirs, item=str(example[question])))
    return WinRate.of(verdicts)
