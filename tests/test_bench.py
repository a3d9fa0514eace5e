"""bench.py cost: a run's wall-clock by arithmetic, one figure worked by hand here from
Mathstral-7B's config and the assumptions the command names; a damaged metrics file is one
line."""
import json
import subprocess
import sys

import pytest


def cost(*args):
    return subprocess.run([sys.executable, "bench.py", "cost", *args], capture_output=True,
                          text=True, timeout=600)


def test_cost_prices_a_metrics_step_by_hand(tmp_path):
    """A step whose 63 rows end at 64 tokens and one at the 4,096-token cap (mean 127), after
    100-token prompts, every group's rewards equal (no update): 64 decode steps of the 64 rows (4
    prompts padded to 128 tokens, own K/V read to width 128), then, compacted to 1 prompt x 1
    row, 4,032 steps of the capped row alone, its width growing by 128 every 128 steps. Each step
    reads every weight but the embedding's, the prompts' and its own K/V, 16 bytes a score and
    318 a logit, at 80 % of an H100's 3.35 TB/s, plus 2 µs for each of its kernels (bench.py
    ops), and each look costs 0.3 ms (its FLOPs at half of 989 TFLOP/s take less)."""
    path = tmp_path / "metrics.jsonl"
    record = {"step": 1, "completion_length": 127, "clipped_ratio": 1 / 64,
              "prompt_length": 100, "frac_reward_zero_std": 1.0}
    path.write_text(json.dumps(record) + "\n")
    out = cost("--metrics", str(path), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    (saved,) = tmp_path.glob("cost-*.json")
    got = json.load(open(saved))["cases"]["metrics"]["priced"]["H100"]["graphs"]["central"]
    h, i, kv, layers, vocab = 4096, 14336, 8 * 128, 32, 32768
    read = 2 * (layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h + vocab * h)  # bf16
    kv_token = 2 * layers * kv * 2
    ops = json.load(open("bench/results/ops-cpu-x86_64-h256.json"))
    kernels = ops["ours_kernels"]["at_32_layers"]

    def step(rows, prompts, width):
        reads = (read + prompts * 128 * kv_token + rows * width * kv_token
                 + rows * 32 * layers * (128 + width) * 16 + rows * vocab * 318)
        return reads / (0.8 * 3.35e12) + kernels * 2e-6
    tail = [16 * step(1, 1, min(4096, 128 * (t // 128 + 1))) for t in range(64, 4096, 16)]
    decode = 64 * step(64, 4, 128) + sum(tail) + 4096 // 16 * 3e-4
    assert got["decode_s"] == pytest.approx(decode, rel=1e-9)
    assert {k: v["steps"] for k, v in got["decode_by_rows"].items()} == {"64": 64, "1": 4032}
    assert got["update_s"] == 0


def test_cost_names_a_damaged_metrics_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "completion_length": 900, "clipped_ratio": 0}\n{"step": 2}\n')
    out = cost("--metrics", str(path))
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {path}:2: no field 'completion_length'"
