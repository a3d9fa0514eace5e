"""bench.py gpu without --quick: what comes after the quick sections (bench/gpu.py), with
no budget: decode at batch 16/64/128 after draft-variant prompts, the sampler, two whole
training steps at the cap, by hand (the loop itself runs in section 8). Each is written
into the JSON as it comes."""
import torch

import grpo
from bench.common import policy_update, save, timed
from bench.gpu import peak_memory
from bench.rollout import copied_generate
from bench.sampling import bench_sampler
from extras.graphs import cuda_graphs
from generation import cache_bytes, generate
from lora import merged


def bench_gpu_long(args, model, rand, device, result, folder, roofline, shape):
    """roofline(prompts, prompt tokens, rows, new tokens): tokens/s at the HBM roofline."""
    model.eval()
    result["decode_by_batch"] = {}
    for batch in (16, 64, 128):  # batch/16 prompts x 16 samples, as in training
        out = decode_by_batch(model, rand, device, batch, args.shape == "mathstral", roofline)
        result["decode_by_batch"][batch] = out
        save("gpu", result, folder)
    # keyed noise vs multinomial, per step
    result["sampler"] = bench_sampler(args, device, vocab=model.config.vocab_size)
    save("gpu", result, folder)
    B, G, P, L = shape
    gen = torch.Generator().manual_seed(1)
    drafts = torch.randint(P // 3, 2 * P // 3, (B,), generator=gen)  # 1-2k
    lengths = {"paper_step": [P] * B,  # the worst case
               "draft_step": [int(x) for x in drafts]}
    for name, lens in lengths.items():
        result[name] = training_step(model, [rand(n) for n in lens], G, L, device)
        s = result[name]
        print(f"{name} ({B}x{G} rollouts, prompts of {lens} tokens, every completion at "
              f"the {L}-token cap): rollouts {s['rollout_s']:.1f} s + update "
              f"{s['update_s']:.1f} s, peak {s.get('peak_allocated_GB', 0):.1f} GB; 2,000 "
              f"such steps: {s['projected_2000_steps_h']:.1f} h (an upper bound)", flush=True)
        save("gpu", result, folder)
    return result


def decode_by_batch(model, rand, device, batch, big, roofline):
    """Tokens/s of batch rows (16 a prompt) over `new` steps after draft-variant prompts:
    ours eagerly, from CUDA graphs, the copying path and HF generate."""
    prompt_len, new = (1536, 128) if big else (32, 16)  # a draft-variant prompt: 1-2k tokens
    prompts = [rand(prompt_len) for _ in range(batch // 16)]
    kw = dict(n=16, temperature=1.0, eos_token_id=-1, pad_token_id=0, batch_size=batch)
    with_graphs = lambda *a, **k: generate(*a, graphs=cuda_graphs(), **k)
    gens = {"ours": generate, "copied": copied_generate}
    if device == "cuda":
        gens["graphs"] = with_graphs
    rate = {}
    with merged(model):
        for label, gen in gens.items():
            t1, _ = timed(lambda: gen(model, prompts, max_new_tokens=1, **kw), device)
            tn, _ = timed(lambda: gen(model, prompts, max_new_tokens=new, **kw), device)
            rate[label] = batch * (new - 1) / (tn - t1)
        ids = torch.tensor([p for p in prompts for _ in range(16)], device=device)
        hf_steps = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n,
                                            do_sample=True, top_k=0, pad_token_id=0)
        with torch.no_grad():
            hf_steps(2)
            h1, _ = timed(lambda: hf_steps(1), device)
            hn, _ = timed(lambda: hf_steps(new), device)
    hf = batch * (new - 1) / (hn - h1)
    roof = roofline(len(prompts), prompt_len, batch, new)
    best = max(v for k, v in rate.items() if k != "copied")
    rates = ", ".join(f"{k} {v:.0f} tok/s" for k, v in rate.items())
    print(f"decode batch {batch:3d} after {prompt_len}-token prompts: {rates}, "
          f"HF generate {hf:.0f} tok/s ({best / hf:.2f}x), "
          f"roofline {roof:.0f} tok/s ({100 * best / roof:.0f} %)", flush=True)
    return {"prompt_tokens": prompt_len, **{f"{k}_tok_s": v for k, v in rate.items()},
            "hf_tok_s": hf, "roofline_tok_s": roof, "vs_hf": best / hf,
            "vs_copied": best / rate["copied"], "of_roofline": best / roof}


def training_step(model, prompts, G, L, device):
    """One training step by hand: rollouts of G rows a prompt to the L-token cap (no EOS),
    from CUDA graphs on CUDA, then the update (every group has a gradient) and AdamW."""
    B = len(prompts)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6, betas=(0.9, 0.99), weight_decay=0.01)
    rewards = torch.tensor([[float(g % 2) for g in range(G)] for _ in range(B)])

    def update(completions):
        adv = grpo.group_advantages(rewards)
        loss = policy_update(model, prompts, completions, adv, L).loss
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return loss
    peak_memory(device)
    model.eval()
    with merged(model, cache_bytes(model, sum(map(len, prompts)), B * G, L)):
        rollouts = lambda: generate(model, prompts, n=G, max_new_tokens=L, eos_token_id=-1,
                                    pad_token_id=0, seed=1, graphs=cuda_graphs())
        t_roll, completions = timed(rollouts, device)
    model.train()
    t_upd, _ = timed(lambda: update(completions), device)
    return {"prompt_tokens": list(map(len, prompts)), "prompts": B, "generations": G,
            "new_tokens": L, "rollout_s": t_roll, "update_s": t_upd,
            "step_s": t_roll + t_upd, **peak_memory(device),
            "projected_2000_steps_h": 2000 * (t_roll + t_upd) / 3600}
