"""bench.py cost: what a run costs on one GPU, by arithmetic, each term shown and each
assumption named. From Mathstral-7B's config (MATHSTRAL_SHAPE), the recipe's settings
(grpo.py's defaults, or the run's own beside a --metrics file) and the engine's
constants (generation.py), for an H100 and an H200, decoding from CUDA graphs and
eagerly:

  python bench.py cost                       # typical and capped completion lengths
  python bench.py cost --metrics runs/X/metrics.jsonl   # and a run's own, step by step

A step is priced as it runs:
- rollouts: each prompt prefilled alone; then decode steps, each reading the weights,
  its prompts' K/V, its rows' own K/V up to the step's width, the score path and the
  sampler (bytes at the HBM bandwidth reached), plus each kernel's own time (replayed
  from a graph), or the host's time for its aten calls (eagerly); every CHECK_EVERY
  steps a look, and finished rows leave the batch once that shrinks it to COMPACT_AT
  (the one-row tail: the rows at the cap decode on alone, each step still reading
  every weight);
- the update: each prompt forward once, its completions micro-batched
  (--micro-batch-tokens, padded to their longest), forward, the recomputation of
  checkpointed layers and backward: FLOPs at a share of the bf16 peak, the attention
  causal (lower-right, SDPA's flash kernel: today's) or over the masked [T, P + T]
  rectangle (the kernel before), and LoRA's side path (bf16) in bytes;
- the rest: merging the adapter in and restoring the base weights (on the GPU, or over
  PCIe where the copy does not fit, as lora.merge_lora decides), graphs captured, the
  host's work, checkpoints.
The lengths: a metrics.jsonl record gives the mean (completion_length) and the share
at the cap (clipped_ratio); the rows not at the cap are taken to end together, at the
mean of the rest (a record's longest row is not logged; where no row is capped that
underestimates the decode)."""
import glob
import json
import math
import os
from typing import NamedTuple

import generation
import grpo
from bench.common import HERE, MATHSTRAL_SHAPE, save


class GPU(NamedTuple):
    hbm: float          # bytes/s, the spec
    peak: float         # dense bf16 FLOP/s
    memory: float       # bytes


GPUS = {"H100": GPU(3.35e12, 989e12, 80e9), "H200": GPU(4.8e12, 989e12, 141e9)}


class Assumptions(NamedTuple):
    hbm_share: float    # of the spec bandwidth that a step's large reads reach
    kernel_us: float    # a kernel's own GPU time beyond its bytes (replayed, a graph's)
    host_us: float      # the host's time for one aten call, eagerly
    mfu: float          # share of the bf16 peak the update's matmuls and attention reach
    pcie: float         # bytes/s of a page-locked host-to-device copy
    captures: int       # graphs captured a step (new shapes, evictions): 2 eager steps


BANDS = {"central": Assumptions(0.8, 2.0, 3.0, 0.5, 40e9, 1),
         "optimistic": Assumptions(0.9, 1.5, 2.0, 0.6, 50e9, 0),
         "pessimistic": Assumptions(0.7, 3.0, 4.0, 0.4, 25e9, 4)}

# bytes a decode score element [rows, heads, P + width] costs: the two products' bf16
# outputs and their cat (6), masked_fill_ in place (4), the softmax, bf16 in and out
# with fp32 accumulation (4), read by P @ V (2); the mask is made once a step (before:
# 24, with an fp32 softmax and its cast, and the mask made in every layer)
SCORE_BYTES = 16
# bytes a logit costs: the LM head's bf16 write and copy into the rows' buffer (6),
# then generation.sample: the fp32 softmax (26), the int64 hash mix() twice over
# [rows, vocab] (192), the exponential race (~70), the entropy (~24)
SAMPLER_BYTES = 318
# LoRA's side path, bytes an input and an output element of a wrapped linear
# (lora.py, the adapter applied in bf16, its weights cast down): forward A's read of x
# (2), B's output, the scaling, the add (10); backward 4 and 12; forward twice
# (checkpointing). Before (the adapter in fp32, x cast up for each adapter): 40 and 70
LORA_IN_BYTES, LORA_OUT_BYTES = 8, 32
ATTENTION_PASSES = 4.5  # forward, its recomputation, backward (2.5 forwards' FLOPs)
MERGE_BYTES = 24        # a wrapped weight's merge: B @ A in fp32, scaled, cast, added
LOOK_S = 3e-4           # a look: the tokens read back, EOS and stop strings checked
HOST_S = 0.3            # a step's host work: texts decoded and graded, logs, AdamW
CHECKPOINT_S = 2.0      # writing a checkpoint (adapter and AdamW's moments: ~0.5 GB)
CONTEXT_BYTES = 1e9     # the CUDA context and allocator slack, beside the weights


class Shape(NamedTuple):
    """What the arithmetic needs of the model: sizes in weights and bytes (bf16)."""
    layers: int
    heads: int
    head_dim: int
    vocab: int
    weights: int         # all of them
    decoded: int         # those a decode step multiplies: every one but the embedding's
    dense: int           # those of the layers (the matmuls a token runs through)
    wrapped: int         # those LoRA wraps (every linear of every layer)
    lm_head: int
    kv_token: int        # K/V bytes a token
    lora_token: int      # bytes of LoRA's side path a token through the update


def shape_of(c):
    """The Shape of a config.json's sizes (c: MATHSTRAL_SHAPE)."""
    d, h, i = c["head_dim"], c["hidden_size"], c["intermediate_size"]
    layers = c["num_hidden_layers"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d   # q's and k's widths
    # q, k, v read h each; o reads q; gate and up read h; down reads i
    ins = 3 * h + q + 2 * h + i
    outs = q + 2 * kv + h + 2 * i + h
    wrapped = layers * (h * (2 * q + 2 * kv) + 3 * h * i)
    dense = wrapped + (2 * layers + 1) * h                   # and the norms
    lm_head = c["vocab_size"] * h
    lora = layers * (LORA_IN_BYTES * ins + LORA_OUT_BYTES * outs)
    return Shape(layers, c["num_attention_heads"], d, c["vocab_size"],
                 dense + 2 * lm_head, dense + lm_head, dense, wrapped, lm_head,
                 4 * layers * kv, lora)


class Settings(NamedTuple):
    """The run's settings that the cost depends on (grpo.py's flags)."""
    B: int               # --prompts-per-step
    G: int               # --num-generations
    cap: int             # --max-new-tokens
    prompt_cap: int      # --max-prompt-tokens
    batch_rows: int      # --rollout-batch-size
    micro_tokens: int    # --micro-batch-tokens
    steps: int           # --max-steps
    save_every: int      # --save-every


def run_settings(metrics=None):
    """grpo.py's defaults (the recipe's), or the flags of the run that wrote `metrics`
    (its newest checkpoint's trainer_state.json, where there is one)."""
    args = vars(grpo.parse_args([]))
    folder = os.path.dirname(os.path.abspath(metrics)) if metrics else None
    pattern = os.path.join(folder or "", "step-*", "trainer_state.json")
    states = glob.glob(pattern) if folder else []
    if states:
        newest = max(states, key=lambda p: int(p.split("step-")[-1].split(os.sep)[0]))
        args.update(json.load(open(newest))["args"])
    return Settings(args["prompts_per_step"], args["num_generations"],
                    args["max_new_tokens"], args["max_prompt_tokens"],
                    args["rollout_batch_size"], args["micro_batch_tokens"],
                    args["max_steps"], args["save_every"])


class Case(NamedTuple):
    """One step's lengths: every row's completion, the prompts' mean, groups skipped."""
    lengths: list        # [B * G] tokens, row b * G + g of prompt b
    prompt: int          # tokens
    skipped: float       # share of groups whose rewards are all equal (no update)


def rows_of(mean, capped, s, longest=None):
    """B * G completion lengths of mean `mean`: `capped` rows at the cap (or one at
    `longest`), the rest ending together; the long rows one a prompt first
    (compaction's worst case)."""
    n = s.B * s.G
    long = [s.cap] * capped or ([longest] if longest else [])
    rest = max(1, round((n * mean - sum(long)) / (n - len(long)))) if len(long) < n else 0
    lengths = [rest] * n
    for k, value in enumerate(long):
        lengths[k % s.B * s.G + k // s.B] = value
    return lengths


# ---------------------------------------------------------------- the rollouts
class Block(NamedTuple):
    """A decode step's shape."""
    rows: int
    prompts: int
    width: int           # own K/V slots the step reads


def padded(n):
    """A prompt's length in the K/V buffer (generation.bucket)."""
    return generation.bucket(n)


def width(t, cap):
    """The own K/V slots decode step t reads (generation.decode_n_tokens)."""
    return min(cap, generation.WIDTH_STEP * math.ceil((t + 1) / generation.WIDTH_STEP))


def decode_blocks(lengths, G, cap):
    """One rollout batch (lengths: its rows, G a prompt) as the engine decodes it: a
    look every CHECK_EVERY steps; finished rows leave once that shrinks the batch to
    COMPACT_AT (the going rows kept, each prompt's padded to a power of two). ->
    ({Block: (steps, looks)}, own K/V tokens that compaction copies)."""
    every, B = generation.CHECK_EVERY, len(lengths) // G
    groups = [lengths[b * G:(b + 1) * G] for b in range(B)]
    rows, prompts, blocks, copied = B * G, B, {}, 0
    for t in range(0, cap, every):
        steps = min(every, cap - t)
        block = Block(rows, prompts, width(t, cap))
        done, looks = blocks.get(block, (0, 0))
        blocks[block] = (done + steps, looks + 1)
        going = [n for n in (sum(x > t + steps for x in group) for group in groups) if n]
        if not going:
            break
        G2 = min(G, 2 ** math.ceil(math.log2(max(going))))
        if len(going) * G2 <= generation.COMPACT_AT * rows:
            rows, prompts = len(going) * G2, len(going)
            copied += rows * (t + steps)
    return blocks, copied


class Aten(NamedTuple):
    kernels: float       # a decode step's kernels (bench.py ops: innermost ops, no views)
    calls: float         # its aten calls, nested ones counted (the host's work, eagerly)


def ops_measured():
    """A decode step's kernels and aten calls at 32 layers: bench.py ops's JSON."""
    path = os.path.join(HERE, "bench", "results", "ops-cpu-x86_64-h256.json")
    ops = json.load(open(path))
    return Aten(ops["ours_kernels"]["at_32_layers"], ops["ours_ops"]["at_32_layers"])


def step_bytes(block, prompt, m):
    """HBM bytes of a decode step of `block`'s shape, by what reads them."""
    keys = prompt + block.width
    return {"weights": 2 * m.decoded, "prompts_kv": block.prompts * prompt * m.kv_token,
            "own_kv": block.rows * block.width * m.kv_token,
            "scores": block.rows * m.heads * m.layers * keys * SCORE_BYTES,
            "sampler": block.rows * m.vocab * SAMPLER_BYTES}


def step_seconds(block, prompt, m, gpu, a, eager, aten):
    """A decode step of `block`'s shape: its bytes at the bandwidth reached (its FLOPs
    at the update's share of the peak, if more), plus each kernel's own time; eagerly,
    the host's time for its aten calls if that is more."""
    keys = prompt + block.width
    flops = block.rows * (2 * m.decoded + 4 * m.heads * m.head_dim * m.layers * keys)
    reads = sum(step_bytes(block, prompt, m).values())
    gpu_s = max(reads / (gpu.hbm * a.hbm_share), flops / (gpu.peak * a.mfu))
    gpu_s += aten.kernels * a.kernel_us * 1e-6
    return max(gpu_s, aten.calls * a.host_us * 1e-6) if eager else gpu_s


# ------------------------------------------------------------------ the update
def update_work(case, m, s):
    """The update's tokens, FLOPs (attention causal, lower-right, as today; and masked,
    the kernel before) and LoRA's bytes."""
    pair = 4 * m.heads * m.head_dim * m.layers * ATTENTION_PASSES  # a (query, key) pair
    tokens = masked = causal = head = 0.0
    P = case.prompt
    for b in range(round(s.B * (1 - case.skipped))):
        group = case.lengths[b * s.G:(b + 1) * s.G]
        tokens += P
        masked += P * P / 2        # the prompt's pass: SDPA's causal kernel
        causal += P * P / 2
        for mb in grpo.pack([P + n for n in group], s.micro_tokens):
            n, T = len(mb), max(group[i] for i in mb)   # rows padded to the longest
            tokens += n * T
            masked += n * T * (P + T)
            causal += n * (T * P + T * T / 2)
            head += sum(group[i] for i in mb)           # the LM head: real tokens only
    flops = 3 * 2 * (tokens * m.dense + head * m.lm_head)
    return {"tokens": tokens, "flops_masked": flops + masked * pair,
            "flops_causal": flops + causal * pair, "lora_bytes": tokens * m.lora_token}


# ---------------------------------------------------------------------- a step
STEP = ("prefill_s", "decode_s", "compaction_s", "update_s", "merge_s", "restore_s",
        "captures_s", "host_s")


class Plan(NamedTuple):
    """What a step runs, whatever the GPU: its decode steps by shape, the K/V tokens
    compaction copies, the update's work."""
    blocks: dict         # Block -> (steps, looks)
    copied: int
    work: dict
    prompt: int          # the prompts' padded length
    case: Case


def plan_of(case, m, s):
    batches = math.ceil(s.B * s.G / s.batch_rows)
    per, blocks, copied = len(case.lengths) // batches, {}, 0
    for k in range(batches):
        shapes, kv = decode_blocks(case.lengths[k * per:(k + 1) * per], s.G, s.cap)
        copied += kv
        for block, (steps, looks) in shapes.items():
            done, seen = blocks.get(block, (0, 0))
            blocks[block] = (done + steps, seen + looks)
    return Plan(blocks, copied, update_work(case, m, s), padded(case.prompt), case)


def price(plan, m, s, gpu, a, eager, aten):
    """A step's seconds, term by term (STEP's terms add up to step_s)."""
    P, bandwidth, by_rows = plan.prompt, gpu.hbm * a.hbm_share, {}
    for block, (steps, looks) in plan.blocks.items():
        seconds = steps * step_seconds(block, P, m, gpu, a, eager, aten) + looks * LOOK_S
        done, total = by_rows.get(block.rows, (0, 0.0))
        by_rows[block.rows] = (done + steps, total + seconds)
    work, prompt = plan.work, plan.case.prompt
    spare = m.kv_token * (s.B * s.prompt_cap + min(s.B * s.G, s.batch_rows) * s.cap)
    on_gpu = 2 * m.weights + CONTEXT_BYTES + 2 * m.wrapped + spare <= 0.7 * gpu.memory
    attention = 2 * m.heads * m.head_dim * m.layers * prompt ** 2     # causal
    prefill = s.B * (2 * m.dense * prompt + attention)
    full = Block(min(s.B * s.G, s.batch_rows), s.B, s.cap)
    capture = step_seconds(full, P, m, gpu, a, True, aten)   # an eager step's time
    update = lambda flops: flops / (gpu.peak * a.mfu) + work["lora_bytes"] / bandwidth
    terms = {"prefill_s": prefill / (gpu.peak * a.mfu),
             "decode_s": sum(total for _, total in by_rows.values()),
             "compaction_s": 2 * plan.copied * m.kv_token / bandwidth,
             "update_s": update(work["flops_causal"]),
             "merge_s": MERGE_BYTES * m.wrapped / bandwidth,
             "restore_s": 4 * m.wrapped / bandwidth if on_gpu else 2 * m.wrapped / a.pcie,
             "captures_s": 0 if eager else a.captures * 2 * capture,
             "host_s": HOST_S + CHECKPOINT_S / s.save_every}
    terms["step_s"] = sum(terms[k] for k in STEP)
    terms.update(update_masked_s=update(work["flops_masked"]),
                 lora_side_path_s=work["lora_bytes"] / bandwidth,
                 decode_by_rows={rows: {"steps": n, "s": t}
                                 for rows, (n, t) in by_rows.items()},
                 base_copy_on="GPU" if on_gpu else "host", **work)
    return terms


# ----------------------------------------------------------------- the section
TYPICAL = dict(mean=1024, capped=1, prompt=1024)  # tokens; rows at the cap, of B * G
TARGET_H = 24             # hours for 2,000 typical steps on an H100, with graphs


def price_all(cases, m, s, aten):
    """{gpu: {mode: {band: each term summed over the cases}}} (base_copy_on: the
    last's)."""
    out, plans = {}, [plan_of(case, m, s) for case in cases]
    for name, gpu in GPUS.items():
        for mode in ("graphs", "eager"):
            for band, a in BANDS.items():
                total, by_rows = {}, {}
                for plan in plans:
                    terms = price(plan, m, s, gpu, a, mode == "eager", aten)
                    for k, v in terms.items():
                        number = isinstance(v, (int, float))
                        total[k] = total.get(k, 0) + v if number else v
                    for rows, v in terms["decode_by_rows"].items():
                        seen = by_rows.setdefault(rows, {"steps": 0, "s": 0.0})
                        seen["steps"] += v["steps"]
                        seen["s"] += v["s"]
                total["decode_by_rows"] = by_rows
                out.setdefault(name, {}).setdefault(mode, {})[band] = total
    return out


def hours(priced, steps, cases):
    """2,000 steps (s.steps) of the cases' mean step, central and the band, in hours."""
    h = {band: steps * t["step_s"] / len(cases) / 3600 for band, t in priced.items()}
    return h["central"], h["optimistic"], h["pessimistic"]


def metrics_cases(path, s):
    """A Case for each record of a run's metrics.jsonl."""
    cases = []
    for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            n = s.B * s.G
            lengths = rows_of(r["completion_length"], round(r["clipped_ratio"] * n), s,
                              r.get("completion_length_max"))
            cases.append(Case(lengths, round(r.get("prompt_length") or TYPICAL["prompt"]),
                              r.get("frac_reward_zero_std") or 0.0))
        except (ValueError, KeyError, TypeError) as e:
            why = f"no field {e}" if isinstance(e, KeyError) else "not a metrics record"
            raise ValueError(f"{path}:{lineno}: {why}") from None
    if not cases:
        raise ValueError(f"{path}: no records")
    return cases


def bench_cost(args):
    m, s, aten = shape_of(MATHSTRAL_SHAPE), run_settings(args.metrics), ops_measured()
    n = s.B * s.G
    typical = rows_of(TYPICAL["mean"], TYPICAL["capped"], s)
    cases = {"typical": [Case(typical, TYPICAL["prompt"], 0.0)],
             "capped": [Case([s.cap] * n, s.prompt_cap, 0.0)]}
    if args.metrics:
        cases["metrics"] = metrics_cases(args.metrics, s)
    result = {"device": "arithmetic", "model": "Mathstral-7B", "weights": m.weights,
              "settings": s._asdict(), "gpus": {k: g._asdict() for k, g in GPUS.items()},
              "bands": {k: a._asdict() for k, a in BANDS.items()},
              "aten": aten._asdict(), "typical": TYPICAL, "metrics": args.metrics,
              "constants": {
                  "score_bytes": SCORE_BYTES, "sampler_bytes": SAMPLER_BYTES,
                  "lora_in_out_bytes": [LORA_IN_BYTES, LORA_OUT_BYTES],
                  "attention_passes": ATTENTION_PASSES, "merge_bytes": MERGE_BYTES,
                  "look_s": LOOK_S, "host_s": HOST_S, "checkpoint_s": CHECKPOINT_S},
              "cases": {}}
    print_assumptions(m, s, aten)
    for name, group in cases.items():
        priced = price_all(group, m, s, aten)
        result["cases"][name] = {"steps": len(group), "priced": priced}
        print_case(name, group, priced, m, s, args.metrics)
    if args.out:
        save("cost", result, args.out)
    return result


def print_assumptions(m, s, aten):
    a, lo, hi = BANDS["central"], BANDS["optimistic"], BANDS["pessimistic"]
    band = lambda f, unit="": f"{f(a)}{unit} [{f(lo)} / {f(hi)}]"
    print(f"bench.py cost: Mathstral-7B, {m.weights / 1e9:.2f} B weights (a decode step reads "
          f"{2 * m.decoded / 1e9:.1f} GB of them), {m.kv_token // 1024} KiB of K/V a token;\n"
          f"  {s.B} prompts x {s.G} rollouts, the cap {s.cap:,} tokens, prompts <= "
          f"{s.prompt_cap:,}, {s.steps:,} steps")
    print("assumptions, central [optimistic / pessimistic]:")
    print("  HBM " + ", ".join(f"{k} {g.hbm / 1e12:.2f} TB/s" for k, g in GPUS.items())
          + f" (spec); a step's large reads reach "
          f"{band(lambda x: round(100 * x.hbm_share), ' %')}")
    print(f"  the update's matmuls and attention at {band(lambda x: round(100 * x.mfu), ' %')} "
          f"of {GPUS['H100'].peak / 1e12:.0f} TFLOP/s (dense bf16, both);\n"
          f"    3 passes of matmuls (forward, checkpointing's recomputation, backward), "
          f"{ATTENTION_PASSES} of attention")
    print(f"  a decode step: {aten.kernels:,.0f} kernels (bench.py ops), "
          f"{band(lambda x: x.kernel_us, ' µs')} each of the GPU's own (replayed);\n"
          f"    eagerly {aten.calls:,.0f} aten calls at {band(lambda x: x.host_us, ' µs')} "
          f"of host time each")
    print(f"  decode bytes beside weights and K/V: {SCORE_BYTES} a score (rows x {m.heads} heads "
          f"x {m.layers} layers x keys),\n    {SAMPLER_BYTES} a logit (the sampler's fp32 "
          f"softmax and int64 hashing)")
    print(f"  LoRA's side path in the update (bf16): {LORA_IN_BYTES} bytes an input element, "
          f"{LORA_OUT_BYTES} an output element\n    of each wrapped linear "
          f"({m.lora_token / 1e6:.0f} MB a token)")
    print(f"  the base weights restored over PCIe at {band(lambda x: round(x.pcie / 1e9))} GB/s "
          f"where lora.merge_lora keeps their copy\n    on the host; "
          f"{band(lambda x: x.captures)} graphs captured a step (2 eager steps each)")
    print(f"  the host: {HOST_S} s a step; a checkpoint {CHECKPOINT_S} s every {s.save_every} "
          f"steps; a look {1e3 * LOOK_S:.1f} ms every {generation.CHECK_EVERY} steps")


def print_case(name, cases, priced, m, s, path=None):
    if name == "typical":
        print(f"\ntypical: mean completion {TYPICAL['mean']:,} tokens, {TYPICAL['capped']} of "
              f"{s.B * s.G} rows at the cap (the rest end together),\n  "
              f"{TYPICAL['prompt']:,}-token prompts, every group updated")
    elif name == "capped":
        print(f"\ncapped: every completion at the {s.cap:,}-token cap, {s.prompt_cap:,}-token "
              f"prompts,\n  every group updated (the worst case)")
    else:
        n = sum(len(c.lengths) for c in cases)
        capped = sum(x >= s.cap for c in cases for x in c.lengths)
        print(f"\nmetrics: the {len(cases):,} steps of {path}: mean completion "
              f"{sum(sum(c.lengths) for c in cases) / n:,.0f} tokens, {100 * capped / n:.1f} %\n"
              f"  of rows at the cap (per step; the rest end together), each step's prompt "
              f"length and groups skipped;\n  {s.steps:,} steps at these steps' mean")
    print(f"  GPU   mode     rollouts   update (masked)  other     step   {s.steps:,} steps, h")
    for gpu, modes in priced.items():
        for mode, bands in modes.items():
            t, k = bands["central"], len(cases)
            rollout = (t["prefill_s"] + t["decode_s"] + t["compaction_s"]) / k
            other = (t["merge_s"] + t["restore_s"] + t["captures_s"] + t["host_s"]) / k
            h, lo, hi = hours(bands, s.steps, cases)
            print(f"  {gpu}  {mode:6s}  {rollout:7.1f} s  {t['update_s'] / k:5.1f} s "
                  f"({t['update_masked_s'] / k:5.1f})  {other:4.1f} s  {t['step_s'] / k:6.1f} s"
                  f"   {h:5.1f} [{lo:.1f}-{hi:.1f}]")
    print_terms(name, priced["H100"]["graphs"]["central"], len(cases))
    if name == "typical":
        h = hours(priced["H100"]["graphs"], s.steps, cases)[0]
        need = TARGET_H * 3600 / s.steps
        verdict = "meets" if h <= TARGET_H else "misses"
        print(f"  target: {s.steps:,} typical steps on an H100 with graphs <= {TARGET_H} h "
              f"(<= {need:.1f} s a step): {h:.1f} h {verdict} it")


def print_terms(name, t, k):
    """The terms of `name`'s step (the mean of k steps), H100, graphs, central."""
    print(f"  its terms, H100, graphs, central: decode {t['decode_s'] / k:.1f} s")
    for r, v in sorted(t["decode_by_rows"].items(), reverse=True):
        print(f"    {r} row{'s' * (r > 1)}: {v['steps'] / k:,.0f} steps x "
              f"{1e3 * v['s'] / v['steps']:.1f} ms = {v['s'] / k:.1f} s")
    print(f"    prefill {t['prefill_s'] / k:.2f} s, compaction {t['compaction_s'] / k:.2f} s")
    print(f"  update {t['update_s'] / k:.1f} s: {t['tokens'] / k / 1e3:.0f} K tokens (padded), "
          f"{t['flops_causal'] / k / 1e15:.2f} PFLOP (masked attention, before: "
          f"{t['flops_masked'] / k / 1e15:.2f}),\n    LoRA's side path "
          f"{t['lora_bytes'] / k / 1e12:.1f} TB = {t['lora_side_path_s'] / k:.1f} s of it")
    print(f"  other: merge {t['merge_s'] / k:.2f} s, base weights restored from the "
          f"{t['base_copy_on']} {t['restore_s'] / k:.2f} s, captures {t['captures_s'] / k:.2f} s, "
          f"host {t['host_s'] / k:.2f} s")
