import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)                     # the scripts' default paths (data/...) are relative to the repo root
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): the same random Mistral + BPE tokenizer that `--model tiny` builds."""
    from generation import load_model
    return load_model("tiny", device="cpu")
