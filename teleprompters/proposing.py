"""The helpers the methods share to propose: asking the prompt model (retries, caps, threads), screening its
proposals, reading the task from train pairs, rendering prompts and demos, sizing the steps past the plan.
Mixed into :class:`~cuecard.teleprompters.base.Teleprompter`."""

from __future__ import annotations

import contextvars
import functools
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dspy
from cuecard.engine.deadlines import TIMED_OUT, call_with_deadline, run_with_deadlines
from cuecard.engine.evaluate import describe_error, failure_reason
from cuecard.engine.policies import Allocation, FullEvaluation
from cuecard.errors import (
    CuecardError,
)
from cuecard.metrics import normalize_instruction_induction
from cuecard.program import apply_instructions, get_instructions, predictors
from cuecard.stopping import StopKind
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from .proposals import (
    STRUCTURED_REQUEST,
    clean_instruction,
    content_words,
    parse_items,
    read_structured,
    structured_options,
)

if TYPE_CHECKING:
    from .context import SearchContext


class Proposing:
    """What the methods share to propose candidates (a mixin of :class:`~cuecard.teleprompters.base.Teleprompter`)."""

    def add_seed_instructions(self, ctx: SearchContext, texts: Sequence[str]) -> None:
        """User-given instructions compete as candidates (each predictor's in turn, the others kept)."""
        seed = get_instructions(ctx.student)
        for text in texts:
            for name in seed:
                ctx.engine.add_candidate({**seed, name: text}, origin="user-seed")

    def reading_costs(self, predictors: int) -> tuple[int, int]:
        """(prompt-model requests, starting candidates) the readings of the task add to a plan."""
        if not (self.reads_task and self.config.task_rule and predictors == 1):
            return 0, 0
        return READINGS, READINGS if self.config.start_from_readings else 0

    def add_task_readings(self, ctx: SearchContext) -> list[int]:
        """The readings of the task (:meth:`task_rule`) as starting candidates beside the seed, screened like
        any proposal; their arm ids (none when ``start_from_readings`` or ``task_rule`` is off).

        A reading is what the prompt model sees the train pairs do, which a small model often states
        better than it repairs a generic seed from its errors.
        """
        if not self.config.start_from_readings:
            return []
        seed = get_instructions(ctx.student)
        arms: list[int] = []
        for name in seed:
            self.task_rule(ctx, name)
            for reading in ctx.readings.get(name, []):
                text = self.screen(ctx, reading)
                if text is not None:
                    arms.append(ctx.engine.add_candidate({**seed, name: text}, origin="task-reading"))
        return list(dict.fromkeys(arms))

    def screen(self, ctx: SearchContext, raw: str) -> str | None:
        """A proposal cleaned (:func:`clean_instruction`), or None (counted in the report) when it is empty,
        over-long, or nothing but one of the train outputs: "Positive" makes a model answer "positive"
        to everything, which a balanced dev split scores at chance and rewards over a real instruction."""
        text = clean_instruction(raw)
        if not text:
            ctx.drop("empty")
            return None
        if len(text) > self.config.max_instruction_chars:
            ctx.drop("too long")
            return None
        if normalize_instruction_induction(text) in ctx.train_answers():
            ctx.drop("an answer, not an instruction")
            return None
        if TEMPLATE_TALK.search(text):
            ctx.drop("talks about the template or the examples, not the task")
            return None
        if REPLY_FORMAT_DEBRIS.search(text) or not re.search(r"[^\W\d_]{2}", text):
            ctx.drop("a piece of the reply's format, not an instruction")
            return None
        if self.repeats_meta_prompt(text):
            ctx.drop("repeats the meta-prompt's words")
            return None
        if self.paraphrases_meta_prompt(text, ctx.program_words()):
            ctx.drop("restates the meta-prompt, not the task")
            return None
        return text

    def meta_prompt_texts(self) -> list[str]:
        """Every meta-prompt this method may send: its own templates and the shared requests."""
        return [*self.meta_prompts, RULE_REQUEST, STRUCTURED_REQUEST]

    def repeats_meta_prompt(self, text: str) -> bool:
        """Whether ``text`` shares a run of :data:`META_NGRAM` words or more with one of the method's meta-prompts
        (outside their slots): the proposer copied the request instead of stating the task."""
        cached = getattr(self, "_meta_ngrams", None)
        if cached is None:
            cached = self._meta_ngrams = {gram for template in self.meta_prompt_texts() for gram in meta_ngrams(template)}
        words = _WORD.findall(text.lower())
        return any(tuple(words[i : i + META_NGRAM]) in cached for i in range(len(words) - META_NGRAM + 1))

    def paraphrases_meta_prompt(self, text: str, program_words: frozenset[str] = frozenset()) -> bool:
        """Whether ``text`` is mostly the meta-prompts' vocabulary in other words: more than half of its content
        words, and at least :data:`META_SHARED_WORDS` of them, come from the method's meta-prompts (outside
        their slots). ``program_words`` (the program's field names, their descriptions and its seed
        instructions, see :func:`content_words`) are the task's own and never count.

        A word-run screen misses a paraphrase: "Take the first input and apply the given rule to it to get
        the output. Do not provide an answer, example, or tags." restates the structured request without six
        words in a row of it, and tells the task model nothing about the task.

        Example:
            >>> ape = APE(metric=exact_match("output"))  # doctest: +SKIP
            >>> ape.paraphrases_meta_prompt("Apply the given instruction to the input to get the correct output.")  # doctest: +SKIP
            True
        """
        cached = getattr(self, "_meta_vocabulary", None)
        if cached is None:
            cached = self._meta_vocabulary = frozenset(
                word for template in self.meta_prompt_texts() for piece in _SLOT.split(template) for word in content_words(piece))
        words = content_words(text) - program_words
        shared = words & cached
        return len(shared) >= META_SHARED_WORDS and 2 * len(shared) > len(words)

    def propose(
        self,
        ctx: SearchContext,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        count: int = 1,
        read: Callable[[str], list[str]] | None = None,
    ) -> list[str] | None:
        """Up to ``count`` instructions from the prompt model (None when the call failed).

        When the prompt model supports JSON schemas (and ``structured_proposals`` is on) the request
        asks for the rule the examples follow, then the instructions, and the model can write nothing
        else; otherwise ``read`` (default: :func:`~cuecard.teleprompters.proposals.parse_items`) takes
        them from the tagged reply the meta-prompt asked for.
        """
        return self.propose_many(ctx, [messages], temperature=temperature, max_tokens=max_tokens, count=count, read=read)[0]

    def propose_many(
        self,
        ctx: SearchContext,
        requests: Sequence[list[dict[str, str]]],
        *,
        temperature: float,
        max_tokens: int,
        count: int = 1,
        read: Callable[[str], list[str]] | None = None,
    ) -> list[list[str] | None]:
        """:meth:`propose` for independent requests, sent together (:meth:`ask_many`); results in order.

        Example:
            >>> self.propose_many(ctx, [messages_a, messages_b], temperature=0.9, max_tokens=200)  # doctest: +SKIP
            [['Classify the review.'], None]
        """
        reader = read or (lambda text: parse_items(text, count))
        if self.config.structured_proposals and _supports_json_schema(self.prompt_lm):
            asked = [
                [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + STRUCTURED_REQUEST.format(count=count)}]
                for messages in requests
            ]
            replies = self.ask_many(ctx, asked, temperature=temperature, max_tokens=max_tokens + 120, **structured_options(count))
            found: list[list[str] | None] = []
            for reply in replies:
                items = read_structured(reply, count) if reply is not None else None
                if reply is not None and items is None:
                    ctx.drop("structured reply not readable")
                    items = reader(reply)
                found.append(items)
            return found
        replies = self.ask_many(ctx, list(requests), temperature=temperature, max_tokens=max_tokens)
        return [None if reply is None else reader(reply) for reply in replies]

    def more_steps(self, ctx: SearchContext, done: int, planned: int, step_cost: int) -> bool:
        """Whether to run step ``done + 1``: yes within the ``planned`` steps; past them, with ``until_cap``,
        while the cap on requests leaves room for one more step (``step_cost`` requests at most)."""
        if done < planned:
            return True
        room = ctx.room()
        if not self.config.until_cap or room is None:
            return False
        reserve = self.closing_reserve(ctx)
        if room - reserve >= step_cost:
            return True
        ctx.stop(
            StopKind.NO_ROOM,
            f"{room} requests left under the cap, fewer than one more step ({step_cost}) and "
            f"{self.closing_checks(reserve)} may take",
        )
        return False

    def stalled(self, ctx: SearchContext, stale: int, patience: int, detail: str) -> bool:
        """Whether the search stops after ``stale`` steps without a better best score: from ``patience`` on, unless
        ``until_cap`` holds under a cap on requests, where the cap ends the search (the stall is noted once, and
        the next steps go on from the best candidates so far).

        Example:
            >>> if self.stalled(ctx, stale, self.config.patience, f"best score {best:.3f} did not improve"):  # doctest: +SKIP
            ...     break
        """
        if stale < patience:
            return False
        if self.config.until_cap and ctx.room() is not None:
            if stale == patience:
                ctx.note(f"{detail}; the search goes on: until_cap spends the cap")
            return False
        ctx.stop(StopKind.NO_IMPROVEMENT, detail)
        return True

    def nothing_new(self, ctx: SearchContext, empty: int, detail: str) -> bool:
        """Whether the search stops after a step that gave no usable new candidate (``empty``: such steps in a row,
        ``detail``: which step and why): at once, unless ``until_cap`` holds under a cap on requests and the step
        asked the prompt model anything (:attr:`SearchContext.step_asked`), where the next step asks again (the prompt
        model samples anew) until :data:`EMPTY_STEPS_IN_A_ROW` steps in a row gave nothing. A step that asked nothing
        (no error to learn from) would ask nothing again.

        Example:
            >>> if not children and self.nothing_new(ctx, empty, f"step {step} gave no usable new prompt"):  # doctest: +SKIP
            ...     break
        """
        if self.config.until_cap and ctx.room() is not None and ctx.step_asked and empty < EMPTY_STEPS_IN_A_ROW:
            ctx.note(f"{detail}; until_cap asks again (the prompt model samples anew)")
            return False
        if empty > 1:
            detail = f"{detail} ({empty} steps in a row gave nothing new)"
        ctx.stop(StopKind.NOTHING_NEW, detail)
        return True

    def step_size(self, ctx: SearchContext, done: int, planned: int, full: int, cost_of: Callable[[int], int]) -> int:
        """How many new candidates step ``done + 1`` asks for: ``full`` within the ``planned`` steps; past them,
        with ``until_cap``, the most (up to ``full``) whose cost (``cost_of(n)`` requests at most) fits the room
        the cap leaves after the seed's check, so a last smaller step spends what a full one could not; 0 stops
        the search (with the reason as its stop reason)."""
        if done < planned:
            return full
        room = ctx.room()
        if not self.config.until_cap or room is None or full < 1:
            return 0
        reserve = self.closing_reserve(ctx)
        for count in range(full, 0, -1):
            if room - reserve >= cost_of(count):
                if count < full:
                    ctx.note(f"step {done + 1} sized to the room left: {count} of {full} new candidates ({room} requests left)")
                return count
        ctx.stop(
            StopKind.NO_ROOM,
            f"{room} requests left under the cap, fewer than the smallest step (one new candidate, "
            f"{cost_of(1)}) and {self.closing_checks(reserve)} may take",
        )
        return 0

    def score_the_rest(self, ctx: SearchContext, final: Allocation) -> Allocation:
        """With ``until_cap`` under a cap on requests, the room a search leaves (less than one more step) scores
        more of its candidates on every dev example, the best of those partly scored first, while the next one
        fits beside the seed's check: a candidate the search's stages cut short on a few examples may beat its
        winner on the whole pool. The candidates scored on every dev example (the winner among them) and these
        are ranked by their full means; ``final`` is returned as it is when nothing more fits, when its winner is
        not scored on the whole pool, or when the metric is blind (more scores cannot tell the candidates apart).

        Example:
            >>> final = self.score_the_rest(ctx, ctx.allocate(beam, policy=FullEvaluation(n_examples=n)))  # doctest: +SKIP
        """
        room = ctx.room()
        if not self.config.until_cap or room is None or ctx.metric_blind:
            return final
        engine = ctx.engine
        if engine.calls_to_cover(final.best.arm):
            return final  # the search ended before its winner was scored on the whole pool
        covered = [e.arm for e in ctx.ranking() if engine.calls_to_cover(e.arm) == 0]
        left = room - self.closing_reserve(ctx)
        more: list[int] = []
        for estimate in ctx.ranking():
            cost = engine.calls_to_cover(estimate.arm)
            if cost == 0:
                continue
            if cost > left:
                ending = f"the next needs {cost} requests, {left} are left beside the seed's check"
                break
            more.append(estimate.arm)
            left -= cost
        else:
            ending = "no candidate is left to score"
        if not more:
            if ending.startswith("no candidate"):
                ctx.note("the room left under the cap buys nothing: every candidate is scored on every dev example")
            return final
        ctx.pruned.difference_update(more)  # scored on the whole pool now: no longer cut short
        engine.phase = f"the room left: {len(more)} candidate(s) cut short, scored on every dev example"
        ranked = ctx.allocate([*covered, *more], policy=FullEvaluation(n_examples=len(engine.examples)))
        ctx.note(f"the room left under the cap scored {len(more)} more candidate(s) on every dev example; {ending}")
        return ranked

    @staticmethod
    def acceptance_reserve(ctx: SearchContext) -> int:
        """Requests the do-no-harm check may still need: the seed (the first arm) scored on every dev example it lacks."""
        return ctx.engine.calls_to_cover(0)

    def closing_reserve(self, ctx: SearchContext) -> int:
        """Requests the checks after the search may still need: the answer-form variant of the winner scored on every
        dev example (with ``answer_form``) and the seed's do-no-harm check (:meth:`acceptance_reserve`)."""
        return (self.pool_pass(ctx) if self.config.answer_form else 0) + self.acceptance_reserve(ctx)

    @staticmethod
    def pool_pass(ctx: SearchContext) -> int:
        """Requests scoring one new candidate on every dev example takes."""
        return len(ctx.engine.examples) * ctx.engine.calls_per_example

    def closing_checks(self, reserve: int) -> str:
        """What :meth:`closing_reserve` keeps room for, in words, with its requests."""
        checks = "the answer-form check and the seed's check" if self.config.answer_form else "the seed's check"
        return f"{checks} on the winner's examples ({reserve})"

    def answer_form_variant(self, ctx: SearchContext, instructions: dict[str, str]) -> dict[str, str] | None:
        """``instructions`` with :data:`ANSWER_FORM` appended to each predictor that writes a labelled output (the
        fields the train examples hold), naming those fields; None when no predictor does or it is there already."""
        labels = set(ctx.train[0].labels().keys()) if ctx.train else set()
        variant = dict(instructions)
        for name, predictor in predictors(ctx.student):
            fields = [field for field in predictor.signature.output_fields if field in labels]
            sentence = ANSWER_FORM.format(fields=" and ".join(field.replace("_", " ") for field in fields))
            if fields and not instructions[name].rstrip().endswith(sentence):
                variant[name] = f"{instructions[name].rstrip()} {sentence}"
        return variant if variant != instructions else None

    def try_answer_form(self, ctx: SearchContext, final: Allocation) -> Allocation:
        """With ``answer_form``, the search's winner and its :meth:`answer_form_variant` scored on every dev example;
        the variant wins only with a higher mean there (a tie keeps the winner). A model that computes the answer
        and writes it inside a sentence scores 0 under exact match, and a prompt model rarely proposes the fix;
        the sentence is the engine's, so it cannot leak into what the prompt model writes.
        Skipped when the winner scores 1 on every dev example, when the variant is already a candidate, or when the
        cap leaves no room for it beside the seed's check (said in a note)."""
        if not self.config.answer_form or final.best.mean >= 1.0:
            return final
        engine = ctx.engine
        winner = final.best.arm
        variant = self.answer_form_variant(ctx, engine.arms[winner].record.instructions)
        if variant is None or engine.arm_of(variant) is not None:
            return final
        room = ctx.room()
        cost = self.pool_pass(ctx) + engine.calls_to_cover(winner)
        if room is not None and room - self.acceptance_reserve(ctx) < cost:
            ctx.note(f"the answer-form check did not fit: it takes {cost} requests, {room} are left beside the seed's check")
            return final
        after_the_search = 1 + max(candidate.record.round for candidate in engine.arms)
        arm = engine.add_candidate(variant, parent=engine.arms[winner].record.key, round=after_the_search, origin=ANSWER_FORM_ORIGIN)
        engine.phase = "the answer-form check (the winner asking for the answer alone)"
        everywhere = FullEvaluation(n_examples=len(engine.examples))
        if engine.calls_to_cover(winner):
            ctx.allocate([winner], policy=everywhere)
        variant_estimate = ctx.allocate([arm], policy=everywhere).best
        winner_mean = sum(engine.scores(winner).values()) / len(engine.examples)
        adopted = variant_estimate.mean > winner_mean  # a tie keeps the winner
        ctx.note(f"the answer form: the winner {'gave way to' if adopted else 'kept over'} its variant asking for the "
                 f"answer alone ({variant_estimate.mean:.3f} against {winner_mean:.3f} on every dev example)")
        ranking = [variant_estimate, *final.ranking] if adopted else [final.ranking[0], variant_estimate, *final.ranking[1:]]
        return final.model_copy(update={"ranking": ranking})

    def task_rule(self, ctx: SearchContext, predictor_name: str) -> str | None:
        """What turns an input into its correct output, as the prompt model reads it from train
        input/output pairs: a few readings, each from other examples (once per predictor and compile, one
        line each); None when ``task_rule`` is off, for a predictor inside a pipeline (its outputs are
        not in the examples), or when every call failed.

        The reflective methods (ProTeGi, OPRO, PE2) show it in their proposal requests: reasoning about a
        model's errors, a small prompt model easily loses sight of the task itself.
        """
        if not self.config.task_rule or len(predictors(ctx.student)) > 1:
            return None
        if predictor_name not in ctx.readings:
            sampler = random.Random(self.config.seed)
            readings: list[str] = []
            requests = [  # each from other examples: one reading alone is often too narrow
                [{"role": "user", "content": RULE_REQUEST.format(pairs=self.format_demos(ctx.student, sampler.sample(ctx.train, min(5, len(ctx.train)))))}]
                for _ in range(READINGS)
            ]
            for reply in self.ask_many(ctx, requests, temperature=0.8, max_tokens=80):
                reading = clean_instruction(reply) if reply else ""
                if reading and reading not in readings:
                    readings.append(reading)
            ctx.readings[predictor_name] = readings
            if readings:
                ctx.note(f"{predictor_name}: read from train examples: {' | '.join(readings)}")
        return "\n".join(f"- {reading}" for reading in ctx.readings[predictor_name]) or None

    def ask_prompt_lm(
        self, ctx: SearchContext, messages: list[dict[str, str]], *, temperature: float, max_tokens: int = 200, **extra: Any
    ) -> str | None:
        """One sample from the prompt LM (own rollout id and seed, so samples differ and cache one by one).

        A failed or timed-out call is retried (``prompt_retries``, exponential backoff from
        ``retry_wait``); one that still fails returns None and is counted in the report's failures.
        A cap reached, or a model that cannot be used at all (no API key...), stops the search.
        """
        return self.ask_many(ctx, [messages], temperature=temperature, max_tokens=max_tokens, **extra)[0]

    def ask_many(
        self, ctx: SearchContext, requests: Sequence[list[dict[str, str]]], *, temperature: float, max_tokens: int = 200, **extra: Any
    ) -> list[str | None]:
        """:meth:`ask_prompt_lm` for independent requests, sent together on the teleprompter's threads
        (one at a time to a local model); replies in the order of ``requests``.

        Each request gets the rollout id it would get asked alone in this order, so the replies, the
        run's record and its replay are those of asking one after another. The requests go out in
        groups no larger than the caps on requests and model calls leave room for, so a cap stops
        the search at the request where asking one at a time would stop it.

        Example:
            >>> self.ask_many(ctx, [[{"role": "user", "content": "Say a."}], [{"role": "user", "content": "Say b."}]],
            ...               temperature=0.8)  # doctest: +SKIP
            ['a', 'b']
        """
        if not requests:
            return []
        indices = [ctx.next_sample_index() for _ in requests]
        if indices[0] == 1:
            ctx.engine.status(f"proposing with {self.prompt_lm.model} (a local model loads on its first call)")
        calls = [
            functools.partial(self._ask_once, ctx, messages, index, temperature, max_tokens, extra)
            for messages, index in zip(requests, indices, strict=True)
        ]
        threads = 1 if getattr(self.prompt_lm, "is_local", False) else max(1, self.num_threads)
        outcomes: list[tuple[str | None, str | None]] = []
        while len(outcomes) < len(calls):
            room = max(1, ctx.engine.block.room().allows(len(calls) - len(outcomes)))  # one over a cap raises as alone
            group = calls[len(outcomes): len(outcomes) + min(threads, room)]
            if len(group) == 1:
                outcomes.append(group[0]())
            else:
                outcomes += run_with_deadlines(
                    [functools.partial(contextvars.copy_context().run, call) for call in group], threads=len(group), timeout=None
                )
        for _, reason in outcomes:
            if reason is not None:
                ctx.fail(reason)
        return [reply for reply, _ in outcomes]

    def _ask_once(
        self, ctx: SearchContext, messages: list[dict[str, str]], index: int, temperature: float, max_tokens: int, extra: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        """One request with its retries: (reply, None), or (None, the failure's reason)."""
        from cuecard.clients.lm import sampling_kwargs

        options = sampling_kwargs(self.config.seed, index, temperature) if temperature > 0 else {"temperature": 0.0}
        max_tokens = self.prompt_max_tokens or max_tokens
        call = functools.partial(self.prompt_lm, messages=messages, max_tokens=max_tokens, **options, **extra)
        retrying = Retrying(
            stop=stop_after_attempt(self.prompt_retries + 1),
            wait=wait_exponential(multiplier=self.retry_wait, max=60 * max(self.retry_wait, 0.01)),
            retry=retry_if_exception(lambda exc: not isinstance(exc, (CuecardError, KeyboardInterrupt))),
            reraise=True,
        )
        ctx.engine.proposal_asked()
        try:
            with ctx.engine.proposing():
                for attempt in retrying:
                    with attempt:
                        outputs = call_with_deadline(functools.partial(contextvars.copy_context().run, call), self.timeout)
                        if outputs is TIMED_OUT:
                            raise TimeoutError(f"no answer within {self.timeout:g} s")
        except CuecardError:
            raise
        except Exception as exc:
            return None, failure_reason(describe_error(exc, "prompt model"))
        return (outputs[0] if outputs else "") or "", None

    def rendered_prompt(
        self, ctx: SearchContext, predictor_name: str, instruction: str, inputs: dict[str, Any], instructions: dict[str, str] | None = None
    ) -> str:
        """The prompt the task LM really receives for ``predictor_name`` with ``instruction`` and ``inputs``,
        as rendered by the compile's adapter (several messages are shown with their roles)."""
        program = apply_instructions(ctx.student, {**(instructions or get_instructions(ctx.student)), predictor_name: instruction})
        predictor = dict(predictors(program))[predictor_name]
        messages = ctx.engine.scorer.adapter.format(predictor.signature, [dict(d) for d in predictor.demos], inputs)
        if len(messages) == 1:
            return str(messages[0]["content"])
        return "\n\n".join(f"({m['role']})\n{m['content']}" for m in messages)

    def predictor_io(
        self, ctx: SearchContext, predictor_name: str, example: dspy.Example, instructions: dict[str, str], output: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """What ``predictor_name`` saw and said on ``example``: for one predictor, the example's inputs and
        the scored ``output``; for a pipeline, the predictor's own step in a traced re-run (None if it failed)."""
        if len(predictors(ctx.student)) == 1:
            return dict(example.inputs()), dict(output or {})
        run = ctx.engine.trace(instructions, example)
        if run.error is not None:
            return None
        for name, inputs, outputs in run.steps:
            if name == predictor_name:
                return dict(inputs), {key: str(value) for key, value in outputs.items()}
        return None

    def format_demos(self, student: dspy.Module, examples: Sequence[dspy.Example], predictor_name: str | None = None) -> str:
        """Examples as ``Field: value`` blocks showing every input and output field by name."""
        from cuecard.clients.adapter import field_label

        named = dict(predictors(student))
        predictor = named[predictor_name] if predictor_name else next(iter(named.values()))
        signature = predictor.signature
        blocks = []
        for example in examples:
            lines = [
                f"{field_label(signature, name)}: {example[name]}"
                for name in [*signature.input_fields, *signature.output_fields]
                if name in example
            ]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


ANSWER_FORM = "Reply with the {fields} only, nothing else."
"""The sentence :meth:`Proposing.try_answer_form` appends to the search's winner; ``{fields}`` names the output fields."""
ANSWER_FORM_ORIGIN = "answer-form"
"""The origin of the variant :meth:`Proposing.try_answer_form` adds (its parent is the winner it extends)."""
EMPTY_STEPS_IN_A_ROW = 2
"""With ``until_cap``, the steps in a row that may give no usable new candidate before the search stops (a step
that gave nothing is asked again: the prompt model samples anew, and a small one often repeats itself once)."""

RULE_REQUEST = (
    "Someone followed one instruction to turn each input below into the output shown with it: the same "
    "instruction produced every one of them.\n\n{pairs}\n\n"
    "What was the instruction? It must fit every pair above, not just one of them. Reply with the instruction "
    "only, in one sentence: what to do with any input."
)
"""The request :meth:`Teleprompter.task_rule` sends (APE's forward induction, asked a few times)."""
READINGS = 3
"""How many readings of the task :meth:`Teleprompter.task_rule` asks for, each from other train examples."""

TEMPLATE_TALK = re.compile(r"<<[^<>]{1,40}>>|\[\[[^\[\]]{1,40}\]\]|\b(?:correct|model's) output\s*:", re.IGNORECASE)
"""Text a proposer copied from the meta-prompt's scaffolding (template slots, example labels) instead of
writing an instruction for the task."""


REPLY_FORMAT_DEBRIS = re.compile(r"""^\s*[{\[<]|["'](?:rule|instructions?)["']\s*:""", re.IGNORECASE)
"""A proposal that is markup or JSON, or carries the structured request's keys (``{"rule": ...}``): the proposer
wrote the reply's format into the instruction (a word-run screen misses it: it copies a key, not a sentence)."""

META_NGRAM = 6
"""A proposal sharing this many consecutive words with its meta-prompt is dropped."""
META_SHARED_WORDS = 4
"""A proposal whose content words come more than half from its meta-prompts, and at least this many, is dropped
(:meth:`Proposing.paraphrases_meta_prompt`)."""
_WORD = re.compile(r"[a-z0-9']+")
_SLOT = re.compile(r"\{[^{}]*\}|\[\[[^\[\]]*\]\]|<<[^<>]*>>|\[INSTRUCTION\]|</?[A-Za-z]+>")


def meta_ngrams(template: str, n: int = META_NGRAM) -> set[tuple[str, ...]]:
    """The runs of ``n`` words of a meta-prompt template, none spanning a slot (demos, history, the blank).

    >>> sorted(meta_ngrams("Say it. [[DEMOS]] Then write one new short word", n=3))[:2]
    [('new', 'short', 'word'), ('one', 'new', 'short')]
    """
    grams: set[tuple[str, ...]] = set()
    for piece in _SLOT.split(template):
        words = _WORD.findall(piece.lower())
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return grams


def _supports_json_schema(lm: Any) -> bool:
    check = getattr(lm, "supports_json_schema", None)
    return bool(check()) if callable(check) else False
