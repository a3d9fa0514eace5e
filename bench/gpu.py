"""bench.py gpu: the first command a lent GPU runs, on a random model of Mathstral-7B's
exact shape (bf16, made on the device: no download). Its JSON (bench/results/
gpu-<device>.json, or in --out, which defaults to $OUT) is rewritten after every
section, so a run cut short keeps what it measured; with --out its output is kept there
too (bench-gpu.log). Every step is guarded: one that fails records its error and the
next ones still run; one that needs what failed (the model, LoRA) records why it did not
run; one that the time left cannot fit is skipped, saying so.

  PYTHONUNBUFFERED=1 python -u bench.py gpu --quick    # <= 5 minutes, an H100 or H200

--quick, in order, each with its budget in seconds (at most, on an H100; an eager
decode step ~35 ms, host-bound; a replayed one ~12 ms at the worst case; the check that
every Graphs runs first, 160 eager steps of 4 rows and 160 replayed, ~7 s):
  model   60  7.25 B weights made on the device in bf16 (seconds; a minute budgeted)
  1.      10  left padding: prompts of 5, 37 and 90 tokens sampled together equal each
              alone on this device's kernels; the NaN a left-padded batch gets from the
              fused kernels (what generate avoids): 4 decodes of 16 eager steps
  2.       5  copy bandwidth (the HBM roofline's ceiling)
  3.      60  decode, 64 rows after 4 x 3,072-token prompts (the paper's worst case,
              buffers for 4,096 new tokens): eagerly, steps 33-96 (~3 s); from CUDA
              graphs, a first decode of 256 steps, untimed (the check, a capture per
              width), then a second, identical one timed over steps 33-256 (replays
              only: every shape it meets was captured in the first; ~3 s each); then,
              the graphs' buffers released, HF generate for 1 and 33 steps after a
              warm-up (3 prefills of 64 x 3,072 tokens, ~5 s each)
  4.      45  CUDA graphs against eager decoding, greedy, 16 rows x 272 steps (two width
              changes, an EOS that makes rows leave the batch): 2 eager decodes (~10 s
              each), the check and 272 replayed steps (~10 s)
  lora     5  apply_lora and activation checkpointing
  5.      20  a LoRA change between two rollouts seen by replayed graphs: a check, 3
              decodes of 64 steps
  6.      30  one update micro-batch at the worst case (a 3,072-token prompt, 2 x 4,096
              completion tokens): alone (warm-up and timed, ~3 s each), then with a
              worst-case rollout's buffers and graphs alive, as the loop keeps them
              through its update (a check, 4 prefills, 16 steps): its peak
  7.       5  NCCL with the process group's timeout
  8.      45  the loop: grpo.train, 2 steps at the paper's batch (4 prompts x 16
              rollouts of 128 tokens, a coin-flip reward: every group updates), then
              --resume for a third: merges, the check (twice), captures, rollouts (~2
              s), updates (~3 s), AdamW, checkpoints (~1 s)
  total  285  and ~15 s of imports before the clock starts: <= 300 s
Without --quick, then: decode at batch 16/64/128 against the copying path and HF
generate, the sampler, two training steps at the cap by hand (bench/gpu_long.py, no
budget). --shape tiny runs it all on a CPU in seconds (a dry run, in the test suite:
CUDA graphs, NCCL and peak memory need a GPU)."""
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from transformers import MistralConfig, MistralForCausalLM

import generation
import grpo
import processes
from bench.common import HERE, MATHSTRAL_SHAPE, TINY_SHAPE, coin, policy_update, save, timed
from bench.rollout import left_pad
from drafts import load_jsonl
from extras.graphs import cuda_graphs
from extras.tiny import tokenizer as tiny_tokenizer
from generation import cache_bytes, generate
from lora import apply_lora, lora_modules, merged

QUICK_BUDGET = 285   # seconds from bench_gpu's start; the imports before it take ~15 s
BUDGET = {"model": 60, "left_padding": 10, "copy_bandwidth_GBps": 5, "decode": 60,
          "graphs_vs_eager": 45, "lora": 5, "lora_change": 20, "update_micro_batch": 30,
          "nccl": 5, "loop": 45}


# ------------------------------------------------------------ the run's record
@dataclasses.dataclass
class Report:
    """bench.py gpu's JSON (`result`), rewritten into `folder` after every section;
    `deadline`: the wall-clock time by which the run must end."""
    result: dict
    folder: str
    deadline: float
    device: str


def section(report, key, run, line, missing=None, summary=None):
    """report.result[key] = run() (or summary(run()) where the value is no JSON),
    printed with line(value), then saved; returns the value, None if it did not come.
    Not run, saying why: when `missing` names what it needs and lacks, or when the
    time left is under BUDGET[key]. An error is recorded with the peak memory, and
    what it held is freed."""
    left, value = report.deadline - time.time(), None
    start = time.time()
    if missing:
        record, text = {"skipped": missing}, f"{key} not run: {missing}"
    elif left < BUDGET.get(key, 0):
        why = f"needs up to {BUDGET[key]} s, {max(left, 0):.0f} s left of the budget"
        record, text = {"skipped": why}, f"{key} skipped: {why}"
    else:
        try:
            value = run()
            record = summary(value) if summary else value
            text = line(record)
        except Exception as e:  # recorded in the JSON; the next section still runs
            value, record = None, failure(e, report.device)
            text = f"{key} failed: {record['error'][:300]}"
        release(report.device)
    report.result[key] = record
    report.result.setdefault("section_s", {})[key] = round(time.time() - start, 2)
    print(text, flush=True)
    save("gpu", report.result, report.folder)
    return value


def failure(e, device):
    return {"error": f"{type(e).__name__}: {e}"[:2000], **peak_memory(device)}


def peak_memory(device):
    """Peak GB allocated and reserved since the last reset (CUDA), then a reset; {} on
    the CPU."""
    if device != "cuda":
        return {}
    peak = {"peak_allocated_GB": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_GB": torch.cuda.max_memory_reserved() / 1e9}
    torch.cuda.reset_peak_memory_stats()
    return peak


def peak_text(x):
    return (f"peak {x.get('peak_allocated_GB', 0):.1f} GB allocated / "
            f"{x.get('peak_reserved_GB', 0):.1f} GB reserved")


def held_GB(device):
    return torch.cuda.memory_allocated() / 1e9 if device == "cuda" else 0.0


def release(device):
    """Free what nothing references any more (a dropped Graphs' buffers and pool)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def graph_stats(graphs):
    """Graphs.stats() ({"graphs": count, "pool_bytes": ...}) where extras/graphs.py
    has it, else the count; {"graphs": 0} without graphs (the CPU)."""
    if graphs is None:
        return {"graphs": 0}
    stats = getattr(graphs, "stats", None)
    return stats() if stats else {"graphs": len(graphs.captured)}


def forget_base_copy(model):
    """Drop the copy of the base weights an earlier merge kept (lora.merge_lora), so
    that the next merge places it (GPU or page-locked host) from its own spare bytes,
    as a run's first merge does."""
    for _, m in lora_modules(model):
        m.base_copy = None


class Tee:
    """A stream that also writes into a log file (bench.py gpu's output, kept beside
    its JSON)."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.log.write(text)
        return self.stream.write(text)

    def flush(self):
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


# ---------------------------------------------------------------- the sections
def build_model(config, device):
    """A random model of `config`'s shape, made on the device: bf16 on CUDA, fp32 on
    the CPU."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            return MistralForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def left_padding(model, rand, device):
    """Section 1: prompts of 5, 37 and 90 tokens sampled together against each alone;
    NaN in a left-padded batch through the model's own attention."""
    ids = [rand(n) for n in (5, 37, 90)]
    kw = dict(n=4, max_new_tokens=16, temperature=1.0, eos_token_id=-1, pad_token_id=0,
              seed=1)
    alone = [generate(model, [x], prompt_numbers=[i], **kw)[0] for i, x in enumerate(ids)]
    together = generate(model, ids, **kw)
    padded, mask, positions = left_pad(ids, 0, device)
    with torch.no_grad():
        hidden = model.model(input_ids=padded, attention_mask=mask,
                             position_ids=positions).last_hidden_state
    nan = torch.isnan(hidden).any(-1)
    same = sum(a == b for a, b in zip(sum(alone, []), sum(together, [])))
    return {"rows_identical": same, "rows": 12,
            "padded_batch_nan_positions": int(nan.sum()),
            "padded_batch_nan_in_real_tokens": int((nan & mask.bool()).sum())}


def left_padding_line(v):
    return (f"1. left padding: {v['rows_identical']} of 12 rows sampled together equal "
            f"each prompt alone; a left-padded batch through this device's fused kernels: "
            f"{v['padded_batch_nan_positions']} positions NaN "
            f"({v['padded_batch_nan_in_real_tokens']} of them real tokens)")


def copy_bandwidth(nbytes, device):
    """Device-to-device copy of random bytes, GB/s counting bytes read plus written
    (the roofline's ceiling)."""
    x = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    t, _ = timed(lambda: [y.copy_(x) for _ in range(10)], device)
    return 2 * nbytes * 10 / t / 1e9


def decode_seconds(model, prompts, rows, new_tokens, window, graphs, device):
    """Seconds a decode step over steps window[0] + 1 .. window[1] of generate() (the
    prompts x rows in all, buffers for new_tokens, no EOS), timed at the host's looks
    (generate's interrupt hook, every generation.CHECK_EVERY steps, the GPU's queue
    drained at each), then stopped."""
    every, marks = generation.CHECK_EVERY, []

    def look():
        timed(lambda: None, device)
        marks.append(time.perf_counter())
        return len(marks) * every >= window[1]
    generate(model, prompts, n=rows // len(prompts), max_new_tokens=new_tokens,
             eos_token_id=-1, pad_token_id=0, batch_size=rows, graphs=graphs,
             interrupt=look)
    first, last = (marks[step // every - 1] for step in window)
    return (last - first) / (window[1] - window[0])


def gpu_decode(model, prompts, G, L, windows, device, bandwidth, read):
    """Section 3: decode eagerly, then from CUDA graphs (a first decode captures every
    shape the timed one meets), then HF generate once the graphs' buffers are gone.
    read(t): the bytes a step at context t must read (the roofline's)."""
    B, rows = len(prompts), len(prompts) * G
    out = {"prompts": B, "rows": rows, "prompt_tokens": len(prompts[0]), "new_tokens": L}
    modes = {"eager": (None, windows[0])}
    if device == "cuda":
        modes["cuda_graphs"] = (cuda_graphs, windows[1])
    for mode, (make, window) in modes.items():
        try:  # a failure is recorded; the other mode still runs
            graphs = make() if make else None
            if graphs:  # the check, and a capture per width, before the timed decode
                warm = decode_seconds(model, prompts, rows, L, window, graphs, device)
            s = decode_seconds(model, prompts, rows, L, window, graphs, device)
            mid = sum(window) / 2
            at = read(mid) / (bandwidth * 1e9)  # the roofline's step at that context
            out[mode] = {"ms_per_step": 1e3 * s, "tok_s": rows / s,
                         "roofline_tok_s": rows / at, "of_roofline": at / s,
                         "rollout_s_extrapolated": s * sum(map(read, range(L))) / read(mid),
                         "window": f"steps {window[0] + 1}-{window[1]}",
                         **graph_stats(graphs), "held_GB": held_GB(device),
                         **peak_memory(device)}
            if graphs:
                out[mode]["window"] += (" of a second, identical decode: every shape it "
                                        "meets was captured in the first, untimed")
                out[mode]["first_decode_ms_per_step"] = 1e3 * warm
        except Exception as e:
            out[mode] = failure(e, device)
        graphs = None   # its buffers and pool go with it: HF generate needs the room
        release(device)
    out["hf_generate"] = hf_generate(model, prompts, G, device)
    timed_modes = [m for m in modes if "ms_per_step" in out[m]]
    best = min(timed_modes, key=lambda m: out[m]["ms_per_step"], default="eager")
    ours = out[best].get("ms_per_step", float("nan"))
    out.update(best=best, vs_hf=out["hf_generate"]["ms_per_step"] / ours)
    out["arithmetic"] = (
        "rollout_s_extrapolated = ms_per_step x sum over t < new_tokens of read(t) / "
        "read(t_window), read(t) = weights + (prompts x prompt_tokens + rows x t) x "
        "kv_bytes_per_token, t_window the mean context of the timed steps: the steps "
        "stay as memory-bound as measured")
    return out


def hf_generate(model, prompts, G, device):
    """HF generate on the same rows: ms a step over 32 steps (33 steps' time less 1's)."""
    ids = torch.tensor([p for p in prompts for _ in range(G)], device=device)
    steps = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=True, top_k=0, pad_token_id=0)
    try:
        with torch.no_grad():
            steps(2)
            t1, _ = timed(lambda: steps(1), device)
            tn, _ = timed(lambda: steps(33), device)
        return {"ms_per_step": 1e3 * (tn - t1) / 32, "held_GB": held_GB(device),
                **peak_memory(device)}
    except Exception as e:
        return {**failure(e, device), "ms_per_step": float("nan")}


def decode_line(d):
    modes = []
    for m in ("eager", "cuda_graphs"):
        x = d.get(m)
        if x is None:
            continue
        modes.append(f"{m} failed: {x['error'][:300]}" if "error" in x else (
            f"{m} {x['ms_per_step']:.1f} ms per step ({x['window'].split(' of ')[0]}), "
            f"{100 * x['of_roofline']:.0f} % of the roofline, a whole rollout "
            f"~{x['rollout_s_extrapolated']:.0f} s, {peak_text(x)}"))
    hf = d["hf_generate"]
    return (f"3. decode, {d['rows']} rows after {d['prompts']} x {d['prompt_tokens']}-"
            f"token prompts: {'; '.join(modes)}; HF generate {hf['ms_per_step']:.1f} ms "
            f"per step, {peak_text(hf)} ({d['vs_hf']:.1f}x slower than {d['best']})")


def compactions(fn):
    """fn()'s result and how many times rows left the batch during it."""
    calls, compact = [], generation.compact

    def counting(cache, *a):        # whether each look's compaction shrank the batch
        out = compact(cache, *a)
        calls.append(out[0] is not cache)
        return out
    generation.compact = counting
    try:
        return fn(), sum(calls)
    finally:
        generation.compact = compact


def gpu_graphs_vs_eager(model, rand, device, rows=16, steps=272, prompt_tokens=(200, 900)):
    """Section 4: greedy decoding from CUDA graphs against eager: 2 prompts x 8 rows
    for `steps` tokens (widths 128, 256, 384: two width changes), with an EOS some
    rows sample mid-way (rows leave the batch: compaction); identical tokens, and the
    largest difference of the last logits."""
    prompts = [rand(n) for n in prompt_tokens]
    kw = dict(n=rows // 2, max_new_tokens=steps, temperature=0.0, pad_token_id=0)
    free = generate(model, prompts, eos_token_id=-1, **kw)
    flat = [row for group in free for row in group]
    skip = steps // 8
    spread = lambda t: len({row.index(t) // 16 for row in flat if t in row[skip:]})
    # a token that ends rows at many looks
    eos = max({t for row in flat for t in row[skip:]}, key=spread)
    logits, out = {}, {}
    step = generation.decode_one_token

    def keep_logits(label):
        def wrapped(model_, cache, rows_, *a, **k):
            step(model_, cache, rows_, *a, **k)
            logits[label] = rows_.logits
        return wrapped
    for label, graphs in (("eager", None), ("graphs", cuda_graphs())):
        generation.decode_one_token = keep_logits(label)
        try:
            out[label], compacted = compactions(lambda: generate(
                model, prompts, eos_token_id=eos, graphs=graphs, **kw))
        finally:
            generation.decode_one_token = step
    eager, graphed = logits["eager"], logits.get("graphs", logits["eager"])
    same = sum(a == b for a, b in zip(sum(out["eager"], []), sum(out["graphs"], [])))
    lengths = [len(row) for group in out["eager"] for row in group]
    difference = None
    if eager.shape == graphed.shape:
        difference = (eager.float() - graphed.float()).abs().max().item()
    return {"rows": rows, "steps": steps, "eos": eos, "compactions": compacted,
            "lengths": [min(lengths), max(lengths)], "rows_identical": same,
            "max_logit_difference": difference, "captured_on_cuda": device == "cuda"}


def graphs_line(v):
    return (f"4. CUDA graphs vs eager, greedy, {v['rows']} rows x {v['steps']} steps "
            f"(lengths {v['lengths'][0]}-{v['lengths'][1]}, {v['compactions']} "
            f"compactions): {v['rows_identical']} of {v['rows']} rows identical, largest "
            f"logit difference {v['max_logit_difference']}"
            + ("" if v["captured_on_cuda"] else " (no CUDA: eager against eager)"))


def gpu_lora_change(model, rand):
    """Section 5: a LoRA change between two rollouts reaches replayed graphs: merge,
    decode (graphs captured), unmerge, change B, merge, decode again (replayed): the
    second decode equals eager decoding of the changed adapter and differs from the
    first."""
    prompts, graphs = [rand(300)], cuda_graphs()
    kw = dict(n=8, max_new_tokens=64, temperature=0.0, eos_token_id=-1, pad_token_id=0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.normal_(0, 0.02)
    with merged(model):
        first = generate(model, prompts, graphs=graphs, **kw)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.mul_(-1)
    with merged(model):
        second = generate(model, prompts, graphs=graphs, **kw)
        eager = generate(model, prompts, **kw)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.zero_()
    return {"second_equals_eager": second == eager, "changed": first != second,
            "graphs": graph_stats(graphs)["graphs"]}


def lora_change_line(v):
    return (f"5. LoRA changed between two rollouts: the replayed graphs' tokens equal "
            f"eager decoding's: {v['second_equals_eager']}; they changed: {v['changed']}")


def gpu_update(model, rand, device, B, G, P, L):
    """Section 6: one update micro-batch at the worst case (a P-token prompt, 2
    completions of L tokens: two rows fill --micro-batch-tokens 16,384), timed and its
    peak: alone, then as the loop runs it, after a rollout of B x G rows with buffers
    for L new tokens (LoRA merged, stopped at its first look) whose graphs and buffers
    stay alive through the update."""
    prompt, completions = [rand(P)], [[rand(L), rand(L)]]
    advantages = torch.tensor([[1.0, -1.0]])
    run = lambda: policy_update(model, prompt, completions, advantages, L)
    model.train()
    run()   # warm-up
    peak_memory(device)
    seconds, _ = timed(run, device)
    out = {"prompt_tokens": P, "completion_tokens": [L, L],
           "alone": {"seconds": seconds, **peak_memory(device)}}
    forget_base_copy(model)   # placed by this merge's spare bytes, as in a run
    graphs = cuda_graphs()
    model.eval()
    with merged(model, cache_bytes(model, B * P, B * G, L)):
        generate(model, [rand(P) for _ in range(B)], n=G, max_new_tokens=L,
                 eos_token_id=-1, pad_token_id=0, batch_size=B * G, graphs=graphs,
                 interrupt=lambda: True)
    model.train()
    held = held_GB(device)
    peak_memory(device)
    seconds, _ = timed(run, device)
    out["with_rollout_buffers"] = {"seconds": seconds, "held_GB": held,
                                   **graph_stats(graphs), **peak_memory(device)}
    return out


def update_line(v):
    alone, loop = v["alone"], v["with_rollout_buffers"]
    return (f"6. update micro-batch ({v['prompt_tokens']} + 2 x "
            f"{v['completion_tokens'][0]} tokens): alone {alone['seconds']:.2f} s, "
            f"{peak_text(alone)}; with a rollout's buffers and graphs alive (the loop's "
            f"state, {loop['held_GB']:.1f} GB held) {loop['seconds']:.2f} s, "
            f"{peak_text(loop)}; a training step at the cap ~{v['training_step_s']:.0f} s")


def gpu_nccl(device):
    """Section 7: a one-process NCCL group with the run's timeout, and an all_reduce."""
    minutes = float(os.environ.get(processes.TIMEOUT, 180))
    out = {"timeout_minutes": minutes, "variable": processes.TIMEOUT}
    if device == "cuda":
        timeout = datetime.timedelta(minutes=minutes)
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0,
                                world_size=1, timeout=timeout)
        x = torch.ones(1, device=device)
        dist.all_reduce(x)
        out.update(version=".".join(map(str, torch.cuda.nccl.version())),
                   all_reduce_ok=x.item() == 1.0)
        dist.destroy_process_group()
    return out


def nccl_line(v):
    return (f"7. NCCL {v.get('version', '(no GPU)')}: a process group with a "
            f"{v['timeout_minutes']:.0f}-minute timeout (${v['variable']}), all_reduce "
            f"{'ok' if v.get('all_reduce_ok') else 'not run'}")


def gpu_loop(model, tokenizer, device, new_tokens):
    """Section 8: the real loop, grpo.train, on this model: 2 steps at the paper's
    batch (4 prompts x 16 rollouts of at most new_tokens, no-draft prompts), the
    coin-flip reward (every group's rewards differ, so every group updates): merge,
    the graphs' check and captures, rollouts, update, AdamW, a checkpoint at step 2;
    then --resume for step 3 (a fresh train(), as a restarted job runs). Each step's
    metrics.jsonl record and the peak memory."""
    path = os.path.join(HERE, "data", "math_train.jsonl")
    problems = [dict(r, draft=None) for r in load_jsonl(path)
                if r.get("level") in (3, 4, 5) and r["answer"]][:12]
    folder = tempfile.mkdtemp(prefix="bench-gpu-loop-")
    flags = ["--model", "random", "--variant", "no-draft", "--output-dir", folder,
             "--prompts-per-step", "4", "--num-generations", "16",
             "--max-new-tokens", str(new_tokens), "--save-every", "2",
             "--log-completions", "0"]
    runs = {"steps_1_2": ["--max-steps", "2"],
            "resumed_step_3": ["--max-steps", "3", "--resume"]}
    forget_base_copy(model)    # the loop places it, as a run's first merge does
    seconds = {}
    try:
        peak_memory(device)
        for label, more in runs.items():
            t = time.time()
            args = grpo.parse_args(flags + more)
            grpo.train(args, problems, model, tokenizer, reward_fn=coin)
            seconds[label] = time.time() - t
        lines = open(os.path.join(folder, "metrics.jsonl")).readlines()
        checkpoints = sorted(d for d in os.listdir(folder) if d.startswith("step-"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    metrics = [json.loads(line) for line in lines]
    return {"steps": [m["step"] for m in metrics], "new_tokens": new_tokens,
            "seconds": seconds, "checkpoints": checkpoints, "metrics": metrics,
            **peak_memory(device)}


def loop_line(v):
    times = ", ".join(f"step {r['step']} {r['rollout_time']:.1f} + "
                      f"{r['update_time']:.1f} s" for r in v["metrics"])
    return (f"8. the loop (grpo.train, 4 x 16 rollouts of <= {v['new_tokens']} tokens): "
            f"steps {v['steps']} ({times}: rollouts + update), checkpoints "
            f"{v['checkpoints']}, {peak_text(v)}")


# --------------------------------------------------------------------- the run
def bench_gpu(args):
    """The sections above, with their budgets; the JSON after each. Returns it."""
    # before CUDA starts
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    folder = args.out
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(args.out, "bench-gpu.log"), "w") as log, \
            contextlib.redirect_stdout(Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(Tee(sys.stderr, log)):
        return run_gpu(args, folder)


def device_name(device):
    """The GPU's name (the JSON's), or the CPU's; one that cannot be read still names
    the kind."""
    if device != "cuda":
        return "cpu-" + platform.machine()
    try:
        return torch.cuda.get_device_name()
    except Exception as e:
        print(f"warning: the GPU's name does not read ({e})", flush=True)
        return "cuda-unnamed"


def run_gpu(args, folder):
    budget = QUICK_BUDGET if args.quick else math.inf
    budget = budget if args.budget is None else args.budget
    device = "cuda" if torch.cuda.is_available() else "cpu"
    big = args.shape == "mathstral"
    shape = MATHSTRAL_SHAPE if big else TINY_SHAPE
    config = MistralConfig(**shape, sliding_window=None, tie_word_embeddings=False)
    dtype_bytes = 2 if device == "cuda" else 4
    kv_token = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] \
        * shape["head_dim"] * dtype_bytes
    result = {"device": device_name(device), "shape": args.shape, "quick": args.quick,
              "torch": torch.__version__, "kv_bytes_per_token": kv_token,
              "budget_s": None if budget == math.inf else budget,
              "alloc_conf": os.environ["PYTORCH_CUDA_ALLOC_CONF"]}
    report = Report(result, folder, time.time() + budget, device)
    model = section(report, "model", lambda: build_model(config, device),
                    lambda v: f"model: {v['params'] / 1e9:.2f} B weights on {device}",
                    summary=lambda m: {"params": sum(p.numel() for p in m.parameters())})
    needs_model = None if model else "no model (its build failed or did not run)"
    weight_bytes = result["model"].get("params", 0) * dtype_bytes
    rng = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(0, config.vocab_size, (n,), generator=rng).tolist()
    peak_memory(device)

    section(report, "left_padding", lambda: left_padding(model, rand, device),
            left_padding_line, needs_model)
    bandwidth = section(report, "copy_bandwidth_GBps",
                        lambda: copy_bandwidth(2 ** 30 if big else 2 ** 22, device),
                        lambda v: f"2. copy bandwidth {v:.0f} GB/s (read + write)")
    bandwidth = bandwidth or float("nan")

    # 3. decode at the paper's worst case: 64 rows after 4 x 3,072-token prompts,
    # buffers for 4,096 new tokens
    B, G, P, L = (4, 16, 3072, 4096) if big else (4, 4, 64, 128)
    windows = ((32, 96), (32, 256)) if big else ((16, 48), (16, 48))  # eager, graphs
    # HBM bytes a step reads at context t
    read = lambda t: weight_bytes + (B * P + B * G * t) * kv_token
    prompts = [rand(P) for _ in range(B)]
    decoded = section(report, "decode", lambda: gpu_decode(
        model, prompts, G, L, windows, device, bandwidth, read), decode_line, needs_model)

    # 4. CUDA graphs against eager decoding (the dry run: less)
    less = {} if big else dict(rows=8, steps=64, prompt_tokens=(20, 90))  # rows leave mid-way
    section(report, "graphs_vs_eager",
            lambda: gpu_graphs_vs_eager(model, rand, device, **less), graphs_line,
            needs_model)

    def lora():
        torch.manual_seed(0)
        apply_lora(model)
        grpo.enable_checkpointing(model)
        weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"lora_weights": weights}
    lora_ok = section(report, "lora", lora, lambda v: (
        f"LoRA: {v['lora_weights']:,} weights, activation checkpointing on"), needs_model)
    needs_lora = needs_model or (
        None if lora_ok else "no LoRA (apply_lora or checkpointing failed or did not run)")

    # 5. a LoRA change between two rollouts, seen by replayed graphs
    section(report, "lora_change", lambda: gpu_lora_change(model, rand), lora_change_line,
            needs_lora)

    # 6. one update micro-batch at the worst case, alone and with a rollout's buffers
    def update():
        out = gpu_update(model, rand, device, B, G, P, L)
        best = (decoded or {}).get((decoded or {}).get("best"), {})
        rollout = best.get("rollout_s_extrapolated", float("nan"))
        step = rollout + B * G / 2 * out["with_rollout_buffers"]["seconds"]
        out.update(training_step_s=step, projected_2000_steps_h=2000 * step / 3600,
                   arithmetic="training_step_s = the whole rollout extrapolated + "
                              "(B x G / 2) micro-batches x seconds: every completion at "
                              "the cap, an upper bound (bench.py cost prices typical "
                              "lengths)")
        return out
    section(report, "update_micro_batch", update, update_line, needs_lora)

    # 7. NCCL with the process group's timeout
    section(report, "nccl", lambda: gpu_nccl(device), nccl_line)

    # 8. the real loop: two steps of grpo.train, then --resume for a third
    loop = lambda: gpu_loop(model, tiny_tokenizer(), device, 128 if big else 16)
    section(report, "loop", loop, loop_line, needs_lora)
    if args.quick or not model:
        return result
    from bench.gpu_long import bench_gpu_long

    # tokens/s at the HBM roofline: each step reads the weights, the prompts' K/V and
    # the rows' own K/V at the mean context
    def roofline(prompts, prompt_len, rows, new):
        step = weight_bytes + (prompts * prompt_len + rows * new / 2) * kv_token
        return rows * bandwidth * 1e9 / step
    return bench_gpu_long(args, model, rand, device, result, folder, roofline,
                          (B, G, P, L))
