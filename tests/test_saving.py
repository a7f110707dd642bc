"""Saved programs: the cuecard block, rebuilding built-in programs, clear errors for bad files, and
identical answers after loading in a new process (every built-in program, every teleprompter)."""

import itertools
import json
import subprocess
import sys

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.datasets import reviews
from cuecard.metrics import exact_match
from cuecard.programs import AnswerWithReasoning, Classify, Extract, RewriteThenAnswer, SummarizeThenClassify
from cuecard.reporting.saving import FORMAT_VERSION, SavedProgramError
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi

LABELS = ["positive", "negative"]


def classify():
    return Classify("review -> sentiment", labels=LABELS, instructions="Is the review positive or negative?")


def scripted_compile(teleprompter_cls, **config):
    """A quick compile on scripted models (the logic is tested elsewhere): it yields a real report."""
    counter = itertools.count()

    def propose(messages):
        n = next(counter)
        return f"<INS>Answer positive or negative, take {n}.</INS> <START>Answer positive or negative, take {n}.<END>"

    task = scripted_lm(lambda m: "positive")
    prompt = scripted_lm(propose, name="scripted/prompt")
    teleprompter = teleprompter_cls(metric=exact_match("sentiment"), task_lm=task, prompt_lm=prompt, storage=":memory:",
                                    progress=False, **config)
    return teleprompter.compile(classify(), trainset=reviews())


COMPILES = {
    "ape": (APE, dict(num_subsamples=1, num_prompts_per_subsample=2)),
    "protegi": (ProTeGi, dict(rounds=1, minibatch_size=6, n_gradients=1, mc_samples_per_step=0, samples_per_eval=2,
                              eval_rounds=2, prompts_per_round=2)),
    "opro": (OPRO, dict(steps=1, instructions_per_step=2)),
    "pe2": (PE2, dict(steps=1, beam=1, proposals_per_prompt=1)),
}


def test_the_block_records_what_was_compiled_and_never_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000")
    compiled = scripted_compile(OPRO, steps=1, instructions_per_step=2)
    path = cuecard.save(compiled, tmp_path / "opro.json")
    text = path.read_text()
    assert "sk-test-not-a-real-key" not in text
    block = cuecard.read_block(path)
    report = compiled.cuecard_report
    assert block.format_version == FORMAT_VERSION
    assert block.program.class_name == "Classify" and block.program.kwargs["labels"] == LABELS
    assert block.teleprompter == "opro" and block.config["steps"] == 1 and block.seed == 0
    assert block.scores["dev"] == report.best.dev_score
    assert block.task_model == "scripted/lm" and block.prompt_model == "scripted/prompt"
    assert block.usage.calls == report.usage.calls > 0
    assert block.data_fingerprint and block.predictors == ["predict"]
    # plain dspy reads the same file
    plain = classify()
    plain.load(str(path))
    assert plain.predict.signature.instructions == report.best.instructions["predict"]
    # and cuecard rebuilds the program without user code, report included
    loaded = cuecard.load(path)
    assert isinstance(loaded, Classify)
    assert loaded.predict.signature.instructions == report.best.instructions["predict"]
    assert loaded.cuecard_report.best == report.best


def test_saving_is_atomic(tmp_path, monkeypatch):
    path = cuecard.save(classify(), tmp_path / "p.json")
    before = path.read_text()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dump", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        cuecard.save(classify(), path)
    assert path.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary left behind


def test_bad_files_get_clear_errors(tmp_path):
    good = cuecard.save(classify(), tmp_path / "good.json")
    state = json.loads(good.read_text())

    def write(name, content):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    newer = write("newer.json", {**state, "cuecard": {**state["cuecard"], "format_version": FORMAT_VERSION + 1}})
    with pytest.raises(SavedProgramError, match=f"format version {FORMAT_VERSION + 1}.*Upgrade cuecard"):
        cuecard.load(newer)
    truncated = write("truncated.json", good.read_text()[: len(good.read_text()) // 2])
    with pytest.raises(SavedProgramError, match=r"truncated.json: not valid JSON at line \d+"):
        cuecard.load(truncated)
    edited = write("edited.json", {**state, "cuecard": {**state["cuecard"], "predictors": "predict", "seed": "zero"}})
    with pytest.raises(SavedProgramError, match=r"block is malformed \(predictors: .*seed: "):
        cuecard.load(edited)
    unknown = write("unknown.json", {**state, "cuecard": {**state["cuecard"], "program": {"class": "os.system", "kwargs": {}}}})
    with pytest.raises(SavedProgramError, match="'os.system', which no installed package registers"):
        cuecard.load(unknown)
    with pytest.raises(SavedProgramError, match="does not match RewriteThenAnswer: predictors in the program but not "
                                                 r"the file \['rewrite', 'answer'\], in the file but not the program \['predict'\]"):
        cuecard.load(good, program=RewriteThenAnswer())
    other_fields = Classify("review, title -> sentiment", labels=LABELS)
    with pytest.raises(SavedProgramError, match="predictor 'predict' has 2 signature fields in the file but 3"):
        cuecard.load(good, program=other_fields)
    plain = tmp_path / "plain.json"
    dspy.Predict("review -> sentiment").save(str(plain))
    with pytest.raises(SavedProgramError, match="holds a plain dspy program.*pass it"):
        cuecard.load(plain)
    assert cuecard.load(plain, program=dspy.Predict("review -> sentiment")).signature.instructions
    with pytest.raises(SavedProgramError, match="never pickles"):
        cuecard.load(tmp_path / "program.pkl")
    with pytest.raises(SavedProgramError, match="no such file"):
        cuecard.load(tmp_path / "missing.json")


LOAD_AND_ANSWER = """
import json, sys, cuecard, dspy
lm = cuecard.LM("local")
out = {}
with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
    for path, inputs in json.loads(sys.argv[1]):
        program = cuecard.load(path)
        out[path] = [{k: str(v) for k, v in program(**row).items()} for row in inputs]
print(json.dumps(out))
"""


@pytest.mark.model
def test_every_builtin_program_and_teleprompter_answers_the_same_after_loading_in_a_new_process(local_lm, tmp_path):
    review = {"review": "The food was cold and the waiter was rude."}
    programs = {
        "classify": (classify(), [review]),
        "qa": (AnswerWithReasoning("question -> answer"), [{"question": "What is the capital of France?"}]),
        "extract": (Extract({"name": "str", "city": "str"}, source="bio"), [{"bio": "Maria lives in Lisbon."}]),
        "rewrite-answer": (RewriteThenAnswer("question -> answer"), [{"question": "capital france?"}]),
        "two-stage": (SummarizeThenClassify(LABELS, source="review", output="sentiment"), [review]),
    }
    for name, (cls, config) in COMPILES.items():
        programs[f"compiled-{name}"] = (scripted_compile(cls, **config), [review])
    jobs, expected = [], {}
    with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
        for name, (program, inputs) in programs.items():
            for _, predictor in program.named_predictors():  # a changed instruction must travel too
                predictor.signature = predictor.signature.with_instructions(predictor.signature.instructions + " Be brief.")
            path = str(cuecard.save(program, tmp_path / f"{name}.json"))
            jobs.append([path, inputs])
            expected[path] = [{k: str(v) for k, v in program(**row).items()} for row in inputs]
    result = subprocess.run([sys.executable, "-c", LOAD_AND_ANSWER, json.dumps(jobs)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for path, want in expected.items():
        assert answers[path] == want, path
