"""PE2 (Ye et al., "Prompt Engineering a Prompt Engineer", ACL Findings 2024; Algorithm 1, Appendix F.4).

Search with back-tracking: each of ``steps`` steps takes the best ``beam`` prompts by dev score among
*all* prompts so far; for each, ``proposals_per_prompt`` times, a batch of the prompt's errors on
train (hard negatives) goes to the prompt model in a two-turn chat. The first turn holds a two-step
task description, the context specification (the full template the task model receives, rendered
by the real adapter), and for each example its input, the model's output, the label and a
step-by-step reasoning template; the model's analysis comes back (temperature 0). The second turn
asks for the new prompt (temperature 0.7), optionally with a step size, a length cap and the
optimisation history of the parent's lineage with edit summaries. Each component can be switched
off for ablations.

Example:
    >>> from cuecard.teleprompters import PE2
    >>> pe2 = PE2(metric=my_metric, task_lm=task_lm, prompt_lm=prompt_lm, steps=3, step_size=10)  # doctest: +SKIP
    >>> compiled = pe2.compile(program, trainset=train)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any, Literal

import dspy
from cuecard.clients.adapter import field_label
from cuecard.engine.evaluate import ExampleScore
from cuecard.engine.policies import Allocation, FullEvaluation
from cuecard.errors import BudgetExhausted
from cuecard.program import get_instructions, predictors
from pydantic import Field

from .base import SearchContext, Teleprompter, TeleprompterConfig
from .induction import FORWARD_TEMPLATE, Induction, combine, induce
from .planning import Knobs, screening
from .proposals import clean_instruction, parse_items

PROMPT_SLOT = "<<PROMPT>>"

TASK_DESCRIPTION = (
    "You are a prompt engineer. A prompt tells a language model how to do a task, and it is not "
    "working well on the examples below. Work in two steps.\n"
    "Step 1: study the current prompt, how it is put together with each input, and each example with "
    "the model's output and the correct label; explain what goes wrong and why.\n"
    "Step 2: later, when asked, write an improved prompt."
)
ONE_STEP_DESCRIPTION = "Improve the prompt below for a language model. Examples it gets wrong follow."
REASONING_TEMPLATE = (
    "For each example, reason step by step:\n"
    "1. What turns the input into the label?\n"
    "2. Is the model's output correct? If not, how does it differ from the label?\n"
    "3. Does the output follow what the prompt asks?\n"
    "4. Does the prompt describe the task correctly?\n"
    "5. Does the prompt need an edit for this example? If so, what edit would fix it?"
)
NEW_PROMPT_REQUEST = (
    "Now write the improved prompt, using your analysis. Write the prompt itself, the instruction the model "
    "reads where <<PROMPT>> stands, not directions about the template: it must say what to do with any input. "
    "Reply with the new prompt only, between <START> and <END>."
)


class PE2Config(TeleprompterConfig):
    """PE2's settings; defaults are the paper's (T=3 steps, n=4 best prompts, m=4 proposals, batch of 2)."""

    steps: int = Field(3, ge=0, description="T: search steps (0: score the starting prompts only)")
    beam: int = Field(4, ge=0, description="n: prompts expanded per step, the best by dev score among all so far")
    proposals_per_prompt: int = Field(4, ge=0, description="m: new prompts asked for per expanded prompt")
    batch_size: int = Field(2, ge=1, description="examples shown per proposal")
    negatives: Literal["hard", "random"] = Field("hard", description="'hard': examples the prompt gets wrong")
    error_threshold: float = Field(1.0, gt=0, le=1, description="an example scoring below this is an error")
    negatives_sample: int | None = Field(
        None, ge=1, description="train examples a parent is run on to find its errors (None: the whole train split)"
    )
    n_init: int = Field(0, ge=0, description="prompts induced APE-style to start from (0: the program's own)")
    init_demos: int = Field(5, ge=1, description="demonstrations shown per induction")
    step_size: int | None = Field(None, ge=1, description="ask to change at most this many words (None: no limit)")
    max_words: int | None = Field(None, ge=1, description="ask for a prompt of at most this many words; longer ones are dropped")
    use_history: bool = Field(False, description="show the parent's lineage with dev scores and edit summaries")
    two_step_description: bool = True
    context_specification: bool = True
    reasoning_template: bool = True
    task_description: str = TASK_DESCRIPTION
    reasoning_questions: str = REASONING_TEMPLATE
    new_prompt_request: str = NEW_PROMPT_REQUEST
    reasoning_temperature: float = Field(0.0, ge=0)
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the new prompt")
    max_reasoning_tokens: int = Field(300, ge=16)
    max_proposal_tokens: int = Field(120, ge=8)


class PE2(Teleprompter):
    """Prompt engineering with a detailed meta-prompt, hard negatives and back-tracking."""

    name = "pe2"
    meta_prompts = (TASK_DESCRIPTION, ONE_STEP_DESCRIPTION, REASONING_TEMPLATE, NEW_PROMPT_REQUEST)
    reads_task = True
    summary = "a prompt engineer's meta-prompt on hard negatives, with back-tracking (Ye et al. 2024)"
    Config = PE2Config
    config: PE2Config
    plan_upto = 50
    default_policy = FullEvaluation

    def step_calls(self, n_train: int, n_dev: int, predictors: int, size: int | None = None) -> tuple[int, int, int]:
        """A step: two calls per proposal (``size`` per parent, default ``proposals_per_prompt``), their scoring,
        the parents' runs on train."""
        config = self.config
        children = config.beam * (config.proposals_per_prompt if size is None else size)
        runs = config.beam * min(config.negatives_sample or n_train, n_train)
        return 2 * children, self.policy.planned_evaluations(children, n_dev, None), runs

    def planned_calls(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int]:
        config = self.config
        prompt, per_step, runs = self.step_calls(n_train, n_dev, predictors)
        reading_prompts, readings = self.reading_costs(predictors)
        evaluations = self.policy.planned_evaluations(1 + config.n_init * predictors + readings, n_dev, None)
        return reading_prompts + config.n_init * predictors + config.steps * prompt, evaluations + config.steps * per_step, config.steps * runs

    @classmethod
    def plan_shapes(cls, n_train: int, n_dev: int) -> list[Knobs]:
        """Steps expanding the best prompt (beam 1) with 3 proposals from hard negatives, as many as the cap affords.

        Example:
            >>> PE2.plan(100, n_train=20, n_dev=15)["steps"]
            1
        """
        policy = screening(n_dev, survivors=1)
        return [lambda steps: dict(policy=policy, steps=steps, beam=1, proposals_per_prompt=3, batch_size=2,
                                   negatives_sample=min(8, n_train), max_reasoning_tokens=200, max_proposal_tokens=80)]

    def why(self, record: Any) -> str:
        if record.origin == "pe2":
            summary, analysis = record.meta.get("edit_summary"), record.meta.get("analysis")
            return f"edit: {summary}" if summary else f"analysis: {str(analysis or '')[:400]}"
        return super().why(record)

    # ---- the search ------------------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Allocation:
        engine = ctx.engine
        seed = get_instructions(ctx.student)
        if self.config.n_init:
            self.induce_starting_prompts(ctx, seed)
        self.add_task_readings(ctx)
        ctx.allocate()
        if self.config.steps == 0 or self.config.beam == 0 or self.config.proposals_per_prompt == 0:
            ctx.note(
                f"steps={self.config.steps}, beam={self.config.beam}, proposals_per_prompt="
                f"{self.config.proposals_per_prompt}: no new prompt is asked for; the best starting prompt wins"
            )

        step = empty = 0
        while proposals := self.step_size(ctx, step, self.config.steps, self.config.proposals_per_prompt,
                                          lambda size: self.step_cost_in(ctx, size)):
            step += 1
            ctx.step(step, self.config.steps)
            if not self.config.beam or not self.config.proposals_per_prompt:
                break
            ranking = [e for e in ctx.ranking() if e.n > 0 and not e.pruned]
            parents = [e.arm for e in ranking[: self.config.beam]]
            children: list[int] = []
            try:
                for parent in parents:
                    children += self.expand(ctx, parent, step, proposals)
            except BudgetExhausted as exc:
                ctx.stop(exc.reason)
                ctx.note(f"the cap was reached while proposing at step {step}")
                if children:
                    ctx.allocate(children)
                break
            scored = ctx.allocate(children) if children else None
            best = ctx.ranking()[0]
            ctx.history.append(
                {
                    "step": step,
                    "parents": [engine.candidates[arm].key for arm in parents],
                    "children": len(children),
                    "best_score": best.mean,
                    "best": engine.candidates[best.arm].instructions,
                }
            )
            empty = 0 if children else empty + 1
            if not children:
                why = "gave no usable new prompt" if ctx.step_asked else "found no hard negative to learn from"
                if self.nothing_new(ctx, empty, f"step {step} {why}; the best so far wins"):
                    break
                continue
            if scored is not None and scored.capped is not None:
                break
        return ctx.ranking_so_far()

    def induce_starting_prompts(self, ctx: SearchContext, seed: dict[str, str]) -> None:
        """``n_init`` prompts per predictor induced from demonstrations, as APE's forward mode does."""
        settings = Induction(template=FORWARD_TEMPLATE, demos=min(self.config.init_demos, len(ctx.train)),
                             per_subsample=self.config.n_init)
        pools = {name: induce(self, ctx, name, settings) for name in seed}
        for candidate in combine(ctx, seed, pools):
            ctx.engine.add_candidate(candidate, origin="induced")

    # ---- one parent's children -------------------------------------------------------------------
    def expand(self, ctx: SearchContext, parent: int, step: int, proposals: int | None = None) -> list[int]:
        engine = ctx.engine
        record = engine.candidates[parent]
        results = engine.run_on(record.instructions, ctx.train[: self.config.negatives_sample])
        errors = [r for r in results if r.score < self.config.error_threshold]
        if self.config.negatives == "hard" and not errors:
            ctx.note(f"step {step}: {record.key} gets every train example right; no hard negative to learn from")
            return []
        pool = errors if self.config.negatives == "hard" else results
        if len(pool) < self.config.batch_size:
            ctx.note(
                f"step {step}: {record.key} has {len(pool)} error(s), fewer than batch_size={self.config.batch_size}; "
                "showing them all"
            )
        children = []
        for proposal in range(self.config.proposals_per_prompt if proposals is None else proposals):
            name = list(record.instructions)[proposal % len(record.instructions)]
            batch = ctx.rng.sample(pool, min(self.config.batch_size, len(pool)))
            messages = [{"role": "user", "content": self.analysis_request(ctx, name, record.instructions, batch, parent)}]
            analysis = self.ask_prompt_lm(
                ctx, messages, temperature=self.config.reasoning_temperature, max_tokens=self.config.max_reasoning_tokens
            )
            if analysis is None:
                continue  # the prompt model failed (counted in the report's failures)
            messages += [{"role": "assistant", "content": analysis}, {"role": "user", "content": self.new_prompt_request()}]
            replies = self.propose(
                ctx, messages, temperature=self.config.temperature, max_tokens=self.config.max_proposal_tokens,
                read=lambda reply: [reply],
            )
            if not replies:
                continue  # the prompt model failed (counted in the report's failures)
            reply = replies[0]
            arm = self.add_child(ctx, parent, name, reply, analysis, [ctx.train[r.index] for r in batch], step)
            if arm is not None:
                children.append(arm)
        return children

    def add_child(
        self, ctx: SearchContext, parent: int, name: str, reply: str, analysis: str, examples: list[dspy.Example], step: int
    ) -> int | None:
        engine = ctx.engine
        record = engine.candidates[parent]
        items = parse_items(reply, 1)
        text = clean_instruction(items[0]) if items else ""
        summary = re.search(r"(?im)^\s*(?:edit\s+)?summary\s*:\s*(.+)$", reply or "")
        if summary:
            text = clean_instruction(re.split(r"(?im)^\s*(?:edit\s+)?summary\s*:", text)[0])
        text, echoed = self.cut_example_echo(ctx, name, text)
        if echoed:
            ctx.drop("example echo cut off")
        text = self.screen(ctx, text)
        if text is None:
            return None
        if self.config.max_words is not None and len(text.split()) > self.config.max_words:
            ctx.drop("over the length cap")
            return None
        candidate = {**record.instructions, name: text}
        if engine.arm_of(candidate) is not None:
            ctx.drop("duplicate")
            return None
        meta = {
            "predictor": name,
            "analysis": analysis,
            "examples": [dict(example.items()) for example in examples],
            "edit_summary": summary.group(1).strip() if summary else None,
            "words_changed": words_changed(record.instructions[name], text),
        }
        return engine.add_candidate(candidate, parent=record.key, round=step, origin="pe2", meta=meta)

    def cut_example_echo(self, ctx: SearchContext, name: str, text: str) -> tuple[str, bool]:
        """Cut a new prompt where it runs on into the examples' format ("Input ...:", "Review:", "Label:")."""
        signature = dict(predictors(ctx.student))[name].signature
        labels = [field_label(signature, field) for field in signature.fields] + ["Input", "Output", "Label", "Example", "Score"]
        echo = re.compile(r"^\s*[#*]*\s*(?:" + "|".join(re.escape(label) for label in labels) + r")\b[^:\n]{0,30}:", re.IGNORECASE)
        lines = text.splitlines()
        for position, line in enumerate(lines[1:], start=1):
            if echo.match(line):
                return "\n".join(lines[:position]).strip(), True
        return text, False

    # ---- the meta-prompt -------------------------------------------------------------------------
    def analysis_request(
        self, ctx: SearchContext, name: str, instructions: dict[str, str], batch: list[ExampleScore], parent: int
    ) -> str:
        config = self.config
        parts = [config.task_description if config.two_step_description else ONE_STEP_DESCRIPTION]
        parts.append(f"## Current prompt\n{instructions[name]}")
        rule = self.task_rule(ctx, name)
        if rule:
            parts.append(f"## What turns an input into its label (as read from training examples; a reading may be too narrow)\n{rule}")
        if config.context_specification:
            parts.append(self.context_specification(ctx, name, instructions))
        if config.use_history:
            history = self.lineage(ctx, parent, name)
            if history:
                parts.append(history)
        parts.append("## Examples\n" + "\n\n".join(
            self.format_example(ctx, name, instructions, ctx.train[result.index], result, number)
            for number, result in enumerate(batch, start=1)
        ))
        if config.reasoning_template:
            parts.append(config.reasoning_questions)
        else:
            parts.append("Explain what goes wrong.")
        return "\n\n".join(parts)

    def new_prompt_request(self) -> str:
        lines = [self.config.new_prompt_request]
        if self.config.step_size is not None:
            lines.append(f"Change at most {self.config.step_size} words of the current prompt.")
        if self.config.max_words is not None:
            lines.append(f"The new prompt must be at most {self.config.max_words} words long.")
        if self.config.use_history:
            lines.append("After the prompt, add one line starting with 'Summary:' saying what you changed.")
        return "\n".join(lines)

    def context_specification(self, ctx: SearchContext, name: str, instructions: dict[str, str]) -> str:
        """The full template(s) the task model receives, rendered by the real adapter, with slots for
        the prompt and the inputs; for a pipeline every step, with the one being edited marked."""
        named = list(predictors(ctx.student))
        blocks = []
        for position, (step_name, predictor) in enumerate(named, start=1):
            slots = {field: f"<<{field}>>" for field in predictor.signature.input_fields}
            shown = PROMPT_SLOT if step_name == name else instructions[step_name]
            template = self.rendered_prompt(ctx, step_name, shown, slots, instructions)
            if len(named) == 1:
                blocks.append(template)
            else:
                mark = "  <- the prompt being edited" if step_name == name else ""
                blocks.append(f"Step {position} of {len(named)} ({step_name}){mark}:\n{template}")
        intro = (
            f"## How the prompt is used\nThe task model receives exactly this text, with {PROMPT_SLOT} replaced "
            "by the prompt and each <<field>> by the example's value:"
        )
        if len(named) > 1:
            intro = (
                f"## How the prompt is used\nThe program runs {len(named)} steps in order, each with its own "
                f"prompt. Each step's model receives exactly this text, with {PROMPT_SLOT} replaced by the prompt "
                "being edited and each <<field>> by the value at that step:"
            )
        return intro + "\n\n" + "\n\n".join(blocks)

    def format_example(
        self, ctx: SearchContext, name: str, instructions: dict[str, str], example: dspy.Example, result: ExampleScore, number: int
    ) -> str:
        signature = dict(predictors(ctx.student))[name].signature
        seen = self.predictor_io(ctx, name, example, instructions, result.output)
        lines = [f"### Example {number}"]
        if seen is None:
            lines.append("(the program failed on this example)")
        else:
            inputs, outputs = seen
            lines += [f"Input {field_label(signature, k)}: {v}" for k, v in inputs.items() if k in signature.input_fields]
            lines += [f"Model's {field_label(signature, k).lower()}: {outputs.get(k, '')}" for k in signature.output_fields]
        labels = example.labels()
        own = all(key in signature.output_fields for key in labels)
        lines += [f"Label ({key}{'' if own else ', final output of the program'}): {value}" for key, value in labels.items()]
        lines.append(f"Score: {result.score:.2f}" + (f" (error: {result.error})" if result.error else ""))
        return "\n".join(lines)

    def lineage(self, ctx: SearchContext, arm: int, name: str) -> str:
        """The parent's ancestry, oldest first, with dev scores and edit summaries (the "momentum")."""
        engine = ctx.engine
        chain = []
        key: str | None = engine.candidates[arm].key
        while key is not None:
            current = engine.arm_of_key(key)
            record = engine.candidates[current]
            chain.append((record, engine.mean(current)))
            key = record.parent
        if len(chain) < 2:
            return ""
        lines = ["## Optimisation history (oldest first)"]
        for record, score in reversed(chain):
            summary = record.meta.get("edit_summary")
            lines.append(f"- {record.instructions[name]!r}: dev score {score:.2f}" + (f"; change: {summary}" if summary else ""))
        return "\n".join(lines)


def words_changed(before: str, after: str) -> int:
    """Word-level edit distance between two prompts (how big a step the edit took)."""
    a, b = before.split(), after.split()
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, other in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
        previous = current
    return previous[-1]
