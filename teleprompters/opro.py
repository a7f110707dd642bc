"""OPRO (Yang et al., "Large Language Models as Optimizers", ICLR 2024).

The prompt model is the optimiser. Each step it reads a meta-prompt holding the best instructions
found so far with their scores (bucketed to 0-100, listed from lowest to highest), a few train
exemplars showing where the instruction sits in the task model's prompt and the correct output,
and a request for a new, better instruction between ``<INS>`` tags. Eight samples at temperature
1.0 are cleaned, filtered (duplicates, over-long ones, ones leaking the tag or an exemplar's answer)
and scored through the engine; their scores join the history. The search stops on the step budget,
a cap, or when the best score has not improved for ``patience`` steps (with ``until_cap``, only the cap).

Candidates are scored on the dev pool (every cuecard teleprompter scores through the engine's pool;
the paper scores on its training split). Exemplars always come from the train split, so the
meta-prompt never shows the examples that decide the winner.

Example:
    >>> from cuecard.teleprompters import OPRO
    >>> opro = OPRO(metric=my_metric, task_lm=task_lm, prompt_lm=prompt_lm, steps=10)  # doctest: +SKIP
    >>> compiled = opro.compile(program, trainset=train)  # doctest: +SKIP
    >>> compiled.cuecard_report.history[-1]["best_score"]  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import dspy
from cuecard.clients.adapter import PlainAdapter, field_label
from cuecard.engine.policies import Allocation, ArmEstimate, FullEvaluation
from cuecard.errors import BudgetExhausted, TeleprompterConfigError
from cuecard.metrics import normalize_instruction_induction
from cuecard.program import get_instructions, predictors
from pydantic import Field, model_validator

from .base import SearchContext, Teleprompter, TeleprompterConfig
from .planning import Knobs, screening

TAG = "<INS>"
SLOT = "[INSTRUCTION]"
HISTORY = "[[HISTORY]]"
RULE = "[[RULE]]"
EXEMPLARS = "[[EXEMPLARS]]"

META_PROMPT = (
    "You write instructions for a language model. Below are instructions tried so far, each with the "
    "score it earned (0 to 100, higher is better), listed from the lowest score to the highest.\n\n"
    f"{HISTORY}\n\n"
    f"In each example below, {SLOT} marks where the instruction is placed in what the model is given; then "
    "comes what the model wrote with the best instruction so far, and the correct output.\n\n"
    f"{EXEMPLARS}\n\n"
    f"{RULE}"
    "Write one new instruction that is different from every instruction above and would earn a higher "
    "score: a general command that works for any input of this kind (not an answer, not an example). "
    f"Keep it short and direct. Put it between {TAG} and </INS>."
)

POSITIONS = {"Q_begin": "before_inputs", "Q_end": "after_inputs", "A_begin": "answer_start"}
"""OPRO's instruction positions and the :class:`~cuecard.PlainAdapter` layout each maps to."""

_TAGGED = re.compile(r"<INS>(.*?)(?:</INS>|$)", re.IGNORECASE | re.DOTALL)
_CLOSED = re.compile(r"<INS>(.*?)</INS>", re.IGNORECASE | re.DOTALL)
_HISTORY_ENTRY = re.compile(r"^\s*Instruction:[ \t]*(\S[^\n]*)$", re.IGNORECASE | re.MULTILINE)  # the history's format


def extract_instruction(reply: str) -> str:
    r"""The text between ``<INS>`` and ``</INS>``, leniently.

    Small models often write the new instruction as one more entry of the history list
    ("Instruction: ...", then "Score: ..."): without a closed tag, that line is taken. Otherwise an
    unclosed tag runs to the end, and a reply without a tag is taken whole.

    Example:
        >>> extract_instruction("Instruction: Name the larger animal.\nScore: 50\n<INS>\nCorrect output: ant")
        'Name the larger animal.'
    """
    reply = reply or ""
    closed = [m.strip() for m in _CLOSED.findall(reply) if m.strip()]
    if closed:
        return closed[0]
    entry = _HISTORY_ENTRY.search(reply)
    if entry:
        return entry.group(1).strip()
    found = [m.strip() for m in _TAGGED.findall(reply) if m.strip()]
    return found[0] if found else reply.strip()


def bucket(score: float) -> int:
    """A score in [0, 1] as the integer 0-100 the meta-prompt shows."""
    return round(max(0.0, min(1.0, score)) * 100)


class OPROConfig(TeleprompterConfig):
    """OPRO's settings; defaults are the paper's (8 samples at 1.0, top 20 pairs, 3 exemplars), except
    the step budget (200 in the paper)."""

    steps: int = Field(20, ge=1)
    instructions_per_step: int = Field(8, ge=1)
    temperature: float = Field(1.0, ge=0)
    max_history: int = Field(20, ge=1, description="past (instruction, score) pairs shown in the meta-prompt")
    history_threshold: float = Field(0.0, ge=0, le=1, description="pairs scoring below this are left out (0.3 for API scorers in the paper)")
    num_exemplars: int = Field(3, ge=0)
    exemplar_selection: Literal["random", "wrong"] = Field(
        "random", description="'wrong': the train examples the best instructions so far most often got wrong"
    )
    position: Literal["Q_begin", "Q_end", "A_begin"] | None = Field(
        None, description="where the instruction goes (a PlainAdapter layout); None: where the task LM's adapter puts it"
    )
    patience: int = Field(5, ge=1, description="steps without a better best score before stopping (with until_cap, the cap decides)")
    seed_instructions: list[str] = Field(default_factory=list)
    meta_prompt: str = Field(META_PROMPT, description=f"the meta-prompt, with {HISTORY}, {EXEMPLARS} and the {TAG} tag")
    show_model_outputs: bool = Field(
        True, description="show, per exemplar, what the model wrote with the best instruction so far (not in the paper)"
    )
    max_proposal_tokens: int = Field(100, ge=8)

    @model_validator(mode="after")
    def _check_meta_prompt(self) -> OPROConfig:
        missing = [marker for marker in (HISTORY, EXEMPLARS, TAG) if marker not in self.meta_prompt]
        if missing:
            raise TeleprompterConfigError(
                f"The OPRO meta-prompt lacks {missing}: it needs the history marker {HISTORY}, the exemplars "
                f"marker {EXEMPLARS} and the {TAG} tag the new instruction is asked for in"
            )
        return self


class OPRO(Teleprompter):
    """Optimisation by prompting: the prompt LM proposes instructions from a scored history."""

    name = "opro"
    meta_prompts = (META_PROMPT,)
    reads_task = True
    summary = "the prompt model as optimiser over a scored history of instructions (Yang et al. 2024)"
    Config = OPROConfig
    config: OPROConfig
    default_policy = FullEvaluation

    def meta_prompt_texts(self) -> list[str]:
        return [*super().meta_prompt_texts(), self.config.meta_prompt]

    def step_calls(self, n_train: int, n_dev: int, predictors: int, size: int | None = None) -> tuple[int, int, int]:
        """A step: its proposals (``size``, default ``instructions_per_step``, for one predictor), their scoring,
        the exemplars' runs."""
        config = self.config
        count = config.instructions_per_step if size is None else size
        runs = (config.num_exemplars if config.show_model_outputs else 0) + (n_train if config.exemplar_selection == "wrong" else 0)
        return count, self.policy.planned_evaluations(count, n_dev, None), runs

    def planned_calls(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int]:
        config = self.config
        prompt, per_step, runs = self.step_calls(n_train, n_dev, predictors)
        reading_prompts, readings = self.reading_costs(predictors)
        seeds = 1 + len(config.seed_instructions) * predictors + readings
        evaluations = self.policy.planned_evaluations(seeds, n_dev, None) + config.steps * per_step
        return reading_prompts + config.steps * prompt, evaluations, config.steps * runs

    @classmethod
    def plan_shapes(cls, n_train: int, n_dev: int) -> list[Knobs]:
        """Steps of 4 proposals, each screened on 3 dev examples and the best on all, as many as the cap affords.

        Example:
            >>> OPRO.plan(100, n_train=20, n_dev=15)["steps"]
            1
        """
        policy = screening(n_dev, survivors=1)
        return [lambda steps: dict(policy=policy, steps=steps, instructions_per_step=4, num_exemplars=min(3, n_train),
                                   max_proposal_tokens=80, patience=max(2, steps))]

    def why(self, record: Any) -> str:
        if record.origin == "opro":
            return f"proposed at step {record.meta.get('step')} from the scored history"
        return super().why(record)

    def task_adapter(self) -> dspy.Adapter:
        if self.config.position is not None and self.adapter is None:
            return PlainAdapter(POSITIONS[self.config.position])
        return super().task_adapter()

    def validate(self, student: dspy.Module, trainset: Sequence[dspy.Example]) -> None:
        if self.config.position is not None and not isinstance(self.task_adapter(), PlainAdapter):
            raise TeleprompterConfigError(
                f"position={self.config.position!r} is a PlainAdapter layout; the adapter given is {type(self.adapter).__name__}"
            )

    # ---- the optimisation loop -----------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Allocation:
        engine = ctx.engine
        names = list(get_instructions(ctx.student))
        self.add_seed_instructions(ctx, self.config.seed_instructions)
        self.add_task_readings(ctx)
        ctx.allocate()
        self.check_history(ctx, names)
        wrong: Counter[int] = Counter()
        counted: set[int] = set()
        best = self.best_so_far(ctx)
        stale = 0
        step = 0
        while count := self.step_size(ctx, step, self.config.steps, self.config.instructions_per_step,
                                      lambda size: self.step_cost_in(ctx, size)):
            step += 1
            ctx.step(step, self.config.steps)
            name = names[(step - 1) % len(names)]
            base = engine.candidates[best.arm].instructions
            if self.config.exemplar_selection == "wrong" and best.arm not in counted:
                counted.add(best.arm)
                for result in engine.run_on(base, ctx.train):
                    if result.score < 1.0:
                        wrong[result.index] += 1
            exemplars = self.choose_exemplars(ctx, wrong)
            prompt = self.build_meta_prompt(ctx, name, base, exemplars)
            try:
                replies = self.propose_many(
                    ctx,
                    [[{"role": "user", "content": prompt}]] * count,
                    temperature=self.config.temperature,
                    max_tokens=self.config.max_proposal_tokens,
                    read=lambda reply: [extract_instruction(reply)],
                )
            except BudgetExhausted as exc:
                ctx.stop(exc.reason)
                ctx.note(f"the cap was reached while proposing at step {step}")
                break
            new_arms = self.add_proposals(ctx, name, base, replies, exemplars, step, best.arm)
            scored = ctx.allocate(new_arms) if new_arms else None
            previous, best = best, self.best_so_far(ctx)
            ctx.history.append(
                {
                    "step": step,
                    "predictor": name,
                    "proposed": len(replies),
                    "kept": len(new_arms),
                    "scored": [
                        {"instruction": engine.candidates[e.arm].instructions[name], "score": e.mean, "n": e.n}
                        for e in (scored.ranking if scored else [])
                    ],
                    "best_score": best.mean,
                    "best": engine.candidates[best.arm].instructions,
                }
            )
            if scored is not None and scored.capped is not None:
                break
            stale = 0 if best.mean > previous.mean else stale + 1
            if self.stalled(ctx, stale, self.config.patience, f"best score {best.mean:.3f} did not improve for {stale} "
                            f"steps (patience {self.config.patience}), at step {step}"):
                break
        return ctx.ranking_so_far()

    def best_so_far(self, ctx: SearchContext) -> ArmEstimate:
        scored = [e for e in ctx.ranking() if e.n > 0]
        return scored[0]

    # ---- the meta-prompt -----------------------------------------------------------------------
    def history_pairs(self, ctx: SearchContext, name: str) -> list[tuple[str, float]]:
        """The top ``max_history`` (instruction, score) pairs of one predictor, ascending, above the threshold."""
        best: dict[str, float] = {}
        for estimate in ctx.ranking():
            if estimate.n == 0:
                continue
            text = ctx.engine.candidates[estimate.arm].instructions[name]
            best[text] = max(best.get(text, 0.0), estimate.mean)
        kept = [(text, score) for text, score in best.items() if score >= self.config.history_threshold]
        kept.sort(key=lambda pair: (-pair[1], pair[0]))
        return sorted(kept[: self.config.max_history], key=lambda pair: (pair[1], pair[0]))

    def check_history(self, ctx: SearchContext, names: list[str]) -> None:
        for name in names:
            if not self.history_pairs(ctx, name):
                top = max(ctx.engine.mean(arm) for arm in range(len(ctx.engine.candidates)))
                raise TeleprompterConfigError(
                    f"history_threshold={self.config.history_threshold} drops every scored instruction of "
                    f"predictor {name!r} (the best scored {top:.2f}): the meta-prompt would have no history. "
                    "Lower the threshold."
                )

    def choose_exemplars(self, ctx: SearchContext, wrong: Counter[int]) -> list[dspy.Example]:
        count = min(self.config.num_exemplars, len(ctx.train))
        if self.config.exemplar_selection == "wrong" and wrong:
            order = sorted(range(len(ctx.train)), key=lambda i: (-wrong[i], ctx.rng.random()))
            return [ctx.train[i] for i in order[:count]]
        return ctx.rng.sample(ctx.train, count)

    def build_meta_prompt(
        self, ctx: SearchContext, name: str, instructions: dict[str, str], exemplars: list[dspy.Example]
    ) -> str:
        history = "\n\n".join(
            f"Instruction: {text}\nScore: {bucket(score)}" for text, score in self.history_pairs(ctx, name)
        )
        outputs: list[dict[str, Any] | None] = [None] * len(exemplars)
        if self.config.show_model_outputs and exemplars and len(predictors(ctx.student)) == 1:
            outputs = [result.output for result in ctx.engine.run_on(instructions, exemplars)]
        shown = "\n\n".join(
            self.render_exemplar(ctx, name, instructions, example, output) for example, output in zip(exemplars, outputs, strict=True)
        )
        read = self.task_rule(ctx, name)
        rule = f"What turns an input into its correct output, as read from training examples (a reading may be too narrow):\n{read}\n\n" if read else ""
        return self.config.meta_prompt.replace(HISTORY, history).replace(EXEMPLARS, shown or "(no examples)").replace(RULE, rule)

    def render_exemplar(
        self, ctx: SearchContext, name: str, instructions: dict[str, str], example: dspy.Example,
        output: dict[str, Any] | None = None,
    ) -> str:
        """The predictor's prompt with ``[INSTRUCTION]`` where the instruction goes, what the model wrote with the
        best instruction so far (when ``output`` is given), and the correct output.

        For a pipeline, the predictor's inputs come from a traced run of the current best candidate."""
        named = dict(predictors(ctx.student))
        inputs = dict(example.inputs())
        if len(named) > 1:
            run = ctx.engine.trace(instructions, example)
            inputs = next((seen for step, seen, _ in run.steps if step == name), inputs)
            if self.config.show_model_outputs:
                output = next((said for step, _, said in run.steps if step == name), None)
        signature = named[name].signature
        rendered = self.rendered_prompt(ctx, name, SLOT, inputs, instructions)
        written = ""
        if output:
            said = {key: value for key, value in output.items() if key in signature.output_fields}
            text = str(next(iter(said.values()))) if len(said) == 1 else "\n".join(
                f"{field_label(signature, key)}: {value}" for key, value in said.items()
            )
            written = f"Model's output:\n{text}\n"
        labels = example.labels()
        if labels and all(key in signature.output_fields for key in labels):
            if len(labels) == 1:
                answer = str(next(iter(labels.values())))
            else:
                answer = "\n".join(f"{field_label(signature, key)}: {value}" for key, value in labels.items())
            return f"Input:\n{rendered}\n{written}Correct output:\n{answer}"
        answer = "\n".join(f"{key}: {value}" for key, value in labels.items())
        return f"Input:\n{rendered}\n{written}Correct final output of the program:\n{answer}"

    # ---- filtering proposals -------------------------------------------------------------------
    def add_proposals(
        self,
        ctx: SearchContext,
        name: str,
        base: dict[str, str],
        replies: list[list[str] | None],
        exemplars: list[dspy.Example],
        step: int,
        parent: int,
    ) -> list[int]:
        engine = ctx.engine
        label_counts = Counter(normalize_instruction_induction(str(v)) for e in ctx.train for v in e.labels().values())
        secrets = [
            normalize_instruction_induction(str(v))
            for e in exemplars
            for v in e.labels().values()
            if label_counts[normalize_instruction_induction(str(v))] < 2 and len(str(v).strip()) >= 3
        ]
        copied = [str(v).lower() for e in exemplars for v in e.inputs().values() if len(str(v)) > 20]
        arms: list[int] = []
        for raw in (text for items in replies for text in (items or [])[:1]):  # None: the call failed (counted)
            if "ins>" in raw.lower():
                ctx.drop("leaks the tag")
                continue
            text = self.screen(ctx, raw)
            if text is None:
                continue
            normalized = normalize_instruction_induction(text)
            if any(re.search(rf"\b{re.escape(answer)}\b", normalized) for answer in secrets if answer):
                ctx.drop("leaks an exemplar's answer")
            elif any(piece in text.lower() for piece in copied):
                ctx.drop("copies an exemplar's input")
            elif engine.arm_of({**base, name: text}) is not None or any(
                engine.candidates[a].instructions[name] == text for a in arms
            ):
                ctx.drop("duplicate")
            else:
                arms.append(
                    engine.add_candidate(
                        {**base, name: text},
                        parent=engine.candidates[parent].key,
                        round=step,
                        origin="opro",
                        meta={"predictor": name, "step": step},
                    )
                )
        return arms
