"""The rollout engine against the engines it replaced, on the CPU. bench.py rollout:
generate() against dynamic_generate (the engine two versions back) and copied_generate
(each prompt's K/V copied to its rows), with kv_bytes_held counting the K/V a batch
holds; bench.py ops: aten ops and kernels a decode step, extrapolated to Mathstral's
32 layers. The baselines are kept here as they were, measured side by side with a
check that both decode the same tokens."""
import contextlib
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
)

import generation
from bench.common import cpu_name, median_time, save, small_model
from extras.tiny import tokenizer as tiny_tokenizer
from generation import generate, mix, noise_roots, sample


# ---------------------------------------------- rollouts: the prompt held once
def left_pad(seqs, pad_token_id, device):
    """Token-id lists -> (ids, attention mask, position ids), each [N, longest],
    padded on the left so that every sequence ends in the last column; each sequence's
    positions start at 0, pads sit at 0."""
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + list(s) for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def copied_generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0,
                    eos_token_id=None, pad_token_id=0, seed=0, batch_size=64):
    """generation.generate before the prompt-once change, as the baseline: each prompt
    is prefilled once and its K/V copied to each of its n rows, read through the
    model's own attention (masks and sliding windows included); the same keyed
    sampling, so the same tokens up to float rounding. No stop strings."""
    device = next(model.parameters()).device
    jobs = [(p, s) for p in range(len(prompt_ids)) for s in range(n)]
    results = [[] for _ in prompt_ids]
    for start in range(0, len(jobs), batch_size):
        owner = [p for p, _ in jobs[start:start + batch_size]]
        firsts = sorted(set(owner))
        # [J, P]
        ids, mask, positions = left_pad([prompt_ids[p] for p in firsts], pad_token_id, device)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1)
        prompt = torch.tensor([firsts.index(p) for p in owner], device=device)  # [R]
        cache = out.past_key_values
        cache.batch_select_indices(prompt)  # copy each prompt's K/V to its rows
        # [R, *]
        logits = out.logits[prompt, -1]
        position = mask.sum(-1, keepdim=True)[prompt]
        mask = mask[prompt]
        key, tokens = noise_roots(seed, jobs[start:start + batch_size], device), [[] for _ in owner]
        live = torch.arange(len(owner), device=device)
        for t in range(max_new_tokens):
            nxt = sample(logits, mix(key ^ t), temperature, top_p)[0]
            for row, tok in zip(live.tolist(), nxt.tolist()):
                tokens[row].append(tok)
            keep = nxt != (-1 if eos_token_id is None else eos_token_id)
            if not keep.any():
                break
            if not keep.all():  # drop finished rows from the batch
                live, nxt, position, mask, key = (x[keep] for x in (live, nxt, position, mask, key))
                cache.batch_select_indices(keep.nonzero().squeeze(-1))
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)  # [R, P+t]
            with torch.no_grad():
                logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position,
                               past_key_values=cache, use_cache=True).logits[:, -1]
            position = position + 1
        for row, p in enumerate(owner):
            results[p].append(tokens[row])
    return results


# ----------------------------------------------- rollouts: the previous engine
def online_softmax_attention(module, query, key, value, attention_mask=None, scaling=None,
                             dropout=0.0, shared_prompts=None, sliding_window=None, **kwargs):
    """Attention of n rows over their prompt's K/V, held once per prompt, and over
    their own tokens' K/V, the two parts merged exactly (online softmax); registered
    with transformers as "shared_prompts", so Mistral, Llama and Qwen2 run it
    unchanged. query [n, H, T, d]; key/value [n, Hkv, S, d]: the rows' own tokens, the
    last T the queries'. shared_prompts = (keys, values, mask, prompt, slot, G): per
    layer [B, Hkv, P, d]; mask [B, P] (False on left padding); row -> its prompt and
    its place among that prompt's <= G rows. The prompt part masks padding, the own
    part is causal, both the sliding window. Products in the model's dtype, softmax in
    fp32 (as eager attention). The attention of dynamic_generate, the baseline: kept
    as it was, the decode part only."""
    keys, values, mask, prompt, slot, G = shared_prompts
    kp, vp = keys[module.layer_idx], values[module.layer_idx]  # [B, Hkv, P, d]
    (n, H, T, d), (B, Hkv, P, _), S = query.shape, kp.shape, key.shape[2]
    W = sliding_window or 2 ** 62  # a key W or more positions back is out of the window
    # GQA: head h reads K/V head h // (H // Hkv)
    q = query.reshape(n, Hkv, H // Hkv * T, d) * scaling
    qg = q.new_zeros(B, G, Hkv, H // Hkv * T, d).index_put_((prompt, slot), q)  # [B, G, Hkv, M, d]
    # all G rows' queries of a prompt in one product
    qg = qg.transpose(1, 2).reshape(B, Hkv, -1, d)
    pad = torch.zeros(B, 1, 1, P, device=q.device)  # [B, 1, 1, P]
    pad.masked_fill_(~mask[:, None, None, :], float("-inf"))
    s1 = (qg @ kp.transpose(-1, -2)).float().add_(pad)      # left padding at -inf
    # query t sits at position len + S - T + t, prompt key j at j - (left padding)
    if sliding_window:
        query_pos = mask.sum(-1, keepdim=True) + S - T + torch.arange(T, device=q.device)  # [B, T]
        back = query_pos[:, :, None] - (mask.cumsum(-1) - 1)[:, None, :]  # [B, T, P]
        s1.view(B, Hkv, -1, T, P).masked_fill_((back >= W)[:, None, None], float("-inf"))
    # any constant per query is exact; the max is stable
    m1 = s1.detach().amax(-1, keepdim=True).clamp_(min=-1e30)
    e1 = s1.sub_(m1).exp_()  # in place: scores are the big tensors [B, Hkv, G*M, P]
    # unnormalised output [B, Hkv, G*M, d] and sum
    u1, z1 = e1.to(vp.dtype) @ vp, e1.sum(-1, keepdim=True)
    # [n, Hkv, M, *]
    u1, z1, m1 = (x.unflatten(2, (G, -1)).transpose(1, 2)[prompt, slot] for x in (u1, z1, m1))
    s2 = (q @ key.transpose(-1, -2)).float()  # [n, Hkv, M, S]
    # own key, query
    j, i = torch.arange(S, device=q.device), torch.arange(S - T, S, device=q.device)[:, None]
    hide = (j > i) | (i - j >= W)  # own tokens: causal (row padding sits at the end)
    s2 = s2.masked_fill_(hide.repeat(H // Hkv, 1), float("-inf"))  # [T, S] per head
    m2 = s2.detach().amax(-1, keepdim=True)
    e2 = s2.sub_(m2).exp_()  # [n, Hkv, M, S]
    u2, z2 = e2.to(value.dtype) @ value, e2.sum(-1, keepdim=True)
    m = torch.maximum(m1, m2)  # the merge: one softmax over prompt + own tokens
    a1, a2 = (m1 - m).exp(), (m2 - m).exp()  # [n, Hkv, M, 1]
    out = (u1 * a1 + u2 * a2) / (z1 * a1 + z2 * a2)  # [n, Hkv, M, d]
    return out.reshape(n, H, T, d).transpose(1, 2).to(query.dtype), None  # [n, T, H, d]


@contextlib.contextmanager
def dynamic_attention(model):
    """dynamic_generate's attention switch: online_softmax_attention, with SDPA's
    masks."""
    AttentionInterface.register("online_softmax", online_softmax_attention)
    AttentionMaskInterface.register("online_softmax", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    old, model.config._attn_implementation = model.config._attn_implementation, "online_softmax"
    try:
        yield
    finally:
        model.config._attn_implementation = old


def dynamic_generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0,
                     eos_token_id=None, pad_token_id=0, seed=0, keys=None, stop_strings=(),
                     tokenizer=None, batch_size=64):
    """prompt_ids: token-id lists; n: samples per prompt, or per prompt a list of
    sample numbers. Returns, per prompt, its completions (token-id lists, EOS kept) in
    sample order. Sample s of prompt p draws from noise keyed by (seed, keys[p], s)
    (keys default to 0, 1, ...): the same tokens whichever rows share its batch or
    process, up to float rounding of the logits. Stops at EOS, max_new_tokens, or
    (with a tokenizer) a stop string in the tail. generation.generate before the
    fixed-shape engine, as the baseline of `bench.py rollout`: a DynamicCache that
    concatenates every layer's K/V at every step, finished rows dropped every step,
    every token read by the host."""
    with torch.no_grad():
        samples = [range(n)] * len(prompt_ids) if isinstance(n, int) else n
        keys = range(len(prompt_ids)) if keys is None else keys
        jobs = [(p, s) for p in range(len(prompt_ids)) for s in samples[p]]
        device, results = next(model.parameters()).device, [[] for _ in prompt_ids]
        # consecutive rows; a prompt may straddle two batches
        for start in range(0, len(jobs), batch_size):
            owner = [p for p, _ in jobs[start:start + batch_size]]
            firsts = sorted(set(owner))  # [J]
            # Each prompt is prefilled alone: no padding, so no fully masked row for a
            # fused kernel to return NaN on; the K/V are then left-padded with zeros,
            # which the attention masks.
            # (A plain cache keeps a windowed prompt.)
            outs = [model(input_ids=torch.tensor([prompt_ids[p]], device=device),
                          past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
                    for p in firsts]
            # [J, P]
            mask = left_pad([prompt_ids[p] for p in firsts], pad_token_id, device)[1]
            P = mask.shape[1]
            caches = [o.past_key_values.layers for o in outs]  # per prompt, its layers
            # per prompt, its left padding
            lefts = [P - len(prompt_ids[p]) for p in firsts]
            kv = [[torch.cat([torch.nn.functional.pad(getattr(c[i], part), (0, 0, left, 0))
                              for c, left in zip(caches, lefts)])
                   for i in range(len(caches[0]))]
                  for part in ("keys", "values")]  # [J, Hkv, P, d]
            prompt = torch.tensor([firsts.index(p) for p in owner], device=device)  # [R]
            # [R]
            slot = torch.tensor([r - owner.index(p) for r, p in enumerate(owner)], device=device)
            prompts = (kv[0], kv[1], mask.bool(), prompt, slot, max(slot.tolist()) + 1)
            logits = torch.cat([o.logits[:, -1] for o in outs])[prompt]  # [R, V]
            position = mask.sum(-1, keepdim=True)[prompt]  # [R, 1]
            batch_keys = [(keys[p], s) for p, s in jobs[start:start + batch_size]]
            key = noise_roots(seed, batch_keys, device)  # [R]
            tokens, cache = [[] for _ in owner], DynamicCache()
            live = torch.arange(len(owner), device=device)
            with dynamic_attention(model):  # the rows' cache holds their own tokens
                for t in range(max_new_tokens):
                    nxt = sample(logits, mix(key ^ t), temperature, top_p)[0]  # [R]
                    keep = []
                    for row, tok in zip(live.tolist(), nxt.tolist()):
                        tokens[row].append(tok)
                        done = tok == eos_token_id or (
                            stop_strings and tokenizer is not None
                            and any(s in tokenizer.decode(tokens[row][-12:])
                                    for s in stop_strings))
                        keep.append(not done)
                    if not any(keep):
                        break
                    if not all(keep):  # drop finished rows from the batch
                        sel = torch.tensor(keep, device=device)
                        live, nxt, position, key = live[sel], nxt[sel], position[sel], key[sel]
                        cache.batch_select_indices(sel.nonzero().squeeze(-1))
                        prompts = prompts[:3] + (prompts[3][sel], prompts[4][sel], prompts[5])
                    logits = model(input_ids=nxt[:, None], position_ids=position, cache=cache,
                                   use_cache=True, shared_prompts=prompts).logits[:, -1]
                    position = position + 1
            for row, p in enumerate(owner):
                results[p].append(tokens[row])
        return results


# -------------------------------------------------------------------- measures
@contextlib.contextmanager
def kv_bytes_held(model):
    """Within the block, record the most KV-cache bytes held entering any decode step
    of `model`: a DynamicCache's tensors (the baselines), or generate()'s RolloutCache
    (each prompt's K/V once and the rows' own), each tensor counted once. Yields the
    one-element list the peak is kept in."""
    peak, forward, step = [0], model.forward, generation.decode_one_token

    def count(held):
        peak[0] = max(peak[0], sum({t.data_ptr(): t.nbytes for t in held}.values()))

    def counting(*args, past_key_values=None, **kwargs):
        count([t for layer in getattr(past_key_values, "layers", [])
               for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor)])
        given = {"past_key_values": past_key_values} if past_key_values is not None else {}
        return forward(*args, **given, **kwargs)

    def counting_step(m, cache, *args, **kwargs):
        count([cache.prompt, cache.own] if m is model else [])
        return step(m, cache, *args, **kwargs)
    model.forward, generation.decode_one_token = counting, counting_step
    try:
        yield peak
    finally:
        model.forward, generation.decode_one_token = forward, step


# aten ops that only make a view or metadata: no kernel of their own on a GPU
VIEWS = {"aten::" + name for name in (
    "view", "reshape", "_reshape_alias", "as_strided", "transpose", "t", "expand",
    "slice", "select", "unsqueeze", "squeeze", "permute", "_unsafe_view", "alias",
    "detach", "unflatten", "flatten", "split", "chunk", "narrow", "unbind", "view_as",
    "expand_as", "contiguous", "lift_fresh", "result_type", "empty", "empty_strided",
    "resolve_conj", "resolve_neg")}


def ops_per_step(fn, steps=16, kernels=False):
    """aten ops of one decode step, nested calls counted: the profiler's difference
    between fn(1 + steps) and fn(1) (the prefill and set-up cancel), over steps.
    kernels: the innermost ops alone, views and metadata left out: an estimate of the
    kernels a GPU runs for the step (eagerly, one launch each; from a CUDA graph, one
    replay)."""
    counts = []
    for n in (1, 1 + steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(n)
        counted = [e for e in prof.events() if e.name.startswith("aten::") and (
            not kernels or not e.cpu_children and e.name not in VIEWS)]
        counts.append(len(counted))
    return (counts[1] - counts[0]) / steps


# ---------------------------------------------------------------- the sections
def bench_ops(args):
    """Host work per decode step at Mathstral's depth, by extrapolation: aten ops per
    step (nested calls counted, ops_per_step) of generate() and of the previous engine
    (dynamic_generate) at half and all of --layers, the ops each layer adds, and the
    count at 32 layers. On a GPU each top-level op is a kernel launch of a few
    microseconds when run eagerly; a CUDA graph replays the whole step at once."""
    torch.manual_seed(0)
    prompts = [torch.randint(4, 2000, (512,)).tolist() for _ in range(4)]
    kw = dict(n=16, eos_token_id=-1, pad_token_id=3, seed=1)
    depths = (args.layers // 2, args.layers)
    models = [small_model(tiny_tokenizer(), args.hidden, n).eval() for n in depths]
    result = {"device": cpu_name(), "hidden": args.hidden, "layers": depths}
    for label, gen in (("ours", generate), ("before", dynamic_generate)):
        for kind in ("ops", "kernels"):
            ops = [ops_per_step(lambda n: gen(m, prompts, max_new_tokens=n, **kw),
                                kernels=kind == "kernels") for m in models]
            per_layer = (ops[1] - ops[0]) / (depths[1] - depths[0])
            at_32 = ops[1] + per_layer * (32 - depths[1])
            result[f"{label}_{kind}"] = {"per_step": ops, "per_layer": per_layer,
                                         "at_32_layers": at_32}
            print(f"{label}: {kind} per decode step {ops[0]:.0f} at {depths[0]} layers, "
                  f"{ops[1]:.0f} at {depths[1]}: {per_layer:.0f} per layer, "
                  f"{at_32:.0f} at 32 layers", flush=True)
    save("ops", result, args.out)


def bench_rollout(args):
    """generate() (fixed shapes, preallocated K/V, a look from the host every
    CHECK_EVERY steps) against the engines before it, on the CPU. 1. The decode engine
    vs dynamic_generate (the previous generate: a DynamicCache that concatenates every
    step, rows dropped every step, every token read by the host), 4 prompts of 512
    tokens x 16 rows, no EOS: time at 64 and 1,024 new tokens, the late/early per-step
    ratio, aten ops per step, greedy rows identical. 2. Finished rows leaving the
    batch (compaction) or staying, masked, with rows ending at EOS. 3. Each prompt's
    K/V held once vs copied to its rows (copied_generate), after 100-2,000-token
    prompts."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = small_model(tiny_tokenizer(), args.hidden, args.layers).eval()
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    kv_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4  # fp32
    B, G, P = 4, 16, 512
    result = {"device": cpu_name(), "threads": torch.get_num_threads(),
              "hidden": args.hidden, "layers": args.layers, "heads": c.num_attention_heads,
              "kv_heads": c.num_key_value_heads, "B": B, "G": G, "runs": args.steps,
              "kv_bytes_per_token": kv_token}
    prompts = [torch.randint(4, 2000, (P,)).tolist() for _ in range(B)]
    kw = dict(n=G, eos_token_id=-1, pad_token_id=3, seed=1)
    engine = {"prompt_tokens": P}
    for label, gen in (("ours", generate), ("before", dynamic_generate)):
        for L in (64, 1024):
            engine[f"{label}_s_{L}"] = median_time(
                lambda: gen(model, prompts, max_new_tokens=L, **kw), args.steps)
        late, early = engine[f"{label}_s_1024"] / 1024, engine[f"{label}_s_64"] / 64
        engine[f"{label}_late_early"] = late / early
        engine[f"{label}_ops_per_step"] = ops_per_step(
            lambda n: gen(model, prompts, max_new_tokens=n, **kw))
        engine[f"{label}_greedy"] = gen(model, prompts, max_new_tokens=1024, temperature=0, **kw)
    rows = lambda out: [row for group in out for row in group]
    greedy_ours = rows(engine.pop("ours_greedy"))
    greedy_before = rows(engine.pop("before_greedy"))
    identical = sum(a == b for a, b in zip(greedy_ours, greedy_before))
    engine["greedy_rows_identical"] = identical / (B * G)
    for L in (64, 1024):
        engine[f"speedup_{L}"] = engine[f"before_s_{L}"] / engine[f"ours_s_{L}"]
    engine["ops_ratio"] = engine["ours_ops_per_step"] / engine["before_ops_per_step"]
    result["engine"] = engine
    print(f"decode engine, {B} x {G} rows after {P}-token prompts, no EOS, "
          f"median of {args.steps} runs: "
          f"64 tokens {engine['ours_s_64']:.2f} s vs {engine['before_s_64']:.2f} s "
          f"before ({engine['speedup_64']:.2f}x); "
          f"1,024 tokens {engine['ours_s_1024']:.2f} s vs "
          f"{engine['before_s_1024']:.2f} s ({engine['speedup_1024']:.2f}x); "
          f"late/early per-step time {engine['ours_late_early']:.2f} vs "
          f"{engine['before_late_early']:.2f}; "
          f"aten ops per step {engine['ours_ops_per_step']:.0f} vs "
          f"{engine['before_ops_per_step']:.0f} ({engine['ops_ratio']:.2f}); "
          f"greedy rows identical {100 * engine['greedy_rows_identical']:.1f} %")

    # 2. rows ending at EOS (an LM-head bias makes it ~1 in 300 a step): compaction
    # at half the rows vs never
    eos, compact, head = 7, generation.COMPACT_AT, model.get_output_embeddings()
    bias = torch.zeros(head.out_features).index_fill_(0, torch.tensor([eos]), 1.9)
    head.bias = torch.nn.Parameter(bias)
    ending, with_eos = {}, {**kw, "eos_token_id": eos}
    for label, at in (("compacted", compact), ("masked", 0.0)):
        generation.COMPACT_AT = at
        ending[f"{label}_s"] = median_time(
            lambda: generate(model, prompts, max_new_tokens=1024, **with_eos), args.steps)
        ending[f"{label}_rows"] = generate(model, prompts, max_new_tokens=1024, **with_eos)
    generation.COMPACT_AT, head.bias = compact, None
    lengths = [len(r) for r in rows(ending["compacted_rows"])]
    ending.update(same_tokens=ending.pop("compacted_rows") == ending.pop("masked_rows"),
                  speedup=ending["masked_s"] / ending["compacted_s"],
                  median_length=statistics.median(lengths), longest=max(lengths))
    result["rows_ending"] = ending
    print(f"rows ending at EOS (median {ending['median_length']:.0f} tokens, "
          f"longest {ending['longest']}): "
          f"finished rows leaving the batch {ending['compacted_s']:.2f} s, "
          f"staying masked {ending['masked_s']:.2f} s "
          f"({ending['speedup']:.2f}x); same tokens: {ending['same_tokens']}")

    # 3. the prompt held once vs copied to every row
    result["prompts"] = {}
    for P in (100, 500, 2000):
        prompts = [torch.randint(4, 2000, (P,)).tolist() for _ in range(B)]
        row, outs = {}, {}
        for label, gen in (("shared", generate), ("copied", copied_generate)):
            row[f"{label}_s"] = median_time(lambda: gen(model, prompts, max_new_tokens=64, **kw),
                                            args.steps)
            with kv_bytes_held(model) as peak:
                outs[label] = gen(model, prompts, max_new_tokens=64, temperature=1.0, **kw)
            row[f"{label}_kv_bytes"] = peak[0]
        flat = lambda o: [t for r in rows(o) for t in r]
        row["speedup"] = row["copied_s"] / row["shared_s"]
        row["kv_ratio"] = row["copied_kv_bytes"] / row["shared_kv_bytes"]
        # the bound: B*P + B*G*L tokens, P padded to a multiple of 128
        row["bound_kv_bytes"] = (B * generation.bucket(P) + B * G * 64) * kv_token
        pairs = zip(flat(outs["shared"]), flat(outs["copied"]))
        row["tokens_differing"] = sum(a != b for a, b in pairs)
        result["prompts"][P] = row
        print(f"rollouts {B} x {G} x 64 tokens after {P}-token prompts: "
              f"shared {row['shared_s']:.3f} s, copied {row['copied_s']:.3f} s "
              f"-> {row['speedup']:.2f}x; "
              f"KV held {row['shared_kv_bytes'] / 2**20:.1f} MiB "
              f"vs {row['copied_kv_bytes'] / 2**20:.1f} MiB "
              f"(bound {row['bound_kv_bytes'] / 2**20:.1f} MiB); "
              f"{row['tokens_differing']} of {B * G * 64} tokens differ")
    save("rollout", result, args.out)
