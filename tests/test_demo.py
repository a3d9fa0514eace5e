"""The README's first command (extras/demo.py): its toy task, the toy learner's build and
cache, and its table on a smaller setting (the whole demo, minutes long, does not run
here)."""
import contextlib
import io
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from typing import NamedTuple

import pytest
from safetensors.torch import load_file

from drafts import DRAFT_MODEL_TEMPLATE, TEMPLATE, build_prompt
from extras import demo
from reward import reward

SMALL = {**demo.RECIPE, "steps": 3, "batch": 4, "hidden": 32}   # the tokenizer in full
# a toy learner that copies and adds a little (the demo's: 600 steps of 64); a short run
TOY = {**demo.RECIPE, "steps": 200, "batch": 32}
SHORT = demo.Setting(steps=6, prompts=2, generations=4, new_tokens=32, lr=3e-3, drafts=1,
                     problems=200)
VARIANTS = ["no-draft", "mismatched-wrong", "matched-correct"]
TIMES = ("rollout_time", "update_time", "step_time")


def test_held_out_sums_are_disjoint_from_everything_the_learner_is_taught():
    train, held_out = demo.toy_problems(0)
    assert len(held_out) == demo.RECIPE["held_out"] and len(train) + len(held_out) == 1000
    assert not set(train) & set(held_out)
    assert demo.toy_problems(0) == (train, held_out) and demo.toy_problems(1) != (train, held_out)
    rng = random.Random(0)
    taught = [text for _ in range(3000) for text in demo.example(train, rng)]
    for a, b, c in held_out:
        assert not any(demo.problem(a, b, c) in text for text in taught)
    ids = [r["id"] for r in demo.rows(train + held_out)]
    assert len(set(ids)) == 1000


def test_answers_are_graded_by_reward_py():
    for row, (a, b, c) in zip(demo.rows([(9, 8, 7), (0, 0, 0)]), [(9, 8, 7), (0, 0, 0)]):
        assert row["answer"] == str(a + b + c) and row["level"] == 3
        assert reward(demo.solution(a, b, c), row["answer"], strict=True) == 1.0
        assert reward(demo.solution(a, b, c, (1, 0)), row["answer"], strict=True) == 0.0
    draft = demo.solution(1, 2, 3, (0, 2)).strip()
    assert reward(demo.copy_answer(draft), "8", strict=True) == 1.0        # it copies the 8
    assert demo.copy_answer("N/A") == " The thinking says \\boxed{N/A}."


def test_the_learner_is_taught_at_the_papers_prompts():
    train, _ = demo.toy_problems(0)
    rng, kinds = random.Random(0), set()
    for _ in range(300):
        prompt, completion = demo.example(train, rng)
        problem = prompt.split("Problem:")[1].split("?")[0].strip() + "?"
        if prompt.startswith("Solve the following"):                 # the draft model's prompt
            assert prompt == DRAFT_MODEL_TEMPLATE.format(problem=problem)
            kinds.add("drafter")
            continue
        draft = prompt.split("Thinking: ")[1].split("\n\nThe thinking section")[0]
        assert prompt == TEMPLATE.format(problem=problem, draft=draft)
        assert prompt == build_prompt(problem, None if draft == "N/A" else draft)
        assert prompt.endswith("Correct Solution:")
        kinds.add("N/A" if draft == "N/A" else "draft")
        kinds.add("copies" if completion.startswith(" The thinking says") else "solves")
    assert kinds == {"drafter", "N/A", "draft", "copies", "solves"}


def tensors(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_the_build_is_deterministic_and_its_cache_is_used_only_when_whole(tmp_path, monkeypatch):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    demo.build(a, seed=3, recipe=SMALL)
    demo.build(b, seed=3, recipe=SMALL)
    first, second = tensors(a), tensors(b)
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)
    with open(os.path.join(a, "tokenizer.json")) as f, open(os.path.join(b, "tokenizer.json")) as g:
        assert f.read() == g.read()
    assert not os.path.exists(a + ".tmp")
    assert demo.cached(a, 3, SMALL)
    assert not demo.cached(a, 4, SMALL)                                       # another seed
    assert not demo.cached(a, 3, {**SMALL, "version": SMALL["version"] + 1})  # another recipe
    assert not demo.cached(str(tmp_path / "none"), 3, SMALL)
    os.remove(os.path.join(b, demo.STAMP))                    # a copy that stopped half-way
    assert not demo.cached(b, 3, SMALL)
    with open(os.path.join(b, demo.STAMP), "w") as f:
        f.write('{"seed": 3, ')                               # a stamp cut short
    assert not demo.cached(b, 3, SMALL)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")
    monkeypatch.setattr(demo, "build", no_build)
    assert demo.learner(a, 3, SMALL) == a                     # cached: no build
    monkeypatch.undo()
    demo.learner(b, 3, SMALL)                                 # stale: rebuilt, as a would be
    assert demo.cached(b, 3, SMALL) and tensors(b).keys() == first.keys()
    other = str(tmp_path / "other")
    shutil.copytree(a, other)
    demo.learner(other, 4, SMALL)                             # another seed: rebuilt
    assert json.load(open(os.path.join(other, demo.STAMP)))["seed"] == 4
    assert any(not (tensors(other)[k] == first[k]).all() for k in first)


def test_the_scripts_load_the_toy_learner_and_it_copies_n_a_as_it_copies_numbers(tmp_path):
    from drafts import encode_prompt
    from generation import load_model
    folder = str(tmp_path / "model")
    demo.build(folder, seed=0, recipe=SMALL)
    model, tokenizer = load_model(folder, device="cpu")
    assert model.config.model_type == "mistral" and tokenizer.bos_token_id == 1
    assert encode_prompt(tokenizer, "x")[0] == 1
    first = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"][0]
    # GRPO moves the first token: with a draft or with N/A, copying must start alike
    assert first(demo.copy_answer("N/A")) == first(demo.copy_answer("\\boxed{13}"))
    text = demo.solution(9, 8, 7)
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_out_that_is_a_file_and_an_unknown_variant_are_one_line_errors(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SystemExit, match="^error: --out .*a file, not a folder$"):
        demo.main(["--out", str(path)])
    unknown = "^error: argument --variants: invalid choice: 'mw'"
    with pytest.raises(SystemExit, match=unknown):
        demo.main(["--variants", "mismatched-wrong", "mw"])


class Short(NamedTuple):
    out: str               # the demo's folder
    table_rows: list       # what pipeline() returned
    printed: str           # what it printed


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """The demo's pipeline on the small toy and the short setting."""
    out = str(tmp_path_factory.mktemp("demo"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        table_rows = demo.pipeline(out, 0, VARIANTS, SHORT, TOY)
    return Short(out, table_rows, printed.getvalue())


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def graded(evaluation):
    """pass@1 of an evaluation from its records: a completion is right when its last
    \\boxed{} holds a + b + c of its id toy-abc."""
    with open(evaluation + ".records.jsonl") as f:
        records = [json.loads(line) for line in f]
    boxes = lambda text: re.findall(r"\\boxed\{([^}]*)\}", text)
    gold = lambda r: str(sum(map(int, r["id"][4:])))                # toy-abc: a + b + c
    right = [boxes(r["completion"])[-1:] == [gold(r)] for r in records]
    assert len(records) == demo.RECIPE["held_out"]
    return sum(right) / len(right)


def test_the_table_shows_what_the_runs_files_hold(short):
    out = short.out
    cell = r"(\d\.\d\d) -> (\d\.\d\d)"
    pattern = rf"  (\S+) +{cell} +(?:{cell}|-) +(\d\.\d\d) base -> (\d\.\d\d) trained"
    lines = demo.table(short.table_rows, SHORT, TOY["held_out"]).splitlines()
    assert "6 GRPO steps each, 2 prompts x 4 rollouts a step" in lines[0]
    shown = [re.fullmatch(pattern, line) for line in lines[3:]]
    assert [m.group(1) for m in shown] == VARIANTS      # a row a variant, in order
    base = f"{graded(os.path.join(out, 'eval-base.json')):.2f}"
    for m, variant in zip(shown, VARIANTS):
        steps = metrics(os.path.join(out, variant))
        assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
        # thirds of 6 steps: steps 1-2 and 5-6
        ends = lambda key: [f"{(steps[0][key] + steps[1][key]) / 2:.2f}",
                            f"{(steps[4][key] + steps[5][key]) / 2:.2f}"]
        assert list(m.group(2, 3)) == ends("reward")
        if variant == "no-draft":                                   # no draft, no rate
            assert m.group(4) is None and steps[0]["draft_answer_rate"] is None
        else:
            assert list(m.group(4, 5)) == ends("draft_answer_rate")
        trained = os.path.join(out, f"eval-{variant}.json")
        assert m.group(6, 7) == (base, f"{graded(trained):.2f}")
        with open(trained) as f:
            assert json.load(f)["adapter"] == os.path.join(out, variant, "step-6")
    # not a table of zeros: the small toy copies drafts, and some runs get sums right
    assert any(float(x) > 0 for m in shown for x in m.group(4, 5) if x)
    assert any(float(x) > 0 for m in shown for x in m.group(2, 3, 7))


def test_a_printed_command_pasted_runs_the_same(short, tmp_path):
    command = next(line for line in short.printed.splitlines()
                   if line.startswith("$ python grpo.py") and "mismatched-wrong" in line)
    argv = shlex.split(command[2:])
    at = argv.index("--output-dir") + 1
    argv[at] = str(tmp_path / "pasted")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *argv[1:]], env=env, check=True, capture_output=True)
    same = lambda steps: [{k: v for k, v in s.items() if k not in TIMES} for s in steps]
    demo_run = os.path.join(short.out, "mismatched-wrong")
    assert same(metrics(argv[at])) == same(metrics(demo_run))


def test_a_rerun_starts_afresh_and_gives_the_same_rows(short, tmp_path):
    again = str(tmp_path / "again")
    shutil.copytree(short.out, again)       # its model cached, the last run's files there
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert demo.pipeline(again, 0, VARIANTS[1:], SHORT, TOY) == short.table_rows[1:]
    assert "(cached)" in printed.getvalue()
