"""The update, measured on the CPU: bench.py update (the prompt-once update against
whole rows, full_sequence_update, the baseline it replaced, with a gradient check),
memory (peak RSS of the worst micro-batch; memory-child runs it in a fresh process),
gap (the sampler-trainer log-prob gap) and merge (how much of a LoRA update a bf16
merge keeps)."""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import grpo
from bench.common import HERE, cpu_name, policy_update, save, small_model
from extras.tiny import tokenizer as tiny_tokenizer
from generation import generate
from lora import apply_lora, lora_modules, merged

BENCH = os.path.join(HERE, "bench.py")


def full_sequence_update(model, prompt_ids, completions, advantages, args, pad_token_id):
    """The update before the prompt-once change, as the baseline: every (prompt +
    completion) row runs forward and backward whole, micro-batched by padded length,
    through the same chunked LM head and loss."""
    B, G = advantages.shape
    rows = [(b, g) for b in range(B) for g in range(G)]
    lengths = [len(prompt_ids[b]) + len(completions[b][g]) for b, g in rows]
    for mb in grpo.pack(lengths, args.micro_batch_tokens):
        seqs = [prompt_ids[rows[i][0]] + completions[rows[i][0]][rows[i][1]] for i in mb]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in seqs])  # [n, T]
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])  # [n, T]
        comp = torch.tensor([[0] * len(prompt_ids[rows[i][0]])
                             + [1] * len(completions[rows[i][0]][rows[i][1]])
                             + [0] * (width - lengths[i]) for i in mb])  # [n, T]
        # [n, T, H]
        hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
        # [n, T-1]
        logprobs = grpo.completion_logprobs(model, hidden[:, :-1], ids[:, 1:], comp[:, 1:])
        adv = torch.stack([advantages[rows[i]] for i in mb])
        loss = grpo.dr_grpo_loss(logprobs, logprobs.detach(), adv, comp[:, 1:].float(),
                                 B * G * args.max_new_tokens)
        loss.backward()


def bench_update(args):
    """The update alone: grpo.policy_update (each prompt forward once) vs
    full_sequence_update (each prompt once per rollout), same model, rollouts and
    checkpointing; also checks that their gradients agree."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = apply_lora(small_model(tiny_tokenizer(), args.hidden, args.layers))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # B = 0 would hide the gradient through the prompt
    grpo.enable_checkpointing(model)
    model.train()
    B, G, L, P = 4, 8, args.new_tokens, args.prompt_tokens
    prompts = [torch.randint(4, 2000, (P,)).tolist() for _ in range(B)]
    rand = lambda n: torch.randint(4, 2000, (n,)).tolist()
    completions = [[rand(L) for _ in range(G)] for _ in range(B)]
    rewards = torch.tensor([[float(g % 2) for g in range(G)] for _ in range(B)])
    advantages = grpo.group_advantages(rewards)
    targs = grpo.parse_args(["--max-new-tokens", str(L)])
    result = {"device": cpu_name(), "threads": torch.get_num_threads(),
              "hidden": args.hidden, "layers": args.layers, "B": B, "G": G, "prompt_tokens": P,
              "completion_tokens": L}
    grads = {}
    updates = {
        "prompt_once": lambda: policy_update(model, prompts, completions, advantages, L,
                                             micro_batch_tokens=targs.micro_batch_tokens),
        "full_sequence": lambda: full_sequence_update(model, prompts, completions,
                                                      advantages, targs, pad_token_id=3),
    }
    for label, fn in updates.items():
        times = []
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        result[f"{label}_s"] = statistics.median(times[1:])
        trained = [p for p in model.parameters() if p.requires_grad]
        grads[label] = torch.cat([p.grad.flatten() for p in trained])
    result["speedup"] = result["full_sequence_s"] / result["prompt_once_s"]
    gap = (grads["prompt_once"] - grads["full_sequence"]).abs().max()
    diff = gap / grads["full_sequence"].abs().max()
    result["max_grad_rel_diff"] = diff.item()
    print(f"update, {B} x {G} rollouts of {L} tokens after {P}-token prompts, "
          f"hidden {args.hidden} x {args.layers} layers: "
          f"prompt once {result['prompt_once_s']:.3f} s, whole sequences "
          f"{result['full_sequence_s']:.3f} s -> {result['speedup']:.2f}x; "
          f"gradients agree to {diff:.1e}")
    save("update", result, args.out)


def bench_memory(args):
    """Peak memory of the update's worst micro-batch (a 3,072-token prompt, 2
    completions of 4,096 tokens; --micro-batch-tokens 16,384), hidden 256 x 4 layers,
    LoRA and activation checkpointing: the growth of the process's peak RSS, each way
    in a fresh process (peak RSS only grows): prompt once (its completions attend to
    its K/V through SDPA) and whole rows (grpo.PROMPT_ONCE False); both give the same
    gradient (tests/test_grpo.py)."""
    result = {"device": cpu_name(), "hidden": args.hidden, "layers": args.layers,
              "prompt_tokens": 3072, "completion_tokens": [4096, 4096]}
    for label in ("prompt_once", "whole_rows"):
        out = subprocess.run([sys.executable, BENCH, "memory-child", "--hidden",
                              str(args.hidden), "--layers", str(args.layers), "--mode", label],
                             capture_output=True, text=True, check=True)
        result[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"update micro-batch, {label}: peak RSS +{result[label]['rss_growth_MB']:.0f} MB, "
              f"{result[label]['seconds']:.1f} s", flush=True)
    save("memory", result, args.out)


def memory_child(args):
    """One worst-case update micro-batch (bench_memory), in this process: JSON on
    stdout."""
    torch.manual_seed(0)
    model = apply_lora(small_model(tiny_tokenizer(), args.hidden, args.layers))
    grpo.enable_checkpointing(model)
    model.train()
    grpo.PROMPT_ONCE = args.mode == "prompt_once"
    rand = lambda n: torch.randint(4, 2000, (n,)).tolist()
    advantages = torch.tensor([[1.0, -1.0]])
    # warm-up
    policy_update(model, [rand(64)], [[rand(64), rand(64)]], advantages, 4096)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    policy_update(model, [rand(3072)], [[rand(4096), rand(4096)]], advantages, 4096)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth = (peak - before) / 1024   # KiB -> MiB
    print(json.dumps({"rss_growth_MB": growth, "seconds": seconds}))


def bench_merge(args):
    """What bf16 does to a LoRA adapter's effect on a layer's output, early in
    training: merged into the bf16 weights (our rollouts), applied unmerged and added
    to the bf16 output (vLLM's LoRA kernels: the author's rollouts), or added in fp32.
    A 4096 x 4096 layer, W ~ N(0, 0.02) in bf16, A at PEFT's init, B after k steps of
    lr = 5e-6 per element with one sign kept (consistent) or drawn afresh each step
    (random walk); the share of the adapter's exact effect that survives is the
    realised change projected on it. Early in a bf16 run both pipelines sample from
    nearly the base model."""
    n, r, alpha, lr = 4096, 16, 32, 5e-6
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(n, n, generator=g) * 0.02).bfloat16()
    # PEFT's init: kaiming_uniform(a=sqrt(5))
    a = (torch.rand(r, n, generator=g) * 2 - 1) / n ** 0.5
    x = torch.randn(n, 64, generator=g).bfloat16().float()
    y0 = (w.float() @ x).bfloat16().float()
    result = {"device": cpu_name(), "shape": [n, n], "r": r, "alpha": alpha,
              "lr": lr, "runs": []}
    # a fresh +-1 per element of B
    sign = lambda: torch.randint(0, 2, (n, r), generator=g).float() * 2 - 1
    for k in (10, 100, 1000):
        for signs in ("consistent", "random-walk"):
            walk = k * sign() if signs == "consistent" else sum(sign() for _ in range(k))
            b = lr * walk
            delta = alpha / r * (b @ (a @ x))  # the adapter's exact effect
            ys = {"merged": (((w.float() + alpha / r * (b @ a)).bfloat16()).float() @ x).bfloat16(),
                  "unmerged_bf16_add": (y0 + delta.bfloat16().float()).bfloat16(),
                  "fp32_add": y0 + delta}
            share = {m: ((y.float() - y0) * delta).sum().item() / (delta * delta).sum().item()
                     for m, y in ys.items()}
            result["runs"].append({"steps": k, "signs": signs, **share})
            print(f"bf16, {k} steps, {signs} signs: merged keeps {100 * share['merged']:.1f} %, "
                  f"unmerged + bf16 add {100 * share['unmerged_bf16_add']:.1f} %, "
                  f"fp32 add {100 * share['fp32_add']:.1f} % of the adapter's effect")
    save("merge", result, args.out)


def bench_gap(args):
    """The sampler-trainer gap: rollouts drawn with the LoRA merged into the base
    weights (the engine's), log-probs recomputed by the update with the LoRA unmerged
    (its branch in fp32), on the tiny shapes in fp32 and in bf16, for an adapter as
    after k steps of lr 5e-6 (B = 5e-6 * k with one sign kept per element; A at PEFT's
    init). Per token of 4 prompts x 8 rollouts x 32 tokens: |log pi - log pi_sampler|
    mean and max, the ratio pi / pi_sampler min / mean / max, and the share of tokens
    a cap of 2 (--importance-sampling-cap 2) would truncate."""
    tok = tiny_tokenizer()
    result = {"device": cpu_name(), "runs": []}
    for hidden, layers in ((64, 2), (256, 4)):
        for dtype in (torch.float32, torch.bfloat16):
            for k in (10, 100, 1000):
                torch.manual_seed(0)
                model = apply_lora(small_model(tok, hidden, layers).to(dtype))
                with torch.no_grad():
                    for _, m in lora_modules(model):
                        sign = torch.randint(0, 2, m.lora_B.weight.shape) * 2 - 1
                        m.lora_B.weight.copy_(5e-6 * k * sign)
                prompts = [torch.randint(4, 2000, (64,)).tolist() for _ in range(4)]
                with merged(model):
                    drawn = generate(model, prompts, n=8, max_new_tokens=32, eos_token_id=-1,
                                     pad_token_id=3, logprobs=True)
                completions = [[c[0] for c in group] for group in drawn]
                sampled = [[c[1] for c in group] for group in drawn]
                # every group runs
                advantages = torch.ones(4, 8).index_fill_(1, torch.tensor([0]), -7.0)
                gaps = policy_update(model.train(), prompts, completions, advantages, 32,
                                     sampled=sampled).gaps.double()
                ratio = gaps.exp()
                run = {"hidden": hidden, "layers": layers, "dtype": str(dtype)[6:], "steps": k,
                       "logp_diff_mean": gaps.abs().mean().item(),
                       "logp_diff_max": gaps.abs().max().item(), "ratio_min": ratio.min().item(),
                       "ratio_mean": ratio.mean().item(), "ratio_max": ratio.max().item(),
                       "above_cap_2": (ratio > 2).double().mean().item()}
                result["runs"].append(run)
                print(f"hidden {hidden} x {layers}, {run['dtype']}, adapter after {k} steps: "
                      f"|log pi - log pi_sampler| mean {run['logp_diff_mean']:.2e}, max "
                      f"{run['logp_diff_max']:.2e}; ratio {run['ratio_min']:.4f} / "
                      f"{run['ratio_mean']:.4f} / {run['ratio_max']:.4f}; above 2: "
                      f"{100 * run['above_cap_2']:.2f} % of tokens", flush=True)
    save("gap", result, args.out)
