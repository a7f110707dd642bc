"""ProTeGi / APO (Pryzant et al., "Automatic Prompt Optimization with 'Gradient Descent' and Beam Search", EMNLP 2023).

Each round, one minibatch of train examples is shared by the beam. For every beam prompt the
errors it makes there are grouped; the prompt model explains why the prompt fails on each group
(the textual *gradient*), writes edited prompts that fix each reason, and paraphrases every edit
and the parent. Children are capped per parent, parents stay, duplicates go, and the next beam is
chosen by the engine's best-arm-identification policy under a fixed budget of example evaluations
on dev. The search stops when the beam's best dev score stops improving; dev picks the winner.
With ``until_cap``, rounds go on while a full one fits under the cap; then a last round on the best
prompt alone, with as many gradients as fit, scores its children on every dev example.

Example:
    >>> from cuecard.teleprompters import ProTeGi
    >>> from cuecard.engine.policies import UCB
    >>> protegi = ProTeGi(metric=my_metric, task_lm=task_lm, prompt_lm=prompt_lm, policy=UCB(), rounds=3)  # doctest: +SKIP
    >>> compiled = protegi.compile(program, trainset=train)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import dspy
from cuecard.clients.adapter import field_label
from cuecard.engine.evaluate import ExampleScore
from cuecard.engine.policies import UCB, Allocation, FullEvaluation
from cuecard.errors import TeleprompterConfigError
from cuecard.program import predictors
from cuecard.stopping import StopKind
from pydantic import Field

from .base import SearchContext, Teleprompter, TeleprompterConfig
from .planning import Knobs
from .proposals import parse_items

GRADIENT_PROMPT = (
    "I am writing an instruction for a language model. The current instruction is:\n"
    '"{instruction}"\n\n'
    "Following it, the model got these examples wrong:\n\n{errors}\n\n"
    "{rule}"
    "Compare each model output with the correct output: what turns the input into the correct output, and how "
    "does the model's output differ from it? Then give "
    "{count} reason(s) why the instruction led the model to these mistakes. "
    "Put each reason between <START> and <END>."
)
EDIT_PROMPT = (
    "I am writing an instruction for a language model. The current instruction is:\n"
    '"{instruction}"\n\n'
    "Following it, the model got these examples wrong:\n\n{errors}\n\n"
    "{rule}"
    "One reason it fails: {gradient}\n\n"
    "Taking this reason into account, write {count} better instruction(s). Each must be a general command "
    "that turns any input into its correct output, as in the examples above. Put each instruction between "
    "<START> and <END>."
)
PARAPHRASE_PROMPT = (
    "Say the following instruction again in other words, keeping its meaning. "
    "Put the new instruction between <START> and <END>.\n\nInstruction: {instruction}"
)

class ProTeGiConfig(TeleprompterConfig):
    """ProTeGi's settings; defaults are the official code's (rounds 6, beam 4, minibatch 64, 4 x 4 errors...)."""

    rounds: int = Field(6, ge=1)
    beam_size: int = Field(4, ge=1)
    minibatch_size: int = Field(64, ge=1)
    n_gradients: int = Field(4, ge=1)
    errors_per_gradient: int = Field(4, ge=1)
    gradients_per_error: int = Field(1, ge=1)
    steps_per_gradient: int = Field(1, ge=1)
    mc_samples_per_step: int = Field(2, ge=0)
    max_expansion_factor: int = Field(8, ge=1)
    expansion: Literal["random", "prescreen"] = "random"
    error_threshold: float = Field(1.0, gt=0, le=1, description="an example whose score is below this is an error")
    samples_per_eval: int = Field(32, ge=1)
    eval_rounds: int = Field(8, ge=1)
    prompts_per_round: int = Field(8, ge=1)
    patience: int = Field(1, ge=1, description="rounds without a better beam before stopping (with until_cap, the cap decides)")
    temperature: float = Field(0.7, ge=0)
    max_proposal_tokens: int = Field(120, ge=8)

    @property
    def selection_budget(self) -> int:
        """Example evaluations per round for choosing the beam (samples per eval x eval rounds x prompts)."""
        return self.samples_per_eval * self.eval_rounds * self.prompts_per_round


class ProTeGi(Teleprompter):
    """Prompt optimisation with textual gradients and beam search (bandit selection by default: UCB)."""

    name = "protegi"
    meta_prompts = (GRADIENT_PROMPT, EDIT_PROMPT, PARAPHRASE_PROMPT)
    reads_task = True
    summary = "textual gradients from errors, edits and paraphrases, beam search with bandit selection (Pryzant et al. 2023)"
    Config = ProTeGiConfig
    config: ProTeGiConfig
    default_policy = UCB
    plan_upto = 30

    def parent_calls(self, n_train: int, predictors: int, gradients: int | None = None) -> tuple[int, int]:
        """(prompt-model requests, task runs) expanding one beam parent (with ``gradients`` gradient requests, default
        ``n_gradients``) takes at most: its minibatch (and prescreening) runs, gradients, edits and paraphrases."""
        config = self.config
        gradients = config.n_gradients if gradients is None else gradients
        edits = gradients * config.gradients_per_error
        prompt = (gradients + edits + config.mc_samples_per_step * (edits * config.steps_per_gradient + 1)) * predictors
        runs = min(config.minibatch_size, n_train)
        if config.expansion == "prescreen":
            runs += config.max_expansion_factor * 2 * config.errors_per_gradient
        return prompt, runs

    def step_calls(self, n_train: int, n_dev: int, predictors: int, size: int | None = None) -> tuple[int, int, int]:
        """A round with a full beam (``size`` is not used; a last round sized to the room is :meth:`last_round_cost`):
        every parent's expansion and the selection budget."""
        prompt, runs = self.parent_calls(n_train, predictors)
        return self.config.beam_size * prompt, self.config.selection_budget, self.config.beam_size * runs

    def planned_calls(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int]:
        config = self.config
        per_parent_prompt, per_parent_runs = self.parent_calls(n_train, predictors)
        reading_prompts, _ = self.reading_costs(predictors)  # the readings start within the seed's n_dev evaluations
        parents = [1] + [config.beam_size] * (config.rounds - 1)
        evaluations = n_dev + config.rounds * config.selection_budget + config.beam_size * n_dev
        return reading_prompts + sum(parents) * per_parent_prompt, evaluations, sum(parents) * per_parent_runs

    @classmethod
    def plan_shapes(cls, n_train: int, n_dev: int) -> list[Knobs]:
        """Rounds of 2 gradients x 1 edit per beam prompt (beam 2), UCB spending 2 x dev evaluations a round
        (smaller minibatch and selection where the cap is tight), as many rounds as the cap affords.

        Example:
            >>> ProTeGi.plan(100, n_train=20, n_dev=15)["rounds"]
            1
        """

        def shape(minibatch: int, selection: int) -> Knobs:
            return lambda rounds: dict(
                policy=UCB(batch=3), rounds=rounds, beam_size=2, minibatch_size=minibatch, n_gradients=2, errors_per_gradient=3,
                steps_per_gradient=1, mc_samples_per_step=0, max_expansion_factor=4, samples_per_eval=selection, eval_rounds=1,
                prompts_per_round=1, patience=rounds)

        return [shape(min(8, n_train), 2 * n_dev), shape(min(4, n_train), n_dev)]

    def why(self, record: Any) -> str:
        gradient = record.meta.get("gradient")
        if record.origin == "paraphrase":
            return "a paraphrase of its parent"
        if gradient:
            kind = "an edit" if record.origin == "edit" else "a paraphrase of an edit"
            return f"{kind} answering the gradient: {str(gradient)[:400]}"
        return super().why(record)

    def children_at_most(self, gradients: int) -> int:
        """The children one parent expanded with ``gradients`` gradient requests may get (the expansion cap applied)."""
        config = self.config
        edits = gradients * config.gradients_per_error * config.steps_per_gradient
        return min(config.max_expansion_factor, edits * (1 + config.mc_samples_per_step) + config.mc_samples_per_step)

    def last_round_cost(self, ctx: SearchContext, gradients: int, beam: Sequence[int]) -> int:
        """LM requests a last round sized to the room may take: the best prompt alone expanded with ``gradients``
        gradients, its children and the beam scored on every dev example (no bandit selection)."""
        engine = ctx.engine
        n_predictors = len(predictors(ctx.student))
        prompt, runs = self.parent_calls(len(ctx.train), n_predictors, gradients)
        children = self.children_at_most(gradients) * len(engine.examples) * engine.calls_per_example
        return prompt + runs * n_predictors + children + sum(engine.calls_to_cover(arm) for arm in beam)

    def round_gradients(self, ctx: SearchContext, done: int, full_cost: int, beam: Sequence[int]) -> int | None:
        """How round ``done + 1`` runs: ``None`` for a full round (within the planned rounds, or past them with
        ``until_cap`` while one costing ``full_cost`` requests fits); past them, when a full round no longer fits,
        the most gradients (up to ``n_gradients``) for which a last round on the best prompt fits beside the seed's
        check (:meth:`last_round_cost`), so the cap is spent rather than left; 0 ends the search (saying why under a cap).
        """
        if done < self.config.rounds:
            return None
        room = ctx.room()
        if not self.config.until_cap or room is None:
            return 0
        reserve = self.closing_reserve(ctx)
        if room - reserve >= full_cost:
            return None
        for gradients in range(self.config.n_gradients, 0, -1):
            if room - reserve >= self.last_round_cost(ctx, gradients, beam):
                ctx.note(f"round {done + 1} sized to the room left: {gradients} of {self.config.n_gradients} gradient(s) on the "
                         f"best prompt only, its children scored on every dev example ({room} requests left)")
                return gradients
        ctx.stop(
            StopKind.NO_ROOM,
            f"{room} requests left under the cap, fewer than one more round ({full_cost}), or the smallest (one gradient on "
            f"the best prompt, its children scored on every dev example: {self.last_round_cost(ctx, 1, beam)}), and "
            f"{self.closing_checks(reserve)} may take",
        )
        return 0

    def validate(self, student: dspy.Module, trainset: Sequence[dspy.Example]) -> None:
        needed = self.config.selection_budget + self.config.beam_size
        if self.max_evaluations is not None and self.max_evaluations < needed:
            raise TeleprompterConfigError(
                f"max_evaluations={self.max_evaluations} is too small for one ProTeGi round "
                f"({self.config.selection_budget} selection evaluations + {self.config.beam_size} for the beam)"
            )

    # ---- beam search ----------------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Allocation:
        engine = ctx.engine
        starts = self.add_task_readings(ctx)
        if starts:  # the seed and the readings share the seed's evaluations; the best start the beam
            start = ctx.allocate(list(dict.fromkeys([0, *starts])), budget=len(engine.examples))
            beam = [e.arm for e in start.ranking[: self.config.beam_size]]
        else:
            start = ctx.allocate([0], budget=len(engine.examples))
            beam = [0]
        best = start.best.mean
        stale = 0
        round_cost = self.step_cost_in(ctx)
        round_ = empty = 0
        closing = self.config.beam_size * len(engine.examples) * engine.calls_per_example  # the beam's full evaluation
        full = FullEvaluation(n_examples=len(engine.examples))
        while (gradients := self.round_gradients(ctx, round_, round_cost + closing, beam)) != 0:
            round_ += 1
            ctx.step(round_, self.config.rounds, "round")
            minibatch = ctx.rng.sample(ctx.train, min(self.config.minibatch_size, len(ctx.train)))
            children: list[int] = []
            any_error = False
            for parent in beam if gradients is None else beam[:1]:
                errors = self.collect_errors(ctx, parent, minibatch)
                any_error = any_error or bool(errors)
                children.extend(self.expand(ctx, parent, errors, round_, gradients))
            if not any_error:
                ctx.stop(StopKind.NOTHING_NEW, f"round {round_}: the beam makes no error on the minibatch; nothing to learn from")
                break
            empty = 0 if children else empty + 1
            if not children:
                if self.nothing_new(ctx, empty, f"round {round_} gave no usable child prompt; the best so far wins"):
                    break
                continue
            arms = list(dict.fromkeys(beam + children))
            if gradients is not None:  # the last round, sized to the room: no selection, everything on every dev example
                final = ctx.allocate(arms, policy=full)
                ctx.history.append({"round": round_, "children": len(children), "selection_evaluations": final.evaluations,
                                    "beam": [engine.candidates[e.arm].key for e in final.ranking[: self.config.beam_size]],
                                    "best_dev_score": final.best.mean})
                return final
            selection = ctx.allocate(arms, budget=self.config.selection_budget)
            beam = [e.arm for e in selection.ranking[: self.config.beam_size]]
            ctx.history.append(
                {
                    "round": round_,
                    "children": len(children),
                    "selection_evaluations": selection.evaluations,
                    "beam": [engine.candidates[arm].key for arm in beam],
                    "best_dev_score": selection.best.mean,
                }
            )
            if selection.best.mean > best:
                best, stale = selection.best.mean, 0
            else:
                stale += 1
                if self.stalled(ctx, stale, self.config.patience, f"round {round_}: the beam's best dev score did not improve on {best:.3f}"):
                    break
        return ctx.allocate(beam, policy=full)

    # ---- errors and expansion --------------------------------------------------------------------
    def collect_errors(self, ctx: SearchContext, arm: int, minibatch: list[dspy.Example]) -> list[tuple[dspy.Example, ExampleScore]]:
        results = ctx.engine.run_on(ctx.engine.candidates[arm].instructions, minibatch)
        return [(minibatch[r.index], r) for r in results if r.score < self.config.error_threshold]

    def expand(self, ctx: SearchContext, parent: int, errors: list, round_: int, gradients: int | None = None) -> list[int]:
        """Children of one parent: edits from ``gradients`` gradients (default ``n_gradients``), paraphrases of edits
        and parent; capped, deduplicated."""
        if not errors:
            return []
        engine = ctx.engine
        record = engine.candidates[parent]
        proposals: list[tuple[dict[str, str], dict]] = []
        count = self.config.n_gradients if gradients is None else gradients
        for name, instruction in record.instructions.items():
            read = self.task_rule(ctx, name)
            rule = f"What turns an input into its correct output, as read from other training examples (a reading may be too narrow):\n{read}\n\n" if read else ""
            # the gradients are asked together, then every gradient's edits, then every paraphrase
            groups = [ctx.rng.sample(errors, min(self.config.errors_per_gradient, len(errors))) for _ in range(count)]
            shown = [self.format_errors(ctx, name, group, record.instructions) for group in groups]
            replies = self.ask_many(
                ctx,
                [[{"role": "user", "content": GRADIENT_PROMPT.format(instruction=instruction, errors=text, rule=rule, count=self.config.gradients_per_error)}] for text in shown],
                temperature=self.config.temperature,
                max_tokens=self.config.max_proposal_tokens,
            )
            reasons = [(group, text, gradient) for group, text, reply in zip(groups, shown, replies, strict=True)
                       for gradient in parse_items(reply, self.config.gradients_per_error)]
            edits = self.propose_many(
                ctx,
                [[{"role": "user", "content": EDIT_PROMPT.format(instruction=instruction, errors=text, gradient=gradient, rule=rule, count=self.config.steps_per_gradient)}]
                 for _, text, gradient in reasons],
                temperature=self.config.temperature,
                max_tokens=self.config.max_proposal_tokens,
                count=self.config.steps_per_gradient,
            )
            edited = [({"gradient": gradient, "kind": "edit", "errors": [r.index for _, r in group]}, edit)
                      for (group, _, gradient), found in zip(reasons, edits, strict=True) for edit in found or []]
            paraphrased = self.paraphrases_many(ctx, [edit for _, edit in edited] + [instruction])
            for (meta, edit), paraphrases in zip(edited, paraphrased, strict=False):
                proposals.append(({**record.instructions, name: edit}, meta))
                for paraphrase in paraphrases:
                    proposals.append(({**record.instructions, name: paraphrase}, {**meta, "kind": "paraphrase-of-edit"}))
            for paraphrase in paraphrased[-1]:
                proposals.append(({**record.instructions, name: paraphrase}, {"kind": "paraphrase", "gradient": None}))
        usable = []
        for candidate, meta in proposals:
            edited = {key: self.screen(ctx, text) for key, text in candidate.items() if text != record.instructions[key]}
            if any(text is None for text in edited.values()):
                continue  # screen() counted why
            cleaned = {**record.instructions, **edited}
            if cleaned == record.instructions or engine.arm_of(cleaned) is not None or cleaned in [c for c, _ in usable]:
                ctx.drop("duplicate")
            else:
                usable.append((cleaned, meta))
        if len(usable) > self.config.max_expansion_factor:
            usable = self.choose_children(ctx, usable, errors)
        return [
            engine.add_candidate(candidate, parent=record.key, round=round_, origin=meta["kind"], meta=meta)
            for candidate, meta in usable
        ]

    def paraphrases(self, ctx: SearchContext, instruction: str) -> list[str]:
        return self.paraphrases_many(ctx, [instruction])[0]

    def paraphrases_many(self, ctx: SearchContext, instructions: list[str]) -> list[list[str]]:
        """Each instruction's Monte Carlo paraphrases, every request sent together."""
        samples = self.config.mc_samples_per_step
        replies = self.propose_many(
            ctx,
            [[{"role": "user", "content": PARAPHRASE_PROMPT.format(instruction=text)}] for text in instructions for _ in range(samples)],
            temperature=self.config.temperature,
            max_tokens=self.config.max_proposal_tokens,
        )
        return [[item for items in replies[n * samples:(n + 1) * samples] for item in items or []] for n in range(len(instructions))]

    def choose_children(self, ctx: SearchContext, usable: list, errors: list) -> list:
        """Keep ``max_expansion_factor`` children: at random, or the best on the parent's error examples."""
        limit = self.config.max_expansion_factor
        ctx.drop("over the expansion cap", len(usable) - limit)
        if self.config.expansion == "random":
            return ctx.rng.sample(usable, limit)
        examples = [example for example, _ in errors]
        scored = []
        for candidate, meta in usable:
            results = ctx.engine.run_on(candidate, examples)
            scored.append((sum(r.score for r in results) / len(results), candidate, meta))
        scored.sort(key=lambda item: -item[0])
        return [(candidate, meta) for _, candidate, meta in scored[:limit]]

    def format_errors(self, ctx: SearchContext, predictor_name: str, group: list, instructions: dict[str, str]) -> str:
        """Each error with every input, the model's output and the gold output (for a pipeline: the
        predictor's own inputs and outputs from a traced re-run, and the gold final output)."""
        signature = dict(predictors(ctx.student))[predictor_name].signature
        blocks = []
        for example, result in group:
            seen = self.predictor_io(ctx, predictor_name, example, instructions, result.output)
            if seen is None:
                blocks.append("(the program failed on this example)")
                continue
            inputs, outputs = seen
            lines = [f"{field_label(signature, n)}: {v}" for n, v in inputs.items() if n in signature.input_fields]
            for n in signature.output_fields:
                lines.append(f"Model's {field_label(signature, n).lower()}: {outputs.get(n, '')}")
                if n in example:
                    lines.append(f"Correct {field_label(signature, n).lower()}: {example[n]}")
            if not any(n in example for n in signature.output_fields):
                lines += [f"Correct final {k}: {v}" for k, v in example.labels().items()]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)
