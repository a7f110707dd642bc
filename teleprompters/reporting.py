"""The compile report: every candidate's summary, the evidence against the seed, usage and stop reasons.
Mixed into :class:`~cuecard.teleprompters.base.Teleprompter`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dspy
from cuecard.engine.acceptance import Acceptance
from cuecard.engine.policies import Allocation
from cuecard.identity import (
    RunIdentity,
    data_fingerprint,
)
from cuecard.redact import redact_url
from cuecard.reporting.report import CandidateSummary, CompileReport, ExampleEvidence, ProcessStats, interval
from cuecard.stopping import StopReason

if TYPE_CHECKING:
    from .context import SearchContext


class Reporting:
    """Report building (a mixin of :class:`~cuecard.teleprompters.base.Teleprompter`)."""

    @staticmethod
    def evidence(ctx: SearchContext, arm: int, seed_arm: int, dev: list[dspy.Example], limit: int = 50) -> list[ExampleEvidence]:
        """The dev examples where ``arm`` and the seed scored differently, with both outputs."""
        engine = ctx.engine
        mine, seeds = engine.scores(arm), engine.scores(seed_arm)
        my_outputs, seed_outputs = engine.outputs(arm), engine.outputs(seed_arm)
        found = []
        for index in sorted(set(mine) & set(seeds)):
            if mine[index] == seeds[index] or arm == seed_arm:
                continue
            example = dev[index]
            found.append(ExampleEvidence(
                index=index,
                inputs={k: str(v) for k, v in example.inputs().items()},
                gold={k: str(v) for k, v in example.labels().items()},
                seed_score=seeds[index], seed_output=seed_outputs.get(index),
                winner_score=mine[index], winner_output=my_outputs.get(index),
            ))
        return found[:limit]

    def build_report(
        self,
        ctx: SearchContext,
        final: Allocation,
        seed_instructions: dict[str, str],
        train: list[dspy.Example],
        dev: list[dspy.Example],
        identity: RunIdentity,
        acceptance: Acceptance,
    ) -> CompileReport:
        engine = ctx.engine
        order = [estimate.arm for estimate in final.ranking]
        order += [e.arm for e in engine.ranking() if e.arm not in set(order)]  # earlier rounds' candidates
        summaries = []
        for arm in order:
            record = engine.candidates[arm]
            scores = engine.scores(arm)
            summaries.append(
                CandidateSummary(
                    arm=arm,
                    key=record.key,
                    instructions=record.instructions,
                    origin=record.origin,
                    parent=record.parent,
                    round=record.round,
                    dev_score=sum(scores.values()) / len(scores) if scores else 0.0,
                    dev_examples=len(scores),
                    dev_interval=interval(list(scores.values())),
                    pruned=arm in ctx.pruned,
                    why=self.why(record),
                    meta=record.meta,
                )
            )
        seed_arm = engine.arm_of(seed_instructions)
        seed_summary = next((s for s in summaries if s.arm == seed_arm), None)
        evidence = self.evidence(ctx, summaries[0].arm, seed_arm, dev) if seed_arm is not None else []
        best, search_best = summaries[0], None
        if not acceptance.accepted and seed_summary is not None:
            best, search_best = seed_summary, summaries[0]
            ctx.note(f"the search's winner did not replace the seed: {acceptance.reason}")
        usage, prompt_usage = engine.run_usage()
        failures = dict(engine.failures)
        for reason, count in ctx.failures.items():
            failures[reason] = failures.get(reason, 0) + count
        return CompileReport(
            teleprompter=self.name,
            config=self.config.model_dump(),
            run_name=engine.name,
            storage=redact_url(engine.storage_url),
            identity=identity.digest(),
            seed=self.config.seed,
            train_size=len(train),
            dev_size=len(dev),
            seed_instructions=seed_instructions,
            seed_dev_score=seed_summary.dev_score if seed_summary else None,
            task_model=self.task_lm.model,
            task_model_spec=getattr(self.task_lm, "spec", None),
            prompt_model=self.prompt_lm.model,
            data_fingerprint=data_fingerprint(train + dev),
            best=best,
            acceptance=acceptance,
            search_best=search_best,
            candidates=summaries,
            dropped=ctx.dropped,
            failures=failures,
            parse_failure_example=engine.block.parse_failure_example,
            proposal_token_caps=sorted(engine.prompt_block.truncated_caps),
            task_token_caps=sorted(engine.block.truncated_at - engine.prompt_block.truncated_at),
            capped=ctx.capped,
            stop_reason=ctx.stop_reason or StopReason(),
            evaluations=engine.evaluations,
            usage=usage,
            task_usage=usage - prompt_usage,
            prompt_usage=prompt_usage,
            notes=ctx.notes,
            history=ctx.history,
            evidence=evidence,
            process=ProcessStats(
                evaluations_computed=engine.computed,
                evaluations_read_back=engine.read_back,
                lm_requests_replayed=engine.block.usage.replayed,
                model_calls=engine.block.usage.model_calls,
            ),
        )
