"""The pipeline on the random `--model tiny`, as subprocesses (the smoke run that was the README's
first command before extras/demo.py): drafts -> GRPO -> evaluation."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from reward import is_equiv, lenient_answer, reward


def run(*args):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_drafts_grpo_evaluate_on_the_tiny_model(tmp_path):
    pool, runs = str(tmp_path / "pool.jsonl"), str(tmp_path / "run")
    run("drafts.py", "generate", "--model", "tiny", "--data", "data/math_train.jsonl",
        "--out", pool, "--num-drafts", "4", "--max-new-tokens", "16", "--limit", "6")
    rows = [json.loads(line) for line in open(pool)]
    assert len(rows) == 6 and all(r["level"] in (3, 4, 5) and len(r["drafts"]) == 4 for r in rows)
    run("grpo.py", "--model", "tiny", "--variant", "mismatched-wrong", "--drafts", pool,
        "--output-dir", runs, "--max-steps", "4", "--prompts-per-step", "2",
        "--num-generations", "4", "--max-new-tokens", "16", "--lr", "5e-6", "--save-every", "2",
        "--seed", "0", "--log-completions", "1")
    metrics = [json.loads(line) for line in open(os.path.join(runs, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    logged = {"reward", "completion_length", "step_time", "frac_reward_zero_std", "skipped_steps"}
    assert logged <= set(metrics[0])
    # each step's rewards and answer rates, recomputed from its rollouts' texts
    gold = {r["id"]: r["answer"] for r in rows}
    lines = [json.loads(line) for line in open(os.path.join(runs, "completions.jsonl"))]
    for m in metrics:
        step = [x for x in lines if x["step"] == m["step"]]
        answers = [lenient_answer(x["completion"]) for x in step]
        assert len(step) == 2 * 4 and [x["answer"] for x in step] == answers
        rewards = [reward(x["completion"], gold[x["id"]]) for x in step]
        assert [x["reward"] for x in step] == rewards
        assert m["reward"] == pytest.approx(sum(rewards) / len(step))
        rate = lambda key: sum(is_equiv(a, key(x)) for a, x in zip(answers, step)) / len(step)
        assert m["draft_answer_rate"] == pytest.approx(rate(lambda x: x["draft_answer"]))
        assert m["gold_answer_rate"] == pytest.approx(rate(lambda x: gold[x["id"]]))
    for step in (2, 4):
        files = set(os.listdir(os.path.join(runs, f"step-{step}")))
        assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= files
    assert len(load_file(os.path.join(runs, "step-4", "adapter_model.safetensors"))) == 2 * 7 * 2
    out = run("evaluate.py", "--model", "tiny", "--adapter", os.path.join(runs, "step-4"),
              "--data", "data/math500.jsonl", "--limit", "4", "--max-new-tokens", "16",
              "--output", str(tmp_path / "r.json"))
    summary = json.load(open(tmp_path / "r.json"))
    assert summary["num_problems"] == 4 and "pass@1" in summary["strict"] and '"pass@1"' in out
    # what 0 means
    assert out.rstrip().endswith("tests/test_grpo.py, learning.") and "weights are random" in out


def test_the_first_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    """`bench.py gpu --quick` is what the first lent GPU runs, in minutes it cannot spend on a
    crash: its dry run on the tiny shape goes through every section without an error or a skip,
    the real loop included (two steps of grpo.train, a checkpoint, --resume for a third), and
    writes the JSON after each and its output beside it (here into this test's own folder: a
    stale file from an earlier run proves nothing)."""
    out = run("bench.py", "gpu", "--quick", "--shape", "tiny", "--out", str(tmp_path))
    (path,) = tmp_path.glob("gpu-*.json")
    result = json.load(open(path))
    sections = {"model", "left_padding", "copy_bandwidth_GBps", "decode", "graphs_vs_eager",
                "lora", "lora_change", "update_micro_batch", "nccl", "loop"}
    assert sections <= set(result) and set(result["section_s"]) == sections
    failed = [k for k in sections if isinstance(result[k], dict) and {"error", "skipped"} & set(
        result[k])]
    assert not failed, {k: result[k] for k in failed}
    assert out.count("wrote ") == len(sections)         # the JSON rewritten after each section
    assert result["left_padding"]["rows_identical"] == 12
    assert result["decode"]["eager"]["ms_per_step"] > 0
    assert result["decode"]["hf_generate"]["ms_per_step"] > 0
    assert result["graphs_vs_eager"]["rows_identical"] == result["graphs_vs_eager"]["rows"]
    assert result["graphs_vs_eager"]["compactions"] > 0
    assert result["lora_change"] == {"second_equals_eager": True, "changed": True, "graphs": 0}
    update = result["update_micro_batch"]
    assert update["alone"]["seconds"] > 0 and update["with_rollout_buffers"]["seconds"] > 0
    loop = result["loop"]
    assert loop["steps"] == [1, 2, 3] and loop["checkpoints"] == ["step-2", "step-3"]
    # the coin-flip reward: groups differ, so every step's update ran and moved the adapter
    assert all(m["frac_reward_zero_std"] < 1 and m["grad_norm"] > 0 for m in loop["metrics"])
    log = (tmp_path / "bench-gpu.log").read_text()
    assert all(line in log for line in out.splitlines() if line.startswith(("3.", "8.")))


def test_the_first_gpu_script_skips_what_its_budget_cannot_fit(tmp_path):
    """A section that the time left cannot fit is skipped, saying so; one that needs what did not
    come (the model) says why; the others run, and the JSON holds every section."""
    run("bench.py", "gpu", "--quick", "--shape", "tiny", "--out", str(tmp_path), "--budget", "30")
    (path,) = tmp_path.glob("gpu-*.json")
    result = json.load(open(path))
    assert result["model"]["skipped"].startswith("needs up to 60 s, ")   # 30 s left at most
    no_model = {"skipped": "no model (its build failed or did not run)"}
    assert all(result[k] == no_model for k in ("left_padding", "decode", "lora", "loop"))
    assert result["copy_bandwidth_GBps"] > 0 and result["nccl"]["timeout_minutes"] > 0


def test_bench_writes_the_readmes_figures_only_when_asked(tmp_path, monkeypatch):
    """A section writes bench/latest/ (not committed), or --out; bench/results/, the README's
    figures, only with --record: a run at other settings leaves them as they are."""
    import bench
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(bench, "LATEST", str(tmp_path / "latest"))
    bench.main(["grader"])
    assert os.listdir(tmp_path) == ["latest"]
    bench.main(["grader", "--out", str(tmp_path / "mine")])
    bench.main(["grader", "--record"])
    assert sorted(os.listdir(tmp_path)) == ["latest", "mine", "results"]
    name = os.listdir(tmp_path / "latest")
    assert name[0].startswith("grader-") and os.listdir(tmp_path / "results") == name
