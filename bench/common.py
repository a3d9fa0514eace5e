"""What the sections share: where results go (save), timing, peak memory, the model
shapes."""
import json
import os
import platform
import statistics
import time
import zlib

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository's root

# mistralai/Mathstral-7B-v0.1's config.json
MATHSTRAL_SHAPE = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, rope_theta=1e6, rms_norm_eps=1e-5,
                       max_position_embeddings=32768)
# bench.py gpu --shape tiny: the same layout, small enough for a CPU
TINY_SHAPE = dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
                  rms_norm_eps=1e-5, max_position_embeddings=32768)


RESULTS = os.path.join(HERE, "bench", "results")   # the figures README.md and docs/ quote
LATEST = os.path.join(HERE, "bench", "latest")     # a run's own (not committed)


def save(section, result, folder):
    """<folder>/<section>-<device>[-tags].json, written whole, then renamed into place
    (folder: bench.py's --out: bench/latest, or bench/results with --record)."""
    os.makedirs(folder, exist_ok=True)
    name = result.get("device", platform.node()).replace(" ", "_").replace("/", "_")
    tag = f"-h{result['hidden']}" if "hidden" in result else ""
    tag += "-drafts" if result.get("drafts") else ""
    tag += f"-p{result['prompt_tokens']}" if section == "update" else ""
    path = os.path.join(folder, f"{section}-{name}{tag}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}", flush=True)
    return path


def cpu_name():
    return "cpu-" + platform.machine()


def small_model(tokenizer, hidden=256, layers=4):
    """A random Mistral (Mathstral's layout). hidden 64 x 2 layers is `--model tiny`;
    256 x 4 is big enough that the model's arithmetic, not Python, dominates a CPU
    step."""
    from extras.tiny import model as tiny_model
    return tiny_model(len(tokenizer), seed=0, hidden=hidden, layers=layers,
                      heads=4 if hidden < 128 else 8, kv_heads=2)


def coin(text, gold):
    """A reward that ignores the answer: a deterministic coin flip per completion
    text, so that every group's rewards differ and every group runs the update."""
    return float(zlib.crc32(text.encode()) % 2)


def timed(fn, device):
    """(seconds, fn()), the GPU's queue drained before and after on CUDA."""
    import torch
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def median_time(fn, runs):
    """Median seconds of `runs` calls of fn() after one untimed call (warm-up: the
    allocator, lazy imports)."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def policy_update(model, prompts, completions, advantages, max_new_tokens, **kw):
    """grpo.policy_update on B prompts x G completions, all this process's (normaliser
    B * G * max_new_tokens, as train() uses); kw: its settings and sampled=."""
    import grpo
    sampled = kw.pop("sampled", None)
    groups = grpo.learning_groups(prompts, completions, advantages, sampled=sampled)
    normaliser = len(prompts) * len(completions[0]) * max_new_tokens
    return grpo.policy_update(model, groups, normaliser, **kw)
