"""The README's first command (extras/demo.py): its toy task, and the toy learner's build and cache.
The whole demo (about a minute) does not run here."""
import json
import os
import random
import shutil

import pytest
from safetensors.torch import load_file

from drafts import DRAFT_MODEL_TEMPLATE, TEMPLATE, build_prompt
from extras import demo
from reward import reward

SMALL = {**demo.RECIPE, "steps": 3, "batch": 4, "hidden": 32}   # the tokenizer in full


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


def test_out_that_is_a_file_is_one_line_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SystemExit, match="^error: --out .*a file, not a folder$"):
        demo.main(["--out", str(path)])
