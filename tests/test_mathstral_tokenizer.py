"""Prompts under the real Mathstral-7B tokenizer (the v3 SentencePiece model that the PyPI package
mistral-common ships), loaded through transformers as a user's would be. Skipped where the optional
packages are missing."""
import json
import os
import shutil

import pytest

from drafts import build_prompt, encode_prompt
from evaluate import PROMPTS

mistral_common = pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import LlamaTokenizer
    src = os.path.join(os.path.dirname(mistral_common.__file__), "data",
                       "mistral_instruct_tokenizer_240323.model.v3")
    folder = tmp_path_factory.mktemp("mathstral")
    shutil.copy(src, folder / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(str(folder), legacy=False)


def test_prompt_starts_with_bos_once(tok):
    ids = encode_prompt(tok, build_prompt("What is $1+1$?", None))
    assert len(tok) == 32768 and ids[0] == tok.bos_token_id == 1 and ids.count(1) == 1
    assert tok.decode(ids[1:]) == build_prompt("What is $1+1$?", None)  # plain text round-trips


def test_only_the_draft_is_cut_to_the_3072_token_budget(tok):
    rows = [json.loads(line) for line in open("data/math_train.jsonl", encoding="utf-8")][:40]
    problem = rows[0]["problem"]
    draft = "\n\n".join(r["solution"] for r in rows)  # ~10k tokens of real math text
    prompt = build_prompt(problem, draft, tok, max_prompt_tokens=3072)
    n = len(encode_prompt(tok, prompt))
    assert 3072 - 8 <= n <= 3072  # filled to the budget, not over
    thinking = prompt.split("\n\nThinking: ", 1)[1]
    shown = thinking.split("\n\nThe thinking section may contain errors.")[0]
    assert prompt.startswith("Problem: " + problem + "\n\nThinking: ") and draft.startswith(shown)
    assert prompt.endswith("Put your final answer within \\boxed{}.\n\nCorrect Solution:")
    long_problem = " ".join(["x"] * 4000)
    # never cut the problem
    assert build_prompt(long_problem, draft, tok) == build_prompt(long_problem, None)


def test_instruct_prompt_uses_the_control_tokens(tok):
    ids = encode_prompt(tok, PROMPTS["instruct"]("What is $1+1$?"))
    assert ids[:2] == [1, 3] and ids[-1] == 4  # <s> [INST] ... [/INST]
