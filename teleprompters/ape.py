"""APE (Zhou et al., "Large Language Models Are Human-Level Prompt Engineers", ICLR 2023).

Instructions are induced from demonstrations by the prompt model, filtered, and scored through the
shared engine (multi-stage by default); iterative Monte Carlo search then asks for variations of
the best ones. The program's own instructions and any user-given ones always join the candidates,
so APE never returns something worse than them on dev.

Example:
    >>> import dspy, cuecard
    >>> from cuecard.teleprompters import APE
    >>> ape = APE(metric=my_metric, task_lm=cuecard.LM("local"), num_subsamples=3,
    ...           num_prompts_per_subsample=8, seed_instructions=["Say positive or negative."])  # doctest: +SKIP
    >>> compiled = ape.compile(dspy.Predict("review -> sentiment"), trainset=train)  # doctest: +SKIP
    >>> compiled.cuecard_report.best.instructions  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import dspy
from cuecard.engine.policies import Allocation
from cuecard.errors import TeleprompterConfigError
from cuecard.program import get_instructions
from pydantic import Field, model_validator

from .base import SearchContext, Teleprompter, TeleprompterConfig
from .induction import BLANK, DEMOS, FORWARD_TEMPLATE, REVERSE_TEMPLATE, Induction, combine, hygiene, induce
from .planning import Knobs, screening

VARIATION_PROMPT = (
    "Rewrite this instruction in different words. Keep exactly the same meaning. "
    "Reply with the new instruction only.\n\nInstruction: {instruction}"
)


class APEConfig(TeleprompterConfig):
    """APE's settings. Defaults follow the Instruction Induction experiment (3 x 30 samples at 0.9)."""

    mode: Literal["forward", "reverse", "custom"] = "forward"
    template: str | None = Field(None, description=f"a custom template with {DEMOS} and {BLANK} markers")
    num_subsamples: int = Field(3, ge=1)
    num_demos: int = Field(5, ge=1)
    num_prompts_per_subsample: int = Field(30, ge=1)
    temperature: float = Field(0.9, ge=0)
    max_proposal_tokens: int = Field(80, ge=8)
    seed_instructions: list[str] = Field(default_factory=list, description="extra seeds, e.g. written by people")
    mc_rounds: int = Field(0, ge=0, description="iterative Monte Carlo rounds (0: plain APE)")
    mc_top_fraction: float = Field(0.2, gt=0, le=1)
    mc_variations: int = Field(3, ge=1, description="variations asked for each kept candidate per round")

    @model_validator(mode="after")
    def _check_template(self) -> APEConfig:
        if self.mode == "custom" and not self.template:
            raise TeleprompterConfigError("mode='custom' needs a template")
        if self.template is not None:
            missing = [marker for marker in (DEMOS, BLANK) if marker not in self.template]
            if missing:
                raise TeleprompterConfigError(f"The APE template lacks the marker(s) {missing}: it needs both {DEMOS} and {BLANK}")
        return self


class APE(Teleprompter):
    """Automatic Prompt Engineer: instruction induction + selection on dev (+ iterative Monte Carlo search)."""

    name = "ape"
    meta_prompts = (FORWARD_TEMPLATE, REVERSE_TEMPLATE, VARIATION_PROMPT)
    summary = "instructions induced from demonstrations, scored multi-stage; optional Monte Carlo rounds (Zhou et al. 2023)"
    Config = APEConfig
    config: APEConfig
    plan_upto = 60

    def planned_calls(self, n_train: int, n_dev: int, predictors: int) -> tuple[int, int, int]:
        config = self.config
        proposals = config.num_subsamples * config.num_prompts_per_subsample * predictors
        arms = 1 + len(config.seed_instructions) * predictors + proposals
        evaluations = self.policy.planned_evaluations(arms, n_dev, None)
        prompt, side = proposals, n_train if predictors > 1 else 0  # a pipeline is traced on train for demos
        for _ in range(config.mc_rounds):
            kept = max(1, int(arms * config.mc_top_fraction))
            new, scoring, _ = self.step_calls(n_train, n_dev, predictors, kept * config.mc_variations)
            prompt += new
            evaluations += scoring
            arms = kept + new
        evaluations += n_dev  # the seed check: a seed pruned early is scored on the rest of dev
        return prompt, evaluations, side

    def step_calls(self, n_train: int, n_dev: int, predictors: int, size: int | None = None) -> tuple[int, int, int]:
        """A Monte Carlo round of ``size`` variations per predictor (default: one kept candidate's), asked of the
        fewest parents, and the scoring of the variations beside their parents (kept candidates are scored on
        all of dev already: their scores are read back)."""
        variations = self.config.mc_variations
        size = variations if size is None else size
        parents, new = -(-size // variations), size * predictors
        return new, self.policy.planned_new_evaluations(new, n_dev, scored=parents), 0

    @classmethod
    def plan_shapes(cls, n_train: int, n_dev: int) -> list[Knobs]:
        """As many induced proposals as the cap affords, screened multi-stage (3 examples, x3, 2 survivors).

        Example:
            >>> APE.plan(100, n_train=20, n_dev=15)["num_prompts_per_subsample"]
            3
        """
        policy = screening(n_dev, survivors=2)

        def knobs(proposals: int) -> dict[str, Any]:
            subsamples = min(3, proposals + 1)
            return dict(policy=policy, num_subsamples=subsamples, num_prompts_per_subsample=max(1, (proposals + 1) // subsamples),
                        num_demos=max(1, min(5, n_train)))

        return [knobs]

    def meta_prompt_texts(self) -> list[str]:
        return [*super().meta_prompt_texts(), *([self.config.template] if self.config.template else [])]

    def why(self, record: Any) -> str:
        if record.origin.startswith("induced"):
            return f"induced from demonstrations ({record.origin.split('-', 1)[-1]} mode)"
        if record.origin == "mc-variation":
            return f"a variation of its parent (Monte Carlo round {record.round})"
        return super().why(record)

    def validate(self, student: dspy.Module, trainset: Sequence[dspy.Example]) -> None:
        if len(trainset) < self.config.num_demos:
            raise TeleprompterConfigError(
                f"The trainset has {len(trainset)} examples, fewer than num_demos={self.config.num_demos}"
            )

    # ---- the search -----------------------------------------------------------------------------
    def search(self, ctx: SearchContext) -> Allocation:
        engine = ctx.engine
        seed = get_instructions(ctx.student)
        names = list(seed)
        self.add_seed_instructions(ctx, self.config.seed_instructions)
        pools = {name: self.induce(ctx, name) for name in names}
        for candidate in self.combine(ctx, seed, pools):
            engine.add_candidate(candidate, origin=f"induced-{self.config.mode}")
        allocation = ctx.allocate()
        best = allocation.best.mean
        variations = self.config.mc_variations
        round_ = stale = empty = 0
        while True:
            kept = [e.arm for e in allocation.ranking if not e.pruned]
            kept = kept[: max(1, int(len(kept) * self.config.mc_top_fraction))]
            count = self.step_size(ctx, round_, self.config.mc_rounds, len(kept) * variations,
                                   lambda size: self.step_cost_in(ctx, size))  # the seed's check is step_size's
            if not count:
                break
            kept = kept[: -(-count // variations)]
            round_ += 1
            ctx.step(round_, self.config.mc_rounds, "Monte Carlo round")
            new_arms = self.resample(ctx, kept, round_, limit=count)
            empty = 0 if new_arms else empty + 1
            if not new_arms:
                if self.nothing_new(ctx, empty, f"Monte Carlo round {round_} gave no usable variation"):
                    break
                continue
            allocation = ctx.allocate(kept + new_arms)
            stale = stale + 1 if allocation.best.mean <= best else 0
            if self.stalled(ctx, stale, 1, f"Monte Carlo round {round_}: no gain over {best:.3f}"):
                break
            best = max(best, allocation.best.mean)
        return allocation

    # ---- proposal by induction ------------------------------------------------------------------
    def induction(self) -> Induction:
        """The induction settings of this APE (template, subsamples, demos, samples, temperature)."""
        config = self.config
        return Induction(
            template=config.template or (FORWARD_TEMPLATE if config.mode == "forward" else REVERSE_TEMPLATE),
            subsamples=config.num_subsamples, demos=config.num_demos, per_subsample=config.num_prompts_per_subsample,
            temperature=config.temperature, max_tokens=config.max_proposal_tokens,
        )

    def induce(self, ctx: SearchContext, predictor_name: str) -> list[str]:
        return induce(self, ctx, predictor_name, self.induction())

    def hygiene(self, ctx: SearchContext, raw: str, demo_texts: Sequence[str]) -> str | None:
        return hygiene(self, ctx, raw, demo_texts)

    def combine(self, ctx: SearchContext, seed: dict[str, str], pools: dict[str, list[str]]) -> list[dict[str, str]]:
        return combine(ctx, seed, pools)

    # ---- iterative Monte Carlo search -----------------------------------------------------------
    def resample(self, ctx: SearchContext, kept: list[int], round_: int, limit: int | None = None) -> list[int]:
        """Variations of each kept candidate (``mc_variations`` each, ``limit`` in all per predictor)."""
        engine = ctx.engine
        new_arms = []
        counts: dict[str, int] = {}
        asked = []
        for arm in kept:
            record = engine.candidates[arm]
            for name, instruction in record.instructions.items():
                for _ in range(self.config.mc_variations):
                    if limit is not None and counts.get(name, 0) >= limit:
                        break
                    counts[name] = counts.get(name, 0) + 1
                    asked.append((record, name, [{"role": "user", "content": VARIATION_PROMPT.format(instruction=instruction)}]))
        replies = self.propose_many(
            ctx, [messages for _, _, messages in asked], temperature=self.config.temperature,
            max_tokens=self.config.max_proposal_tokens, read=lambda reply: [reply],
        )
        for (record, name, _), items in zip(asked, replies, strict=True):
            if not items:
                continue
            text = self.hygiene(ctx, items[0], [])
            if text is None:
                continue
            candidate = {**record.instructions, name: text}
            if engine.arm_of(candidate) is not None:
                ctx.drop("duplicate")
                continue
            new_arms.append(
                engine.add_candidate(candidate, parent=record.key, round=round_, origin="mc-variation")
            )
        return new_arms
