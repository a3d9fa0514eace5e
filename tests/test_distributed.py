"""torchrun with 2 CPU processes (gloo) gives what one process gives: grpo.py (and --resume across
world sizes), evaluate.py and drafts.py generate; bad set-ups stop before a model loads. Each run
is a real torchrun."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import drafts
import evaluate
import grpo
import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A reward that depends on the completion's text (the tiny model's lenient reward is always 0):
# groups get non-zero advantages and the steps really move the adapter.
WRAPPER = """import sys
sys.path.insert(0, {root!r})
import grpo
grpo.reward = lambda text, gold, strict=False: float(len(text) % 2)
grpo.main(sys.argv[1:])
"""
GRPO_ARGS = ["--model", "tiny", "--variant", "no-draft", "--exclude", "", "--prompts-per-step", "3",
             "--num-generations", "2", "--max-new-tokens", "6", "--lr", "1e-3", "--save-every", "1"]


def torchrun(script, *args, n=2, env=None):
    """Run `script args` under torchrun with n CPU processes; returns the completed process (output
    captured)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={n}", script, *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def wrapper(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(WRAPPER.format(root=ROOT))
    return str(path)


def metrics(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def assert_same_run(a, b):
    """Same steps and rewards exactly; loss and grad norm, and the adapter, to float rounding."""
    ma, mb = metrics(a), metrics(b)
    exact = lambda m: (m["step"], m["reward"], m["reward_std"], m["frac_reward_zero_std"])
    assert [exact(m) for m in ma] == [exact(m) for m in mb]
    for x, y in zip(ma, mb):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], 1e-4)
    wa, wb = (load_file(str(r / "step-2" / "adapter_model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def test_grpo_two_processes_end_where_one_ends_and_resume_may_change_the_world_size(
        tmp_path, monkeypatch):
    """B x G = 3 x 2 rollouts: process 0 holds group 0 and half of group 1. Two processes end with
    one process's metrics and adapter (max abs <= 1e-5); one step on one process, then --resume on
    two, ends there too."""
    monkeypatch.setattr(grpo, "reward", lambda text, gold, strict=False: float(len(text) % 2))
    grpo.main([*GRPO_ARGS, "--max-steps", "2", "--output-dir", str(tmp_path / "one")])
    # the steps do learn
    assert any(m["frac_reward_zero_std"] < 1 for m in metrics(tmp_path / "one"))
    script = wrapper(tmp_path)
    two = torchrun(script, *GRPO_ARGS, "--max-steps", "2", "--output-dir", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    grpo.main([*GRPO_ARGS, "--max-steps", "1", "--output-dir", str(tmp_path / "switch")])
    resumed = torchrun(script, *GRPO_ARGS, "--max-steps", "2", "--output-dir", tmp_path / "switch",
                       "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "switch")
    # the adapter really moved, so the 1e-5 above is a comparison, not two untouched zero matrices
    moved = load_file(str(tmp_path / "one" / "step-2" / "adapter_model.safetensors"))
    assert max(v.abs().max().item() for k, v in moved.items() if "lora_B" in k) > 1e-4


def test_evaluate_two_processes_write_one_process_records_and_summary(tmp_path):
    # 3 chunks of 1 problem: a round with an idle process
    common = ["--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "3", "--samples", "4",
              "--k", "1,2,4", "--max-new-tokens", "8", "--batch-size", "4"]
    one = evaluate.main([*common, "--output", str(tmp_path / "one.json")])
    run = torchrun("evaluate.py", *common, "--output", tmp_path / "two.json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "two.json").read_text()) == one
    lines = lambda p: sorted((tmp_path / p).read_text().splitlines())
    assert lines("two.json.records.jsonl") == lines("one.json.records.jsonl")


def test_drafts_two_processes_write_one_process_pool(tmp_path):
    common = ["generate", "--model", "tiny", "--limit", "5", "--num-drafts", "2",
              "--max-new-tokens", "8", "--batch-size", "4"]  # chunks of 2 problems, 3 chunks
    drafts.main([*common, "--out", str(tmp_path / "one.jsonl")])
    run = torchrun("drafts.py", *common, "--out", tmp_path / "two.jsonl")
    assert run.returncode == 0, run.stderr[-3000:]
    # same order too
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def test_processes_wait_for_each_other_up_to_the_timeout_they_are_given(tmp_path):
    """Uneven chunks: process 1's takes 8 s. With $DIST_TIMEOUT_MINUTES at 3 s, process 0 stops
    waiting and the run ends with one line naming the variable (the default, 180 minutes, outlasts
    an AIME chunk at n = 2,048, where NCCL's own 10 minutes would tear the run down); the other
    torchrun tests run under the default."""
    script = tmp_path / "slow.py"
    script.write_text(f"import os, sys, time\nsys.path.insert(0, {ROOT!r})\n"
                      "import evaluate, generation, processes\n"
                      "work = generation.generate\n"
                      "def slow(*a, **kw):\n"
                      "    time.sleep(8 * (os.environ['RANK'] == '1'))\n"
                      "    return work(*a, **kw)\n"
                      "generation.generate = slow\n"
                      "processes.run_main(lambda: evaluate.main(sys.argv[1:]))\n")
    run = torchrun(str(script), "--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "2",
                   "--max-new-tokens", "4", "--batch-size", "1", "--output", tmp_path / "r.json",
                   env={processes.TIMEOUT: "0.05"})
    assert run.returncode != 0, run.stderr[-3000:]
    assert f"waited longer than ${processes.TIMEOUT}" in run.stderr, run.stderr[-3000:]
    assert "Timed out waiting 3000ms" in run.stderr


def test_run_main_tears_nccl_down_and_skips_only_gloos_teardown(monkeypatch):
    import torch.distributed as dist
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(processes, "gather", lambda obj: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(os, "_exit", lambda code: calls.append(f"_exit {code}"))
    for backend in ("nccl", "gloo"):
        monkeypatch.setattr(dist, "get_backend", lambda: backend)
        processes.run_main(lambda: None)
    assert calls == ["barrier", "destroy", "barrier", "_exit 0"]


def test_bad_setups_stop_before_a_model_loads(tmp_path):
    """More processes than rollouts, and processes started with different flags (rank 0's are the
    run's)."""
    run = torchrun("grpo.py", *GRPO_ARGS, "--prompts-per-step", "1", "--num-generations", "1",
                   "--output-dir", tmp_path / "few")
    assert run.returncode != 0 and "2 processes for 1 rollouts a step" in run.stderr
    assert "training prompts" not in run.stdout and not (tmp_path / "few").exists()
    script = tmp_path / "differ.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, {ROOT!r})\nimport grpo\n"
                      "grpo.main(sys.argv[1:] + "
                      "(['--lr', '0.5'] if os.environ['RANK'] == '1' else []))\n")
    run = torchrun(str(script), *GRPO_ARGS, "--output-dir", tmp_path / "differ")
    assert run.returncode != 0 and "process 1: --lr" in run.stderr, run.stderr[-3000:]
    assert "training prompts" not in run.stdout and not (tmp_path / "differ").exists()
