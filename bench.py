"""Benchmarks. Every performance or agreement figure in README.md comes from one of these commands.

  python bench.py grader            # reward.py: agreement on tests/data/grader_cases.jsonl + worst-case timings
  python bench.py grader --math-verify   # also where math-verify (optional, never imported by the core) disagrees
  python bench.py cpu               # CPU: our GRPO step vs TRL's GRPOTrainer (if installed), our generate vs HF
  python bench.py rollout --steps 3 # CPU: generate() holding each prompt once vs copying it to its rows
  python bench.py gpu               # GPU: Mathstral-7B-shaped random model: decode tok/s vs HF and roofline,
                                    #      prefill time, one paper-config training step and its peak memory
Each section prints a table and writes bench/results/<section>-<device>.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def save(section, result):
    os.makedirs(os.path.join(HERE, "bench", "results"), exist_ok=True)
    name = result.get("device", platform.node()).replace(" ", "_").replace("/", "_")
    tag = (f"-h{result['hidden']}" if "hidden" in result else "") + ("-drafts" if result.get("drafts") else "") + \
        (f"-p{result['prompt_tokens']}" if section == "update" else "")
    path = os.path.join(HERE, "bench", "results", f"{section}-{name}{tag}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- grader
def bench_grader(args):
    from reward import is_equiv, reward
    cases = [json.loads(l) for l in open(os.path.join(HERE, "tests", "data", "grader_cases.jsonl"), encoding="utf-8")]
    agree, times, disagreements = 0, [], []
    for c in cases:
        t = time.perf_counter()
        if c["kind"] == "answer":
            ok = is_equiv(c["pred"], c["gold"]) == c["equal"]
        else:
            ok = (reward(c["completion"], c["gold"], strict=True), reward(c["completion"], c["gold"])) == \
                 (c["strict"], c["lenient"])
        times.append(time.perf_counter() - t)
        agree += ok
        if not ok:
            disagreements.append(c)
    sys.path.insert(0, os.path.join(HERE, "tests"))
    from test_reward import ADVERSARIAL
    adv = []
    for text in ADVERSARIAL:
        for strict in (True, False):
            t = time.perf_counter()
            reward(text, "\\frac{1}{2}", strict=strict)
            adv.append(time.perf_counter() - t)
    result = {"cases": len(cases), "agreement": agree / len(cases), "mean_ms": 1e3 * statistics.mean(times),
              "max_ms": 1e3 * max(times), "adversarial_mean_ms": 1e3 * statistics.mean(adv),
              "adversarial_max_ms": 1e3 * max(adv), "device": "cpu-" + platform.machine()}
    if args.math_verify:
        try:
            from math_verify import parse, verify
        except ImportError:
            print("math-verify is not installed (pip install math-verify); skipping the comparison")
        else:
            mv_agree = 0
            answers = [c for c in cases if c["kind"] == "answer"]
            for c in answers:
                try:
                    mv = bool(verify(parse(f"${c['gold']}$"), parse(f"${c['pred']}$")))
                except Exception:
                    mv = False
                mv_agree += mv == c["equal"]
                if mv != c["equal"]:
                    print(f"  math-verify {'accepts' if mv else 'rejects'} {c['pred']!r} for {c['gold']!r}")
            result["math_verify_agreement_on_answer_pairs"] = mv_agree / len(answers)
    print(f"grader: {agree}/{len(cases)} agree ({100 * result['agreement']:.2f}%), mean {result['mean_ms']:.3f} ms, "
          f"max {result['max_ms']:.2f} ms; adversarial inputs: mean {result['adversarial_mean_ms']:.2f} ms, "
          f"max {result['adversarial_max_ms']:.1f} ms")
    for c in disagreements[:20]:
        print("  disagrees:", c)
    save("grader", result)


# ----------------------------------------------------------------------------- CPU: training step and generation
def small_model(tokenizer, hidden=256, layers=4):
    """A random Mistral (Mathstral's layout). hidden 64 x 2 layers is `--model tiny`; 256 x 4 is big enough that
    the model's arithmetic, not Python, dominates a CPU step."""
    from generation import tiny_model
    return tiny_model(len(tokenizer), seed=0, hidden=hidden, layers=layers, heads=4 if hidden < 128 else 8,
                      kv_heads=2)


def bench_cpu(args):
    import torch
    import grpo
    from drafts import build_prompt, load_jsonl
    from generation import generate, tiny_tokenizer
    from lora import apply_lora, merged
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tok = tiny_tokenizer()
    B, G, L, steps = 4, 8, args.new_tokens, args.steps
    rows = [r for r in load_jsonl(os.path.join(HERE, "data", "math_train.jsonl"))
            if r.get("level") in (3, 4, 5) and r["answer"]][:B * steps]
    for i, r in enumerate(rows):     # --drafts: another problem's solution as the draft, as mismatched prompts show
        r["draft"] = rows[(i + 1) % len(rows)]["solution"] if args.drafts else None
    result = {"device": "cpu-" + platform.machine(), "threads": torch.get_num_threads(), "B": B, "G": G,
              "hidden": args.hidden, "layers": args.layers,
              "max_new_tokens": L, "steps_timed": steps - 1, "drafts": args.drafts,
              "model": f"random Mistral, hidden {args.hidden}, {args.layers} layers"}

    # generation: ours vs HF generate, same model, 4 prompts x 8 samples, L tokens each (a random model rarely stops)
    model = small_model(tok, args.hidden, args.layers).eval()
    ids = [tok(build_prompt(r["problem"], r["draft"]))["input_ids"] for r in rows[:B]]
    result["mean_prompt_tokens"] = statistics.mean(len(tok(build_prompt(r["problem"], r["draft"]))["input_ids"])
                                                   for r in rows)
    t = time.perf_counter()
    ours = generate(model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1, pad_token_id=tok.pad_token_id)
    result["ours_generate_s"] = time.perf_counter() - t
    tokens = sum(len(c) for group in ours for c in group)
    tok.padding_side = "left"
    enc = tok([build_prompt(r["problem"], r["draft"]) for r in rows[:B]], return_tensors="pt", padding=True)
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=L,
                       min_new_tokens=L, num_return_sequences=G, pad_token_id=tok.pad_token_id)
    result["hf_generate_s"] = time.perf_counter() - t
    result["generate_speedup_vs_hf"] = result["hf_generate_s"] / result["ours_generate_s"]
    result["ours_generate_tok_s"] = tokens / result["ours_generate_s"]
    lora_model = apply_lora(small_model(tok, args.hidden, args.layers)).eval()
    t = time.perf_counter()
    generate(lora_model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1, pad_token_id=tok.pad_token_id)
    result["lora_unmerged_generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with merged(lora_model):
        generate(lora_model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1,
                 pad_token_id=tok.pad_token_id)
    result["lora_merged_generate_s"] = time.perf_counter() - t

    # one GRPO step (rollouts + rewards + update), ours vs TRL's GRPOTrainer with the same settings. Two rewards:
    # the real grader (a random model scores 0: every group is skipped, as early in training on hard problems) and a
    # deterministic coin flip per completion (every group has variance: the full update runs in both trainers)
    import shutil
    import zlib
    coin = lambda text, gold: float(zlib.crc32(text.encode()) % 2)
    for label, reward_fn in (("grader", None), ("coin", coin)):
        out = os.path.join("/tmp", "bench_cpu_ours")
        shutil.rmtree(out, ignore_errors=True)
        targs = grpo.parse_args(["--model", "small", "--variant", "no-draft", "--output-dir", out, "--max-steps",
                                 str(steps), "--prompts-per-step", str(B), "--num-generations", str(G),
                                 "--max-new-tokens", str(L), "--save-every", "100000", "--exclude", ""])
        torch.manual_seed(0)
        grpo.train(targs, rows, apply_lora(small_model(tok, args.hidden, args.layers)), tok, reward_fn=reward_fn)
        times = [json.loads(l)["step_time"] for l in open(os.path.join(out, "metrics.jsonl"))][1:]
        result[f"ours_step_s_{label}"] = statistics.median(times)
        try:
            result.update({f"{k}_{label}": v for k, v in trl_step(rows, tok, B, G, L, steps, reward_fn, args.hidden, args.layers).items()})
            result[f"step_speedup_vs_trl_{label}"] = result[f"trl_step_s_{label}"] / result[f"ours_step_s_{label}"]
        except ImportError as e:
            print(f"TRL not installed ({e}); pip install trl to compare")
    print(f"CPU ({result['threads']} threads), {B} prompts ({result['mean_prompt_tokens']:.0f} tokens on average) x {G} "
          f"rollouts x {L} tokens, {result['model']}")
    print(f"  generate: ours {result['ours_generate_s']:.2f} s, HF generate {result['hf_generate_s']:.2f} s "
          f"-> {result['generate_speedup_vs_hf']:.2f}x; LoRA unmerged {result['lora_unmerged_generate_s']:.2f} s, "
          f"merged {result['lora_merged_generate_s']:.2f} s")
    for label in ("grader", "coin"):
        line = f"  GRPO step, {label} reward: ours {result[f'ours_step_s_{label}']:.2f} s"
        if f"trl_step_s_{label}" in result:
            line += f", TRL {result[f'trl_version_{label}']} GRPOTrainer {result[f'trl_step_s_{label}']:.2f} s " \
                    f"-> {result[f'step_speedup_vs_trl_{label}']:.2f}x"
        print(line)
    save("cpu", result)


def full_sequence_update(model, prompt_ids, completions, advantages, args, pad_token_id):
    """The update before the prompt-once change, as the baseline: every (prompt + completion) row runs forward and
    backward whole, micro-batched by padded length, through the same chunked LM head and loss."""
    import torch
    import grpo
    B, G = advantages.shape
    rows = [(b, g) for b in range(B) for g in range(G)]
    lengths = [len(prompt_ids[b]) + len(completions[b][g]) for b, g in rows]
    for mb in grpo.micro_batches(lengths, args.micro_batch_tokens):
        seqs = [prompt_ids[rows[i][0]] + completions[rows[i][0]][rows[i][1]] for i in mb]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in seqs])                       # [n, T]
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])                     # [n, T]
        comp = torch.tensor([[0] * len(prompt_ids[rows[i][0]]) + [1] * len(completions[rows[i][0]][rows[i][1]])
                             + [0] * (width - lengths[i]) for i in mb])                                # [n, T]
        hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state             # [n, T, H]
        logprobs = grpo.completion_logprobs(model, hidden[:, :-1], ids[:, 1:], comp[:, 1:])            # [n, T-1]
        adv = torch.stack([advantages[rows[i]] for i in mb])
        loss = grpo.dr_grpo_loss(logprobs, logprobs.detach(), adv, comp[:, 1:].float(), args.max_new_tokens)
        (loss * len(mb) / (B * G)).backward()


def bench_update(args):
    """The update alone: grpo.policy_update (each prompt forward once) vs full_sequence_update (each prompt once
    per rollout), same model, rollouts and checkpointing; also checks that their gradients agree."""
    import torch
    import grpo
    from generation import tiny_tokenizer
    from lora import apply_lora
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = apply_lora(small_model(tiny_tokenizer(), args.hidden, args.layers))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)                     # B = 0 would hide the gradient through the prompt
    grpo.enable_checkpointing(model)
    model.train()
    B, G, L, P = 4, 8, args.new_tokens, args.prompt_tokens
    prompts = [torch.randint(4, 2000, (P,)).tolist() for _ in range(B)]
    completions = [[torch.randint(4, 2000, (L,)).tolist() for _ in range(G)] for _ in range(B)]
    advantages = grpo.group_advantages(torch.tensor([[float(g % 2) for g in range(G)] for _ in range(B)]))
    targs = grpo.parse_args(["--max-new-tokens", str(L)])
    result = {"device": "cpu-" + platform.machine(), "threads": torch.get_num_threads(), "hidden": args.hidden,
              "layers": args.layers, "B": B, "G": G, "prompt_tokens": P, "completion_tokens": L}
    grads = {}
    for label, fn in (("prompt_once", lambda: grpo.policy_update(model, prompts, completions, advantages,
                                                                 torch.zeros(B, dtype=torch.bool), targs, 3)),
                      ("full_sequence", lambda: full_sequence_update(model, prompts, completions, advantages, targs,
                                                                     3))):
        times = []
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        result[f"{label}_s"] = statistics.median(times[1:])
        grads[label] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    result["speedup"] = result["full_sequence_s"] / result["prompt_once_s"]
    diff = (grads["prompt_once"] - grads["full_sequence"]).abs().max() / grads["full_sequence"].abs().max()
    result["max_grad_rel_diff"] = diff.item()
    print(f"update, {B} x {G} rollouts of {L} tokens after {P}-token prompts, hidden {args.hidden} x {args.layers} "
          f"layers: prompt once {result['prompt_once_s']:.3f} s, whole sequences "
          f"{result['full_sequence_s']:.3f} s -> {result['speedup']:.2f}x; gradients agree to {diff:.1e}")
    save("update", result)


def trl_step(rows, tok, B, G, L, steps, reward_fn=None, hidden=256, layers=4):
    """TRL's GRPOTrainer on the same model, prompts, reward and hyper-parameters (Dr. GRPO loss, beta 0, LoRA)."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from drafts import build_prompt
    from reward import reward

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_begin(self, *a, **k):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.marks[-1] = time.perf_counter() - self.marks[-1]

    data = Dataset.from_list([{"prompt": build_prompt(r["problem"], r["draft"]), "answer": r["answer"]} for r in rows])
    config = trl.GRPOConfig(output_dir="/tmp/bench_cpu_trl", per_device_train_batch_size=B * G, num_generations=G,
                            max_completion_length=L, loss_type="dr_grpo", scale_rewards="none", beta=0.0,
                            learning_rate=5e-6, lr_scheduler_type="constant", adam_beta2=0.99, weight_decay=0.01,
                            max_grad_norm=1.0, temperature=1.0, top_p=1.0, max_steps=steps, use_cpu=True, bf16=False,
                            save_strategy="no", report_to="none", logging_steps=1, gradient_checkpointing=True,
                            shuffle_dataset=False, disable_tqdm=True)
    torch.manual_seed(0)
    timer = Timer()
    trainer = trl.GRPOTrainer(model=small_model(tok, hidden, layers), args=config, train_dataset=data, processing_class=tok,
                              reward_funcs=lambda prompts, completions, answer, **kw:
                              [(reward_fn or reward)(c, a) for c, a in zip(completions, answer)],
                              peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"]),
                              callbacks=[timer])
    trainer.train()
    return {"trl_step_s": statistics.median(timer.marks[1:]), "trl_version": trl.__version__}


# ----------------------------------------------------------------------------- GPU: 7B-shaped model
MATHSTRAL_SHAPE = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-5,
                       max_position_embeddings=32768)            # mistralai/Mathstral-7B-v0.1's config.json
# ----------------------------------------------------------------------------- rollouts: the prompt held once
def copied_generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0, eos_token_id=None,
                    pad_token_id=0, seed=0, batch_size=64):
    """generation.generate before the prompt-once change, as the baseline: each prompt is prefilled once and its K/V
    copied to each of its n rows, read through the model's own attention (masks and sliding windows included);
    the same keyed sampling, so the same tokens up to float rounding. No stop strings."""
    import torch
    from generation import left_pad, mix, sample_keys, sample_next
    device, jobs = next(model.parameters()).device, [(p, s) for p in range(len(prompt_ids)) for s in range(n)]
    results = [[] for _ in prompt_ids]
    for start in range(0, len(jobs), batch_size):
        owner = [p for p, _ in jobs[start:start + batch_size]]
        firsts = sorted(set(owner))
        ids, mask, positions = left_pad([prompt_ids[p] for p in firsts], pad_token_id, device)              # [J, P]
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        prompt = torch.tensor([firsts.index(p) for p in owner], device=device)                              # [R]
        cache = out.past_key_values
        cache.batch_select_indices(prompt)                                     # copy each prompt's K/V to its rows
        logits, position, mask = out.logits[prompt, -1], mask.sum(-1, keepdim=True)[prompt], mask[prompt]   # [R, *]
        key, tokens = sample_keys(seed, jobs[start:start + batch_size], device), [[] for _ in owner]
        live = torch.arange(len(owner), device=device)
        for t in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_p, mix(key ^ t))
            for row, tok in zip(live.tolist(), nxt.tolist()):
                tokens[row].append(tok)
            keep = nxt != (-1 if eos_token_id is None else eos_token_id)
            if not keep.any():
                break
            if not keep.all():                                                 # drop finished rows from the batch
                live, nxt, position, mask, key = (x[keep] for x in (live, nxt, position, mask, key))
                cache.batch_select_indices(keep.nonzero().squeeze(-1))
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)                                  # [R, P+t]
            with torch.no_grad():
                logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position,
                               past_key_values=cache, use_cache=True).logits[:, -1]
            position = position + 1
        for row, p in enumerate(owner):
            results[p].append(tokens[row])
    return results


def kv_bytes_held(model):
    """Wrap model.forward to record the most KV-cache bytes held entering any forward: the rows' cache plus the
    prompts' shared K/V, each tensor counted once. Returns the one-element list the peak is kept in."""
    import torch
    peak, forward = [0], model.forward

    def counting(*args, past_key_values=None, shared_prompts=None, **kwargs):
        held = [t for layer in getattr(past_key_values, "layers", []) for t in (layer.keys, layer.values)
                if isinstance(t, torch.Tensor)]
        held += list(shared_prompts[0]) + list(shared_prompts[1]) if shared_prompts else []
        peak[0] = max(peak[0], sum({t.data_ptr(): t.nbytes for t in held}.values()))
        extra = {"shared_prompts": shared_prompts} if shared_prompts else {}
        return forward(*args, past_key_values=past_key_values, **extra, **kwargs)
    model.forward = counting
    return peak


def bench_rollout(args):
    """generate() holding each prompt's K/V once (shared_prompt_attention) vs copying it to the prompt's G rows (the
    path before, copied_generate): time, KV bytes held, same tokens."""
    import torch
    from generation import generate, tiny_tokenizer
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = small_model(tiny_tokenizer(), args.hidden, args.layers).eval()
    c = model.config
    kv_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4  # fp32
    peak = kv_bytes_held(model)
    B, G, L = 4, 16, args.new_tokens
    result = {"device": "cpu-" + platform.machine(), "threads": torch.get_num_threads(), "hidden": args.hidden,
              "layers": args.layers, "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "B": B,
              "G": G, "new_tokens": L, "kv_bytes_per_token": kv_token, "prompts": {}}
    for P in (100, 500, 2000):
        prompts = [torch.randint(4, 2000, (P,)).tolist() for _ in range(B)]
        row, outs = {}, {}
        for label, gen in (("shared", generate), ("copied", copied_generate)):
            times = []
            for _ in range(args.steps):
                peak[0] = 0
                t = time.perf_counter()
                outs[label] = gen(model, prompts, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1,
                                  pad_token_id=3, seed=1)
                times.append(time.perf_counter() - t)
            row[f"{label}_s"], row[f"{label}_kv_bytes"] = statistics.median(times[1:]), peak[0]
        flat = lambda o: [t for group in o for s in group for t in s]
        row["speedup"] = row["copied_s"] / row["shared_s"]
        row["kv_ratio"] = row["copied_kv_bytes"] / row["shared_kv_bytes"]
        row["bound_kv_bytes"] = (B * P + B * G * L) * kv_token             # the issue's bound: B*P + B*G*L tokens
        row["tokens_differing"] = sum(a != b for a, b in zip(flat(outs["shared"]), flat(outs["copied"])))
        result["prompts"][P] = row
        print(f"rollouts {B} x {G} x {L} tokens after {P}-token prompts: shared {row['shared_s']:.3f} s, copied "
              f"{row['copied_s']:.3f} s -> {row['speedup']:.2f}x; KV held {row['shared_kv_bytes'] / 2**20:.1f} MiB "
              f"vs {row['copied_kv_bytes'] / 2**20:.1f} MiB (bound {row['bound_kv_bytes'] / 2**20:.1f} MiB); "
              f"{row['tokens_differing']} of {B * G * L} tokens differ")
    save("rollout", result)


def multinomial_next(logits, temperature, top_p, generator):
    """The sampler before keyed noise, as the baseline: nucleus filtering, then torch.multinomial on one generator
    shared by the batch (so a row's tokens depended on its batch and process)."""
    import torch
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(dim=-1) - sorted_probs > top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def bench_sampler(args, device="cpu", vocab=32768, rows=64, steps=200):
    """What keying every sample costs: generation.sample_next (hashed noise per row and step) vs multinomial_next,
    per decode step of 64 rows at Mathstral's vocabulary (top_p 1, as in training), and that both draw the same
    distribution: every row shares one set of logits, and the rows x steps draws' frequencies of the 20 likeliest
    tokens are compared with their probabilities."""
    import torch
    from generation import mix, sample_keys, sample_next
    torch.manual_seed(0)
    logits = (torch.randn(1, vocab, device=device) * 3).expand(rows, -1)                    # [R, V], rows alike
    keys, gen = sample_keys(0, [(0, r) for r in range(rows)], device), torch.Generator(device=device).manual_seed(0)
    probs = torch.softmax(logits[0].float(), -1)
    top = probs.topk(20).indices
    out = {"rows": rows, "vocab": vocab, "steps": steps, "top_p": 1.0, "device": device,
           "top_token_prob": probs.max().item()}
    for label, fn in (("keyed", lambda t: sample_next(logits, 1.0, 1.0, mix(keys ^ t))),
                      ("multinomial", lambda t: multinomial_next(logits, 1.0, 1.0, gen))):
        fn(0)
        seconds, draws = timed(lambda: [fn(t) for t in range(steps)], device)
        freq = torch.bincount(torch.stack(draws).flatten(), minlength=vocab).float() / (rows * steps)
        out[f"{label}_ms_per_step"] = 1e3 * seconds / steps
        out[f"{label}_max_gap_top20"] = (freq[top] - probs[top]).abs().max().item()
    out["keyed_vs_multinomial"] = out["keyed_ms_per_step"] / out["multinomial_ms_per_step"]
    print(f"sampling {rows} rows x {vocab} tokens on {device}: keyed {out['keyed_ms_per_step']:.3f} ms per step, "
          f"multinomial {out['multinomial_ms_per_step']:.3f} ms ({out['keyed_vs_multinomial']:.2f}x); over "
          f"{rows * steps} draws the 20 likeliest tokens' frequencies are within {out['keyed_max_gap_top20']:.4f} "
          f"(keyed) and {out['multinomial_max_gap_top20']:.4f} (multinomial) of their probabilities "
          f"(the likeliest: p = {out['top_token_prob']:.3f})")
    if args.section == "sampler":                                # inside `bench.py gpu` it goes into gpu's JSON
        save("sampler", {**out, "device": "cpu-" + platform.machine()})
    return out


TINY_SHAPE = dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=32768)


def timed(fn, device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def copy_bandwidth(nbytes, device):
    """Device-to-device copy of random bytes, GB/s counting bytes read plus written (the roofline's ceiling)."""
    import torch
    x = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    t, _ = timed(lambda: [y.copy_(x) for _ in range(10)], device)
    return 2 * nbytes * 10 / t / 1e9


def bench_gpu(args):
    """Random weights of Mathstral's exact shape (no download): decode tok/s (ours vs HF generate vs the HBM
    roofline), prefill, and one paper-config step (4 prompts x 3,072 tokens, 16 x 4,096 new tokens) with peak memory.
    --shape tiny runs the same code on a tiny model (CPU smoke test of this script)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM
    import grpo
    from generation import generate
    from lora import apply_lora, merged
    device = "cuda" if torch.cuda.is_available() else "cpu"
    big = args.shape == "mathstral"
    config = MistralConfig(**(MATHSTRAL_SHAPE if big else TINY_SHAPE), sliding_window=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.device(device):
        model = MistralForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    dtype_bytes = 2 if device == "cuda" else 4
    weight_bytes = sum(p.numel() for p in model.parameters()) * dtype_bytes
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu-" + platform.machine(),
              "shape": args.shape, "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    result["copy_bandwidth_GBps"] = copy_bandwidth(2 ** 30 if big else 2 ** 22, device)
    prompt_len, new = (1536, 128) if big else (32, 16)             # a draft-variant prompt: 1,000-2,000 tokens
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype_bytes
    rng = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(0, config.vocab_size, (n,), generator=rng).tolist()
    result["decode"] = {}
    for batch in (16, 64, 128):                                     # batch/16 prompts x 16 samples, as in training
        prompts = [rand(prompt_len) for _ in range(batch // 16)]
        kw = dict(n=16, temperature=1.0, eos_token_id=-1, pad_token_id=0, batch_size=batch)
        rate = {}
        for label, gen in (("ours", generate), ("copied", copied_generate)):
            t1, _ = timed(lambda: gen(model, prompts, max_new_tokens=1, **kw), device)
            tn, _ = timed(lambda: gen(model, prompts, max_new_tokens=new, **kw), device)
            rate[label] = batch * (new - 1) / (tn - t1)
        ids = torch.tensor([p for p in prompts for _ in range(16)], device=device)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=True, top_k=0, pad_token_id=0)
            h1, _ = timed(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=True, top_k=0,
                                                 pad_token_id=0), device)
            hn, _ = timed(lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                                                 top_k=0, pad_token_id=0), device)
        hf = batch * (new - 1) / (hn - h1)
        step_bytes = weight_bytes + (len(prompts) * prompt_len + batch * new / 2) * kv_per_token   # read per step
        roof = batch / (step_bytes / (result["copy_bandwidth_GBps"] * 1e9))
        result["decode"][batch] = {"prompt_tokens": prompt_len, "ours_tok_s": rate["ours"], "hf_tok_s": hf,
                                   "copied_tok_s": rate["copied"], "roofline_tok_s": roof, "vs_hf": rate["ours"] / hf,
                                   "vs_copied": rate["ours"] / rate["copied"], "of_roofline": rate["ours"] / roof}
        print(f"decode batch {batch:3d} after {prompt_len}-token prompts: ours {rate['ours']:8.0f} tok/s, prompt "
              f"copied per row {rate['copied']:8.0f} tok/s, HF generate {hf:8.0f} tok/s ({rate['ours'] / hf:.2f}x), "
              f"roofline {roof:8.0f} tok/s ({100 * rate['ours'] / roof:.0f}%)")
    result["sampler"] = bench_sampler(args, device, vocab=config.vocab_size)   # keyed noise vs multinomial, per step
    B, G, L = (4, 16, 4096) if big else (4, 4, 32)
    P = 3072 if big else 64
    with torch.no_grad():
        t, _ = timed(lambda: model(torch.tensor([rand(P) for _ in range(B)], device=device), logits_to_keep=1), device)
    result["prefill_s"] = {f"{B}x{P}": t}
    torch.manual_seed(0)
    apply_lora(model)
    targs = grpo.parse_args(["--max-new-tokens", str(L)])
    grpo.enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6, betas=(0.9, 0.99), weight_decay=0.01)
    rewards = torch.tensor([[float(g % 2) for g in range(G)] for _ in range(B)])       # every group has a gradient

    def update(prompts, completions):
        loss = grpo.policy_update(model, prompts, completions, grpo.group_advantages(rewards),
                                  torch.zeros(B, dtype=torch.bool), targs, 0)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return loss
    lengths = {"paper_step": [P] * B,                                                    # the worst case
               "draft_step": [int(x) for x in torch.randint(P // 3, 2 * P // 3, (B,), generator=rng)]}  # 1-2k
    for name, lens in lengths.items():
        prompts = [rand(n) for n in lens]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model.eval()
        with merged(model):
            t_roll, completions = timed(lambda: generate(model, prompts, n=G, max_new_tokens=L, temperature=1.0,
                                                         eos_token_id=-1, pad_token_id=0, seed=1), device)
        model.train()
        t_upd, _ = timed(lambda: update(prompts, completions), device)
        result[name] = {"prompt_tokens": lens, "prompts": B, "generations": G, "new_tokens": L,
                        "rollout_s": t_roll, "update_s": t_upd, "step_s": t_roll + t_upd,
                        "peak_memory_GB": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
                        "projected_2000_steps_h": 2000 * (t_roll + t_upd) / 3600}
        s = result[name]
        print(f"{name} ({B}x{G} rollouts, prompts of {lens} tokens, every completion at the {L}-token cap): rollouts "
              f"{s['rollout_s']:.1f} s + update {s['update_s']:.1f} s, peak {s['peak_memory_GB'] or 0:.1f} GB; "
              f"2,000 such steps: {s['projected_2000_steps_h']:.1f} h (an upper bound)")
    print(f"prefill {B}x{P}: {result['prefill_s'][f'{B}x{P}']:.3f} s")
    if big:
        save("gpu", result)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["grader", "cpu", "update", "rollout", "sampler", "gpu"])
    ap.add_argument("--math-verify", action="store_true", help="grader: compare with math-verify if installed")
    ap.add_argument("--new-tokens", type=int, default=64, help="cpu/update: tokens per rollout")
    ap.add_argument("--steps", type=int, default=6, help="cpu/update: steps (the first is not timed; median of rest)")
    ap.add_argument("--drafts", action="store_true", help="cpu: prompts carry a draft (another problem's solution)")
    ap.add_argument("--hidden", type=int, default=256, help="cpu/update: model width (64 x 2 layers = --model tiny)")
    ap.add_argument("--layers", type=int, default=4, help="cpu/update: model depth")
    ap.add_argument("--prompt-tokens", type=int, default=400, help="update: prompt length")
    ap.add_argument("--shape", default="mathstral", choices=["mathstral", "tiny"], help="gpu: model shape")
    args = ap.parse_args()
    sections = {"grader": bench_grader, "cpu": bench_cpu, "update": bench_update, "rollout": bench_rollout,
                "sampler": bench_sampler, "gpu": bench_gpu}
    sections[args.section](args)


if __name__ == "__main__":
    main()
