import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # the scripts' default paths (data/...) are relative to the repo root
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# test files that did not collect whole: skipped for want of an optional package (hypothesis,
# peft, mistral-common) or failing to import
UNCOLLECTED = []


def pytest_collectreport(report):
    if not report.passed:
        UNCOLLECTED.append(report.nodeid)


def pytest_collection_modifyitems(config, items):
    """tests/collected.txt is written from `pytest --collect-only`, which lists what collected and
    says nothing of a file skipped whole: there a test file that does not collect is an error
    naming it, and no test is listed (a run of the suite skips it as before)."""
    if config.option.collectonly and UNCOLLECTED:
        items.clear()
        raise pytest.UsageError(f"{', '.join(UNCOLLECTED)}: not collected, so no test is listed "
                                "(an optional package missing? pip install -r "
                                "requirements-test.txt)")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): the same random Mistral + BPE tokenizer that `--model tiny` builds."""
    from generation import load_model
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def sharp(tiny):
    """`tiny` with sharpened attention and next-token distributions. A random model attends and
    samples almost uniformly, so a slip in positions, masks or cache slots would barely move its
    tokens; here it changes them."""
    import copy

    import torch
    model = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
        model.lm_head.weight.mul_(30)
    return model, tiny[1]


@pytest.fixture
def standin(monkeypatch):
    """CUDA graphs on the CPU under tests/standin.py's stand-in; the graphs captured, in order."""
    from standin import cuda_graphs_on_the_cpu
    with cuda_graphs_on_the_cpu(monkeypatch) as captured:
        yield captured
