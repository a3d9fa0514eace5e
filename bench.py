"""Benchmarks. Every performance or agreement figure in README.md comes from one of these commands;
each faster path is measured beside the slower one it replaced, kept here as the baseline, with a
check that both compute the same thing.

  python bench.py grader               # reward.py: agreement on tests/data/grader_cases.jsonl
                                       #   + worst-case timings
  python bench.py grader --math-verify # also where math-verify (optional, never imported by the
                                       #   core) disagrees
  python bench.py extraction           # the rewards on 1,500 MATH solutions, unboxed + one line
  python bench.py cpu [--drafts]       # CPU: our GRPO step vs TRL's GRPOTrainer (if installed),
                                       #   our generate vs HF
  python bench.py update               # CPU: the prompt-once update vs whole rows
                                       #   (full_sequence_update), with a gradient check
  python bench.py memory               # CPU: peak RSS of the update's worst micro-batch
  python bench.py ops                  # CPU: aten ops per decode step, per layer, at 32 layers
  python bench.py rollout --steps 3    # CPU: the decode engine vs the previous one
                                       #   (dynamic_generate); each prompt held once vs copied
  python bench.py stops                # evaluate's stop strings at a look: few tokens vs all
  python bench.py sampler              # keyed exponential race vs torch.multinomial
  python bench.py merge                # bf16: how much of a LoRA update a merged base keeps
  python bench.py gap                  # the sampler-trainer log-prob gap, fp32 and bf16
  python bench.py gpu --quick          # GPU, <= 5 minutes: the first-GPU checks (bench_gpu)
  python bench.py gpu                  # GPU: Mathstral-7B-shaped random model: decode tok/s vs HF
                                       #   and roofline, prefill, training steps, peak memory
Each section prints a table and writes its JSON, <section>-<device>[-tags].json, to
bench/latest/ (not committed; --out DIR: to DIR). --record writes bench/results/, the README's
figures: run at the README's settings, so that a run at others never overwrites them.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "bench", "results")   # the README's figures, committed: --record
LATEST = os.path.join(HERE, "bench", "latest")     # any other run's (not committed)


def save(section, result, folder=None):
    """<folder>/<section>-<device>[-tags].json (bench/latest/ by default), written whole, then
    renamed into place."""
    folder = folder or LATEST
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


# ----------------------------------------------------------------------------- grader
def bench_grader(args):
    from reward import is_equiv, reward
    cases_path = os.path.join(HERE, "tests", "data", "grader_cases.jsonl")
    cases = [json.loads(line) for line in open(cases_path, encoding="utf-8")]
    agree, times, disagreements = 0, [], []
    for c in cases:
        t = time.perf_counter()
        if c["kind"] == "answer":
            ok = is_equiv(c["pred"], c["gold"]) == c["equal"]
        else:
            got = (reward(c["completion"], c["gold"], strict=True),
                   reward(c["completion"], c["gold"]))
            ok = got == (c["strict"], c["lenient"])
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
    result = {"cases": len(cases), "agreement": agree / len(cases),
              "mean_ms": 1e3 * statistics.mean(times), "max_ms": 1e3 * max(times),
              "adversarial_mean_ms": 1e3 * statistics.mean(adv),
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
                    verdict = "accepts" if mv else "rejects"
                    print(f"  math-verify {verdict} {c['pred']!r} for {c['gold']!r}")
            result["math_verify_agreement_on_answer_pairs"] = mv_agree / len(answers)
    print(f"grader: {agree}/{len(cases)} agree ({100 * result['agreement']:.2f}%), "
          f"mean {result['mean_ms']:.3f} ms, max {result['max_ms']:.2f} ms; "
          f"adversarial inputs: mean {result['adversarial_mean_ms']:.2f} ms, "
          f"max {result['adversarial_max_ms']:.1f} ms")
    for c in disagreements[:20]:
        print("  disagrees:", c)
    save("grader", result, args.out)


def unboxed(text):
    """text with each \\boxed{X} replaced by X."""
    while (i := text.find("\\boxed{")) >= 0:
        depth = 0
        for j in range(i + 6, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        text = text[:i] + text[i + 7:j] + text[j + 1:]
    return text


def bench_extraction(args):
    """What each extraction finds: every 8th solution of data/math_train.jsonl (1,500), its boxes
    taken out (their content kept) and one line appended; reward 1 counted. Last, the solutions
    whole, cut inside a new box (`\\boxed{` unclosed): the strict reward."""
    from drafts import load_jsonl
    from reward import reward
    rows = load_jsonl(os.path.join(HERE, "data", "math_train.jsonl"))[::8]
    endings = {"nothing": "", "Answer = X": "\nAnswer = {}", "x = X": "\nx = {}",
               "The answer is X.": "\nThe answer is {}."}
    result = {"problems": len(rows), "device": "cpu-" + platform.machine()}
    for label, line in endings.items():
        result[label] = int(sum(reward(unboxed(r["solution"]) + line.format(r["answer"]),
                                       r["answer"]) for r in rows))
    result["cut inside a box (strict)"] = int(sum(
        reward(r["solution"] + "\nSo \\boxed{", r["answer"], strict=True) for r in rows))
    for label, count in result.items():
        print(f"{label:28s} {count}")
    save("extraction", result, args.out)


# ------------------------------------------------------------ CPU: training step and generation
def small_model(tokenizer, hidden=256, layers=4):
    """A random Mistral (Mathstral's layout). hidden 64 x 2 layers is `--model tiny`; 256 x 4 is big
    enough that the model's arithmetic, not Python, dominates a CPU step."""
    from extras.tiny import model as tiny_model
    return tiny_model(len(tokenizer), seed=0, hidden=hidden, layers=layers,
                      heads=4 if hidden < 128 else 8, kv_heads=2)


def bench_cpu(args):
    import torch

    import grpo
    from drafts import build_prompt, load_jsonl
    from extras.tiny import tokenizer as tiny_tokenizer
    from generation import generate
    from lora import apply_lora, merged
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tok = tiny_tokenizer()
    B, G, L, steps = 4, 8, args.new_tokens, args.steps
    rows = [r for r in load_jsonl(os.path.join(HERE, "data", "math_train.jsonl"))
            if r.get("level") in (3, 4, 5) and r["answer"]][:B * steps]
    # --drafts: another problem's solution as the draft, as mismatched prompts show
    for i, r in enumerate(rows):
        r["draft"] = rows[(i + 1) % len(rows)]["solution"] if args.drafts else None
    result = {"device": "cpu-" + platform.machine(), "threads": torch.get_num_threads(),
              "B": B, "G": G, "hidden": args.hidden, "layers": args.layers,
              "max_new_tokens": L, "steps_timed": steps - 1, "drafts": args.drafts,
              "model": f"random Mistral, hidden {args.hidden}, {args.layers} layers"}

    # generation: ours vs HF generate, same model, 4 prompts x 8 samples, L tokens each (a random
    # model rarely stops)
    model = small_model(tok, args.hidden, args.layers).eval()
    ids = [tok(build_prompt(r["problem"], r["draft"]))["input_ids"] for r in rows[:B]]
    prompt_lengths = [len(tok(build_prompt(r["problem"], r["draft"]))["input_ids"]) for r in rows]
    result["mean_prompt_tokens"] = statistics.mean(prompt_lengths)
    t = time.perf_counter()
    ours = generate(model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1,
                    pad_token_id=tok.pad_token_id)
    result["ours_generate_s"] = time.perf_counter() - t
    tokens = sum(len(c) for group in ours for c in group)
    tok.padding_side = "left"
    enc = tok([build_prompt(r["problem"], r["draft"]) for r in rows[:B]], return_tensors="pt",
              padding=True)
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=L,
                       min_new_tokens=L, num_return_sequences=G, pad_token_id=tok.pad_token_id)
    result["hf_generate_s"] = time.perf_counter() - t
    result["generate_speedup_vs_hf"] = result["hf_generate_s"] / result["ours_generate_s"]
    result["ours_generate_tok_s"] = tokens / result["ours_generate_s"]
    lora_model = apply_lora(small_model(tok, args.hidden, args.layers)).eval()
    t = time.perf_counter()
    generate(lora_model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1,
             pad_token_id=tok.pad_token_id)
    result["lora_unmerged_generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with merged(lora_model):
        generate(lora_model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1,
                 pad_token_id=tok.pad_token_id)
    result["lora_merged_generate_s"] = time.perf_counter() - t

    # one GRPO step (rollouts + rewards + update), ours vs TRL's GRPOTrainer with the same settings.
    # Two rewards: the real grader (a random model scores 0: every group is skipped, as early in
    # training on hard problems) and a deterministic coin flip per completion (every group has
    # variance: the full update runs in both trainers)
    import shutil
    import zlib
    coin = lambda text, gold: float(zlib.crc32(text.encode()) % 2)
    for label, reward_fn in (("grader", None), ("coin", coin)):
        out = os.path.join("/tmp", "bench_cpu_ours")
        shutil.rmtree(out, ignore_errors=True)
        targs = grpo.parse_args(["--model", "small", "--variant", "no-draft", "--output-dir", out,
                                 "--max-steps", str(steps), "--prompts-per-step", str(B),
                                 "--num-generations", str(G), "--max-new-tokens", str(L),
                                 "--save-every", "100000", "--exclude", ""])
        torch.manual_seed(0)
        grpo.train(targs, rows, apply_lora(small_model(tok, args.hidden, args.layers)), tok,
                   reward_fn=reward_fn)
        metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        times = [m["step_time"] for m in metrics][1:]
        result[f"ours_step_s_{label}"] = statistics.median(times)
        try:
            theirs = trl_step(rows, tok, B, G, L, steps, reward_fn, args.hidden, args.layers)
            result.update({f"{k}_{label}": v for k, v in theirs.items()})
            speedup = result[f"trl_step_s_{label}"] / result[f"ours_step_s_{label}"]
            result[f"step_speedup_vs_trl_{label}"] = speedup
        except ImportError as e:
            print(f"TRL not installed ({e}); pip install trl to compare")
    print(f"CPU ({result['threads']} threads), {B} prompts "
          f"({result['mean_prompt_tokens']:.0f} tokens on average) x {G} "
          f"rollouts x {L} tokens, {result['model']}")
    print(f"  generate: ours {result['ours_generate_s']:.2f} s, "
          f"HF generate {result['hf_generate_s']:.2f} s "
          f"-> {result['generate_speedup_vs_hf']:.2f}x; "
          f"LoRA unmerged {result['lora_unmerged_generate_s']:.2f} s, "
          f"merged {result['lora_merged_generate_s']:.2f} s")
    for label in ("grader", "coin"):
        line = f"  GRPO step, {label} reward: ours {result[f'ours_step_s_{label}']:.2f} s"
        if f"trl_step_s_{label}" in result:
            line += (f", TRL {result[f'trl_version_{label}']} GRPOTrainer "
                     f"{result[f'trl_step_s_{label}']:.2f} s "
                     f"-> {result[f'step_speedup_vs_trl_{label}']:.2f}x")
        print(line)
    save("cpu", result, args.out)


def full_sequence_update(model, prompt_ids, completions, advantages, args, pad_token_id):
    """The update before the prompt-once change, as the baseline: every (prompt + completion) row
    runs forward and backward whole, micro-batched by padded length, through the same chunked LM
    head and loss."""
    import torch

    import grpo
    B, G = advantages.shape
    rows = [(b, g) for b in range(B) for g in range(G)]
    lengths = [len(prompt_ids[b]) + len(completions[b][g]) for b, g in rows]
    for mb in grpo.micro_batches(lengths, args.micro_batch_tokens):
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
    """The update alone: grpo.policy_update (each prompt forward once) vs full_sequence_update (each
    prompt once per rollout), same model, rollouts and checkpointing; also checks that their
    gradients agree."""
    import torch

    import grpo
    from extras.tiny import tokenizer as tiny_tokenizer
    from lora import apply_lora
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
    completions = [[torch.randint(4, 2000, (L,)).tolist() for _ in range(G)] for _ in range(B)]
    rewards = torch.tensor([[float(g % 2) for g in range(G)] for _ in range(B)])
    advantages = grpo.group_advantages(rewards)
    targs = grpo.parse_args(["--max-new-tokens", str(L)])
    result = {"device": "cpu-" + platform.machine(), "threads": torch.get_num_threads(),
              "hidden": args.hidden, "layers": args.layers, "B": B, "G": G, "prompt_tokens": P,
              "completion_tokens": L}
    grads = {}
    updates = {
        "prompt_once": lambda: grpo.policy_update(model, prompts, completions, advantages, targs),
        "full_sequence": lambda: full_sequence_update(model, prompts, completions, advantages,
                                                      targs, pad_token_id=3),
    }
    for label, fn in updates.items():
        times = []
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        result[f"{label}_s"] = statistics.median(times[1:])
        grads[label] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
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
    """Peak memory of the update's worst micro-batch (a 3,072-token prompt, 2 completions of 4,096
    tokens; --micro-batch-tokens 16,384), hidden 256 x 4 layers, LoRA and activation checkpointing:
    the growth of the process's peak RSS, each way in a fresh process (peak RSS only grows):
    prompt once (its completions attend to its K/V through SDPA) and whole rows (grpo.PROMPT_ONCE
    False); both give the same gradient (tests/test_grpo.py)."""
    import subprocess
    result = {"device": "cpu-" + platform.machine(), "hidden": args.hidden, "layers": args.layers,
              "prompt_tokens": 3072, "completion_tokens": [4096, 4096]}
    for label in ("prompt_once", "whole_rows"):
        out = subprocess.run([sys.executable, __file__, "memory-child", "--hidden",
                              str(args.hidden), "--layers", str(args.layers), "--mode", label],
                             capture_output=True, text=True, check=True)
        result[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"update micro-batch, {label}: peak RSS +{result[label]['rss_growth_MB']:.0f} MB, "
              f"{result[label]['seconds']:.1f} s", flush=True)
    save("memory", result, args.out)


def memory_child(args):
    """One worst-case update micro-batch (bench_memory), in this process: JSON on stdout."""
    import resource

    import torch

    import grpo
    from extras.tiny import tokenizer as tiny_tokenizer
    from lora import apply_lora
    torch.manual_seed(0)
    model = apply_lora(small_model(tiny_tokenizer(), args.hidden, args.layers))
    grpo.enable_checkpointing(model)
    model.train()
    grpo.PROMPT_ONCE = args.mode == "prompt_once"
    targs = grpo.parse_args(["--max-new-tokens", "4096"])
    rand = lambda n: torch.randint(4, 2000, (n,)).tolist()
    advantages = torch.tensor([[1.0, -1.0]])
    grpo.policy_update(model, [rand(64)], [[rand(64), rand(64)]], advantages, targs)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    grpo.policy_update(model, [rand(3072)], [[rand(4096), rand(4096)]], advantages, targs)
    seconds = time.perf_counter() - t
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024   # KiB -> MiB
    print(json.dumps({"rss_growth_MB": growth, "seconds": seconds}))


def trl_step(rows, tok, B, G, L, steps, reward_fn=None, hidden=256, layers=4):
    """TRL's GRPOTrainer on the same model, prompts, reward and hyper-parameters (Dr. GRPO loss,
    beta 0, LoRA)."""
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

    data = Dataset.from_list([{"prompt": build_prompt(r["problem"], r["draft"]),
                               "answer": r["answer"]} for r in rows])
    config = trl.GRPOConfig(output_dir="/tmp/bench_cpu_trl", per_device_train_batch_size=B * G,
                            num_generations=G, max_completion_length=L, loss_type="dr_grpo",
                            scale_rewards="none", beta=0.0, learning_rate=5e-6,
                            lr_scheduler_type="constant", adam_beta2=0.99, weight_decay=0.01,
                            max_grad_norm=1.0, temperature=1.0, top_p=1.0, max_steps=steps,
                            use_cpu=True, bf16=False, save_strategy="no", report_to="none",
                            logging_steps=1, gradient_checkpointing=True, shuffle_dataset=False,
                            disable_tqdm=True)
    torch.manual_seed(0)
    timer = Timer()
    rewards = lambda prompts, completions, answer, **kw: [(reward_fn or reward)(c, a)
                                                          for c, a in zip(completions, answer)]
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    trainer = trl.GRPOTrainer(model=small_model(tok, hidden, layers), args=config,
                              train_dataset=data, processing_class=tok, reward_funcs=rewards,
                              peft_config=lora, callbacks=[timer])
    trainer.train()
    return {"trl_step_s": statistics.median(timer.marks[1:]), "trl_version": trl.__version__}


# ----------------------------------------------------------------------------- GPU: 7B-shaped model
MATHSTRAL_SHAPE = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, rope_theta=1e6, rms_norm_eps=1e-5,
                       max_position_embeddings=32768)  # mistralai/Mathstral-7B-v0.1's config.json


# ------------------------------------------------------------------ rollouts: the prompt held once
def left_pad(seqs, pad_token_id, device):
    """Token-id lists -> (ids, attention mask, position ids), each [N, longest], padded on the left
    so that every sequence ends in the last column; each sequence's positions start at 0, pads sit
    at 0."""
    import torch
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + list(s) for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def copied_generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0,
                    eos_token_id=None, pad_token_id=0, seed=0, batch_size=64):
    """generation.generate before the prompt-once change, as the baseline: each prompt is prefilled
    once and its K/V copied to each of its n rows, read through the model's own attention (masks and
    sliding windows included); the same keyed sampling, so the same tokens up to float rounding. No
    stop strings."""
    import torch

    from generation import mix, noise_roots, sample
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


# ---------------------------------------------------------------- rollouts: the previous engine
def online_softmax_attention(module, query, key, value, attention_mask=None, scaling=None,
                             dropout=0.0, shared_prompts=None, sliding_window=None, **kwargs):
    """Attention of n rows over their prompt's K/V, held once per prompt, and over their own tokens'
    K/V, the two parts merged exactly (online softmax); registered with transformers as
    "shared_prompts", so Mistral, Llama and Qwen2 run it unchanged. query [n, H, T, d]; key/value
    [n, Hkv, S, d]: the rows' own tokens, the last T the queries'. shared_prompts = (keys, values,
    mask, prompt, slot, G): per layer [B, Hkv, P, d]; mask [B, P] (False on left padding); row ->
    its prompt and its place among that prompt's <= G rows. The prompt part masks padding, the own
    part is causal, both the sliding window. Products in the model's dtype, softmax in fp32 (as
    eager attention). The attention of dynamic_generate, the baseline: kept as it was, the decode
    part only."""
    import torch
    keys, values, mask, prompt, slot, G = shared_prompts
    kp, vp = keys[module.layer_idx], values[module.layer_idx]  # [B, Hkv, P, d]
    (n, H, T, d), (B, Hkv, P, _), S = query.shape, kp.shape, key.shape[2]
    W = sliding_window or 2 ** 62  # a key W or more positions back is out of the window
    # GQA: head h reads K/V head h // (H // Hkv)
    q = query.reshape(n, Hkv, H // Hkv * T, d) * scaling
    qg = q.new_zeros(B, G, Hkv, H // Hkv * T, d).index_put_((prompt, slot), q)  # [B, G, Hkv, M, d]
    qg = qg.transpose(1, 2).reshape(B, Hkv, -1, d)  # all G rows' queries of a prompt in one product
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
    """dynamic_generate's attention switch: online_softmax_attention, with SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
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
    """prompt_ids: token-id lists; n: samples per prompt, or per prompt a list of sample numbers.
    Returns, per prompt, its completions (token-id lists, EOS kept) in sample order. Sample s of
    prompt p draws from noise keyed by (seed, keys[p], s) (keys default to 0, 1, ...): the same
    tokens whichever rows share its batch or process, up to float rounding of the logits. Stops at
    EOS, max_new_tokens, or (with a tokenizer) a stop string in the tail. generation.generate before
    the fixed-shape engine, as the baseline of `bench.py rollout`: a DynamicCache that concatenates
    every layer's K/V at every step, finished rows dropped every step, every token read by the
    host."""
    import torch
    from transformers import DynamicCache

    from generation import mix, noise_roots, sample
    with torch.no_grad():
        samples = [range(n)] * len(prompt_ids) if isinstance(n, int) else n
        keys = range(len(prompt_ids)) if keys is None else keys
        jobs = [(p, s) for p in range(len(prompt_ids)) for s in samples[p]]
        device, results = next(model.parameters()).device, [[] for _ in prompt_ids]
        for start in range(0, len(jobs), batch_size):  # consecutive rows; a prompt may straddle two
            owner = [p for p, _ in jobs[start:start + batch_size]]
            firsts = sorted(set(owner))  # [J]
            # Each prompt is prefilled alone: no padding, so no fully masked row for a fused kernel
            # to return NaN on; the K/V are then left-padded with zeros, which the attention masks.
            # (A plain cache keeps a windowed prompt.)
            outs = [model(input_ids=torch.tensor([prompt_ids[p]], device=device),
                          past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
                    for p in firsts]
            mask = left_pad([prompt_ids[p] for p in firsts], pad_token_id, device)[1]  # [J, P]
            P = mask.shape[1]
            caches = [o.past_key_values.layers for o in outs]  # per prompt, its layers
            lefts = [P - len(prompt_ids[p]) for p in firsts]  # per prompt, its left padding
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


@contextlib.contextmanager
def kv_bytes_held(model):
    """Within the block, record the most KV-cache bytes held entering any decode step of `model`: a
    DynamicCache's tensors (the baselines), or generate()'s RolloutCache (each prompt's K/V once and
    the rows' own), each tensor counted once. Yields the one-element list the peak is kept in."""
    import torch

    import generation
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


def median_time(fn, runs):
    """Median seconds of `runs` calls of fn() after one untimed call (warm-up: the allocator, lazy
    imports)."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# aten ops that only make a view or metadata: no kernel of their own on a GPU
VIEWS = {"aten::" + name for name in (
    "view", "reshape", "_reshape_alias", "as_strided", "transpose", "t", "expand", "slice",
    "select", "unsqueeze", "squeeze", "permute", "_unsafe_view", "alias", "detach", "unflatten",
    "flatten", "split", "chunk", "narrow", "unbind", "view_as", "expand_as", "contiguous",
    "lift_fresh", "result_type", "empty", "empty_strided", "resolve_conj", "resolve_neg")}


def ops_per_step(fn, steps=16, kernels=False):
    """aten ops of one decode step, nested calls counted: the profiler's difference between fn(1 +
    steps) and fn(1) (the prefill and set-up cancel), over steps. kernels: the innermost ops alone,
    views and metadata left out: an estimate of the kernels a GPU runs for the step (eagerly, one
    launch each; from a CUDA graph, one replay)."""
    from torch.profiler import ProfilerActivity, profile
    counts = []
    for n in (1, 1 + steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(n)
        counted = [e for e in prof.events() if e.name.startswith("aten::") and (
            not kernels or not e.cpu_children and e.name not in VIEWS)]
        counts.append(len(counted))
    return (counts[1] - counts[0]) / steps


def bench_ops(args):
    """Host work per decode step at Mathstral's depth, by extrapolation: aten ops per step (nested
    calls counted, ops_per_step) of generate() and of the previous engine (dynamic_generate) at
    half and all of --layers, the ops each layer adds, and the count at 32 layers. On a GPU each
    top-level op is a kernel launch of a few microseconds when run eagerly; a CUDA graph replays
    the whole step at once."""
    import torch

    from extras.tiny import tokenizer as tiny_tokenizer
    from generation import generate
    torch.manual_seed(0)
    prompts = [torch.randint(4, 2000, (512,)).tolist() for _ in range(4)]
    kw = dict(n=16, eos_token_id=-1, pad_token_id=3, seed=1)
    depths = (args.layers // 2, args.layers)
    models = [small_model(tiny_tokenizer(), args.hidden, n).eval() for n in depths]
    result = {"device": "cpu-" + platform.machine(), "hidden": args.hidden, "layers": depths}
    for label, gen in (("ours", generate), ("before", dynamic_generate)):
        for kind in ("ops", "kernels"):
            ops = [ops_per_step(lambda n: gen(m, prompts, max_new_tokens=n, **kw),
                                kernels=kind == "kernels") for m in models]
            per_layer = (ops[1] - ops[0]) / (depths[1] - depths[0])
            result[f"{label}_{kind}"] = {"per_step": ops, "per_layer": per_layer,
                                         "at_32_layers": ops[1] + per_layer * (32 - depths[1])}
            print(f"{label}: {kind} per decode step {ops[0]:.0f} at {depths[0]} layers, "
                  f"{ops[1]:.0f} at {depths[1]}: {per_layer:.0f} per layer, "
                  f"{result[f'{label}_{kind}']['at_32_layers']:.0f} at 32 layers", flush=True)
    save("ops", result, args.out)


def bench_rollout(args):
    """generate() (fixed shapes, preallocated K/V, a look from the host every CHECK_EVERY steps)
    against the engines before it, on the CPU. 1. The decode engine vs dynamic_generate (the
    previous generate: a DynamicCache that concatenates every step, rows dropped every step, every
    token read by the host), 4 prompts of 512 tokens x 16 rows, no EOS: time at 64 and 1,024 new
    tokens, the late/early per-step ratio, aten ops per step, greedy rows identical. 2. Finished
    rows leaving the batch (compaction) or staying, masked, with rows ending at EOS. 3. Each
    prompt's K/V held once vs copied to its rows (copied_generate), after 100-2,000-token
    prompts."""
    import torch

    import generation
    from extras.tiny import tokenizer as tiny_tokenizer
    from generation import generate
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = small_model(tiny_tokenizer(), args.hidden, args.layers).eval()
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    kv_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4  # fp32
    B, G, P = 4, 16, 512
    result = {"device": "cpu-" + platform.machine(), "threads": torch.get_num_threads(),
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
          f"64 tokens {engine['ours_s_64']:.2f} s vs {engine['before_s_64']:.2f} s before "
          f"({engine['speedup_64']:.2f}x); "
          f"1,024 tokens {engine['ours_s_1024']:.2f} s vs {engine['before_s_1024']:.2f} s "
          f"({engine['speedup_1024']:.2f}x); "
          f"late/early per-step time {engine['ours_late_early']:.2f} vs "
          f"{engine['before_late_early']:.2f}; "
          f"aten ops per step {engine['ours_ops_per_step']:.0f} vs "
          f"{engine['before_ops_per_step']:.0f} ({engine['ops_ratio']:.2f}); "
          f"greedy rows identical {100 * engine['greedy_rows_identical']:.1f} %")

    # 2. rows ending at EOS (an LM-head bias makes it ~1 in 300 a step): compaction at half the
    # rows vs never
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


def old_stop_look(tokenizer, stop_strings, row, first):
    """The look before stop_finder, as the baseline: every new token's window of 12 decoded."""
    return next((u + 1 for u in range(first, len(row))
                 if any(s in tokenizer.decode(row[max(0, u - 11):u + 1]) for s in stop_strings)),
                None)


def bench_stops(args):
    """Stop strings at the host's looks (evaluate.py's "\\n\\nProblem:", "\\nProblem:"): host
    time a look over 64 rows of 16 new tokens each, along 4,096-token rows of MATH solutions (the
    tiny BPE tokenizer), with evaluate.stop_finder (only tokens that hold a stop string's last
    character are decoded) against decoding every new token's window (old_stop_look); both must
    end every row at the same token."""
    from evaluate import STOP_STRINGS, stop_finder
    from extras.tiny import tokenizer as tiny_tokenizer
    tok = tiny_tokenizer()
    text = " ".join(r["solution"] for r in __import__("drafts").load_jsonl(
        os.path.join(HERE, "data", "math_train.jsonl"), required=("id", "problem", "answer")))
    ids = tok(text[:2_000_000], add_special_tokens=False)["input_ids"]
    rows = [ids[i * 4096:(i + 1) * 4096] for i in range(64)]
    finder = stop_finder(tok, STOP_STRINGS)
    result = {"device": "cpu-" + platform.machine(), "rows": 64, "tokens": 4096}
    for label, look in (("stop_finder", lambda row, first: finder(0, row, first)),
                        ("every_window", lambda row, first: old_stop_look(tok, STOP_STRINGS, row,
                                                                          first))):
        t, ends = time.perf_counter(), []
        for first in range(0, 4096, 16):            # 256 looks, each at the 16 new tokens
            lo = max(0, first - 11)
            ends.append([look(row[lo:first + 16], first - lo) for row in rows])
        result[f"{label}_ms_per_look"] = 1e3 * (time.perf_counter() - t) / 256
        result[f"{label}_ends"] = ends
    result["same_ends"] = result.pop("stop_finder_ends") == result.pop("every_window_ends")
    result["speedup"] = result["every_window_ms_per_look"] / result["stop_finder_ms_per_look"]
    print(f"stop strings, a look at 64 rows x 16 new tokens: stop_finder "
          f"{result['stop_finder_ms_per_look']:.2f} ms, every window decoded "
          f"{result['every_window_ms_per_look']:.2f} ms ({result['speedup']:.0f}x); the same ends: "
          f"{result['same_ends']}")
    save("stops", result, args.out)


def multinomial_next(logits, temperature, top_p, generator):
    """The sampler before keyed noise, as the baseline: nucleus filtering, then torch.multinomial on
    one generator shared by the batch (so a row's tokens depended on its batch and process)."""
    import torch
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def bench_sampler(args, device="cpu", vocab=32768, rows=64, steps=200):
    """What keying every sample costs: generation.sample (hashed noise per row and step) vs
    multinomial_next, per decode step of 64 rows at Mathstral's vocabulary (top_p 1, as in
    training), and that both draw the same distribution: every row shares one set of logits, and the
    rows x steps draws' frequencies of the 20 likeliest tokens are compared with their
    probabilities."""
    import torch

    from generation import mix, noise_roots, sample
    torch.manual_seed(0)
    logits = (torch.randn(1, vocab, device=device) * 3).expand(rows, -1)  # [R, V], rows alike
    keys = noise_roots(0, [(0, r) for r in range(rows)], device)
    gen = torch.Generator(device=device).manual_seed(0)
    probs = torch.softmax(logits[0].float(), -1)
    top = probs.topk(20).indices
    out = {"rows": rows, "vocab": vocab, "steps": steps, "top_p": 1.0, "device": device,
           "top_token_prob": probs.max().item()}
    for label, fn in (("keyed", lambda t: sample(logits, mix(keys ^ t), 1.0, 1.0)[0]),
                      ("multinomial", lambda t: multinomial_next(logits, 1.0, 1.0, gen))):
        fn(0)
        seconds, draws = timed(lambda: [fn(t) for t in range(steps)], device)
        counts = torch.bincount(torch.stack(draws).flatten(), minlength=vocab)
        freq = counts.float() / (rows * steps)
        out[f"{label}_ms_per_step"] = 1e3 * seconds / steps
        out[f"{label}_max_gap_top20"] = (freq[top] - probs[top]).abs().max().item()
    out["keyed_vs_multinomial"] = out["keyed_ms_per_step"] / out["multinomial_ms_per_step"]
    print(f"sampling {rows} rows x {vocab} tokens on {device}: "
          f"keyed {out['keyed_ms_per_step']:.3f} ms per step, "
          f"multinomial {out['multinomial_ms_per_step']:.3f} ms "
          f"({out['keyed_vs_multinomial']:.2f}x); "
          f"over {rows * steps} draws the 20 likeliest tokens' frequencies are within "
          f"{out['keyed_max_gap_top20']:.4f} (keyed) and "
          f"{out['multinomial_max_gap_top20']:.4f} (multinomial) of their probabilities "
          f"(the likeliest: p = {out['top_token_prob']:.3f})")
    if args.section == "sampler":  # inside `bench.py gpu` it goes into gpu's JSON
        save("sampler", {**out, "device": "cpu-" + platform.machine()}, args.out)
    return out


def bench_merge(args):
    """What bf16 does to a LoRA adapter's effect on a layer's output, early in training: merged into
    the bf16 weights (our rollouts), applied unmerged and added to the bf16 output (vLLM's LoRA
    kernels: the author's rollouts), or added in fp32. A 4096 x 4096 layer, W ~ N(0, 0.02) in bf16,
    A at PEFT's init, B after k steps of lr = 5e-6 per element with one sign kept (consistent) or
    drawn afresh each step (random walk); the share of the adapter's exact effect that survives is
    the realised change projected on it. Early in a bf16 run both pipelines sample from nearly the
    base model."""
    import torch
    n, r, alpha, lr = 4096, 16, 32, 5e-6
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(n, n, generator=g) * 0.02).bfloat16()
    # PEFT's init: kaiming_uniform(a=sqrt(5))
    a = (torch.rand(r, n, generator=g) * 2 - 1) / n ** 0.5
    x = torch.randn(n, 64, generator=g).bfloat16().float()
    y0 = (w.float() @ x).bfloat16().float()
    result = {"device": "cpu-" + platform.machine(), "shape": [n, n], "r": r, "alpha": alpha,
              "lr": lr, "runs": []}
    # a fresh +-1 per element of B
    sign = lambda: torch.randint(0, 2, (n, r), generator=g).float() * 2 - 1
    for k in (10, 100, 1000):
        for signs in ("consistent", "random-walk"):
            b = lr * (k * sign() if signs == "consistent" else sum(sign() for _ in range(k)))
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
    """The sampler-trainer gap: rollouts drawn with the LoRA merged into the base weights (the
    engine's), log-probs recomputed by the update with the LoRA unmerged (its branch in fp32), on
    the tiny shapes in fp32 and in bf16, for an adapter as after k steps of lr 5e-6 (B = 5e-6 * k
    with one sign kept per element; A at PEFT's init). Per token of 4 prompts x 8 rollouts x 32
    tokens: |log pi - log pi_sampler| mean and max, the ratio pi / pi_sampler min / mean / max, and
    the share of tokens a cap of 2 (--importance-sampling-cap 2) would truncate."""
    import torch

    import grpo
    from extras.tiny import tokenizer as tiny_tokenizer
    from generation import generate
    from lora import apply_lora, lora_modules, merged
    tok = tiny_tokenizer()
    targs = grpo.parse_args(["--max-new-tokens", "32"])
    result = {"device": "cpu-" + platform.machine(), "runs": []}
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
                advantages = torch.ones(4, 8).index_fill_(1, torch.tensor([0]), -7.0)  # all run
                gaps = grpo.policy_update(model.train(), prompts, completions, advantages, targs,
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


TINY_SHAPE = dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
                  rms_norm_eps=1e-5, max_position_embeddings=32768)


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
    """Device-to-device copy of random bytes, GB/s counting bytes read plus written (the roofline's
    ceiling)."""
    import torch
    x = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    t, _ = timed(lambda: [y.copy_(x) for _ in range(10)], device)
    return 2 * nbytes * 10 / t / 1e9


def memory(device):
    """Peak GB allocated and reserved since the last reset (CUDA), then a reset; {} on the CPU."""
    import torch
    if device != "cuda":
        return {}
    peak = {"peak_allocated_GB": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_GB": torch.cuda.max_memory_reserved() / 1e9}
    torch.cuda.reset_peak_memory_stats()
    return peak


def decode_only(model, prompts, rows, new_tokens, steps, graphs, device, first=32):
    """generate() with full-size buffers for `new_tokens`, stopped after `steps` decode steps:
    seconds per step over steps first..steps (the first ones warm up; with graphs, the widths up to
    there are captured). graphs: an extras.graphs.Graphs already checked, or None (eager)."""
    import extras.graphs
    import generation
    count, marks = [0], {}

    class Enough(Exception):
        pass

    def tick():
        count[0] += 1
        if count[0] in (first, steps):
            timed(lambda: None, device)
            marks[count[0]] = time.perf_counter()
        if count[0] == steps:
            raise Enough
    step, replay = generation.decode_one_token, extras.graphs.Graphs.replay
    if graphs:
        extras.graphs.Graphs.replay = lambda self, *a: (replay(self, *a), tick())[0]
    else:
        generation.decode_one_token = lambda *a, **k: (step(*a, **k), tick())[0]
    try:
        generation.generate(model, prompts, n=rows // len(prompts), max_new_tokens=new_tokens,
                            temperature=1.0, eos_token_id=-1, pad_token_id=0, batch_size=rows,
                            graphs=graphs)
    except Enough:
        pass
    finally:
        generation.decode_one_token, extras.graphs.Graphs.replay = step, replay
    return (marks[steps] - marks[first]) / (steps - first)


def graphs_for(device):
    """A checked extras.graphs.Graphs on CUDA; on the CPU (the dry run) None."""
    import extras.graphs
    return extras.graphs.Graphs() if device == "cuda" else None


def compactions(fn):
    """fn()'s result and how many times rows left the batch during it."""
    import generation
    calls, compact = [], generation.compact
    generation.compact = lambda *a: calls.append(compact(*a)) or calls[-1]
    try:
        return fn(), sum(c is not None for c in calls)
    finally:
        generation.compact = compact


def gpu_graphs_vs_eager(model, rand, device, rows=16, steps=320, prompt_tokens=(200, 900)):
    """Greedy decoding from CUDA graphs against eager: 2 prompts x 8 rows for `steps` tokens
    (widths 128, 256, 384: two width changes), with an EOS some rows sample mid-way (rows leave
    the batch: compaction); identical tokens, and the largest difference of the last logits."""

    import generation
    prompts = [rand(n) for n in prompt_tokens]
    kw = dict(n=rows // 2, max_new_tokens=steps, temperature=0.0, pad_token_id=0)
    free = generation.generate(model, prompts, eos_token_id=-1, **kw)
    flat = [row for group in free for row in group]
    skip = steps // 8
    spread = lambda t: len({row.index(t) // 16 for row in flat if t in row[skip:]})
    eos = max({t for row in flat for t in row[skip:]}, key=spread)  # ends rows at many looks
    logits, out = {}, {}
    step = generation.decode_one_token

    def keep_logits(label):
        def wrapped(model_, cache, rows_, *a, **k):
            step(model_, cache, rows_, *a, **k)
            logits[label] = rows_.logits
        return wrapped
    for label, graphs in (("eager", None), ("graphs", graphs_for(device))):
        generation.decode_one_token = keep_logits(label)
        try:
            out[label], compacted = compactions(lambda: generation.generate(
                model, prompts, eos_token_id=eos, graphs=graphs, **kw))
        finally:
            generation.decode_one_token = step
    if "graphs" not in logits:
        logits["graphs"] = logits["eager"]
    same = sum(a == b for a, b in zip(sum(out["eager"], []), sum(out["graphs"], [])))
    lengths = [len(row) for group in out["eager"] for row in group]
    return {"rows": rows, "steps": steps, "eos": eos, "compactions": compacted,
            "lengths": [min(lengths), max(lengths)], "rows_identical": same,
            "max_logit_difference": (logits["eager"].float() - logits["graphs"].float())
            .abs().max().item() if logits["eager"].shape == logits["graphs"].shape else None,
            "captured_on_cuda": device == "cuda"}


def gpu_lora_change(model, rand, device):
    """A LoRA change between two rollouts reaches replayed graphs: merge, decode (graphs captured),
    unmerge, change B, merge, decode again (replayed): the second decode equals eager decoding of
    the changed adapter and differs from the first."""
    import torch

    import generation
    from lora import lora_modules, merged
    prompts, graphs = [rand(300)], graphs_for(device)
    kw = dict(n=8, max_new_tokens=64, temperature=0.0, eos_token_id=-1, pad_token_id=0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.normal_(0, 0.02)
    with merged(model):
        first = generation.generate(model, prompts, graphs=graphs, **kw)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.mul_(-1)
    with merged(model):
        second = generation.generate(model, prompts, graphs=graphs, **kw)
        eager = generation.generate(model, prompts, **kw)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.zero_()
    return {"second_equals_eager": second == eager, "changed": first != second,
            "graphs": len(graphs.captured) if graphs else 0}


def bench_gpu(args):
    """Mathstral-7B's exact shape with random weights (no download), section by section;
    bench/results/gpu-<device>.json (or --out) is rewritten after each, so a run cut short keeps
    what it measured, and a section that fails records its error while the next ones run.
    --quick (<= 5 minutes on an H100/H200):
      1. left padding: prompts of 5, 37 and 90 tokens sampled together equal each sampled alone on
         this device's kernels, and how many positions of a left-padded batch the fused kernels
         return as NaN (what generate avoids);
      2. copy bandwidth (the HBM roofline's ceiling);
      3. 256 decode steps of 64 rows after 4 x 3,072-token prompts (the paper's worst case,
         full-size buffers for 4,096 new tokens), eager and from CUDA graphs: ms per step, tokens/s
         against the roofline at that context, peak memory, a whole rollout extrapolated; HF
         generate on the same batch for 32 steps;
      4. CUDA graphs against eager decoding: identical greedy tokens over 320 steps of 16 rows
         (two width changes, an EOS that makes rows leave the batch), the largest logit difference;
      5. a LoRA change between two rollouts seen by replayed graphs;
      6. one update micro-batch at the worst case (a 3,072-token prompt, 2 x 4,096 completion
         tokens): seconds, peak memory, and the 2,000-step wall-clock (an upper bound: every
         completion at the cap);
      7. NCCL with the process group's timeout.
    Without --quick, then: decode at batch 16/64/128 against the copying path and HF generate, the
    sampler, and two whole training steps. --shape tiny runs it all on a CPU in seconds (a dry run:
    CUDA graphs, NCCL and peak memory need a GPU)."""
    # before CUDA starts
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch
    import torch.distributed as dist
    from transformers import MistralConfig, MistralForCausalLM

    import extras.graphs
    import grpo
    import processes
    from generation import generate
    from lora import apply_lora
    device = "cuda" if torch.cuda.is_available() else "cpu"
    big = args.shape == "mathstral"
    config = MistralConfig(**(MATHSTRAL_SHAPE if big else TINY_SHAPE), sliding_window=None,
                           tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.device(device):
        model = MistralForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    dtype_bytes = 2 if device == "cuda" else 4
    weight_bytes = sum(p.numel() for p in model.parameters()) * dtype_bytes
    kv_token = (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
                * dtype_bytes)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-" + platform.machine()
    result = {"device": name, "shape": args.shape, "quick": args.quick, "torch": torch.__version__,
              "params": sum(p.numel() for p in model.parameters()), "kv_bytes_per_token": kv_token,
              "alloc_conf": os.environ["PYTORCH_CUDA_ALLOC_CONF"]}
    folder = args.out or (None if big else "/tmp/bench-gpu-tiny")

    def section(key, run, line):
        """result[key] = run(), then print line(value) and save; a failure is recorded instead."""
        try:
            value = run()
            text = line(value)
        except Exception as e:  # recorded in the JSON; the next section still runs
            value = {"error": f"{type(e).__name__}: {e}"[:2000], **memory(device)}
            text = f"{key} failed: {value['error'][:300]}"
        result[key] = value
        print(text, flush=True)
        save("gpu", result, folder)
        return value
    rng = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(0, config.vocab_size, (n,), generator=rng).tolist()
    memory(device)

    # 1. left padding on this device's kernels
    def left_padding():
        ids = [rand(n) for n in (5, 37, 90)]
        kw = dict(n=4, max_new_tokens=16, temperature=1.0, eos_token_id=-1, pad_token_id=0, seed=1)
        alone = [generate(model, [x], prompt_numbers=[i], **kw)[0] for i, x in enumerate(ids)]
        together = generate(model, ids, **kw)
        padded, mask, positions = left_pad(ids, 0, device)
        with torch.no_grad():
            hidden = model.model(input_ids=padded, attention_mask=mask,
                                 position_ids=positions).last_hidden_state
        nan = torch.isnan(hidden).any(-1)
        return {"rows_identical": sum(a == b for a, b in zip(sum(alone, []), sum(together, []))),
                "rows": 12, "padded_batch_nan_positions": int(nan.sum()),
                "padded_batch_nan_in_real_tokens": int((nan & mask.bool()).sum())}
    section("left_padding", left_padding, lambda v: (
        f"1. left padding: {v['rows_identical']} of 12 rows sampled together equal each prompt "
        f"alone; a left-padded batch through this device's fused kernels: "
        f"{v['padded_batch_nan_positions']} positions NaN "
        f"({v['padded_batch_nan_in_real_tokens']} of them real tokens)"))

    # 2. copy bandwidth
    bandwidth = section("copy_bandwidth_GBps",
                        lambda: copy_bandwidth(2 ** 30 if big else 2 ** 22, device),
                        lambda v: f"2. copy bandwidth {v:.0f} GB/s (read + write)")
    bandwidth = bandwidth if isinstance(bandwidth, float) else float("nan")

    # 3. decode at the paper's worst case: 64 rows after 4 x 3,072-token prompts, buffers for
    # 4,096 new tokens
    B, G, P, L, steps = (4, 16, 3072, 4096, 256) if big else (4, 4, 64, 128, 48)
    prompts = [rand(P) for _ in range(B)]
    # HBM bytes a step reads at context t
    read = lambda t: weight_bytes + (B * P + B * G * t) * kv_token

    def decode():
        out = {"prompts": B, "rows": B * G, "prompt_tokens": P, "new_tokens": L,
               "steps_timed": f"32..{steps}"}
        for mode in ("eager", "cuda_graphs") if device == "cuda" else ("eager",):
            try:  # a failure is recorded; the other mode still runs
                graphs = extras.graphs.Graphs() if mode == "cuda_graphs" else None
                if graphs:  # its check first, on the first prompt
                    generate(model, prompts[:1], n=4, max_new_tokens=8, eos_token_id=-1,
                             graphs=graphs)
                s = decode_only(model, prompts, B * G, L, steps, graphs, device)
            except Exception as e:
                out[mode] = {"error": f"{type(e).__name__}: {e}"[:2000], **memory(device)}
                continue
            at = read((32 + steps) / 2) / (bandwidth * 1e9)  # the roofline's step at that context
            whole = s * sum(read(t) for t in range(L)) / read((32 + steps) / 2)
            out[mode] = {"ms_per_step": 1e3 * s, "tok_s": B * G / s, "roofline_tok_s": B * G / at,
                         "of_roofline": at / s, "rollout_s_extrapolated": whole,
                         "graphs": len(graphs.captured) if graphs else 0, **memory(device)}
        hf = torch.tensor([p for p in prompts for _ in range(G)], device=device)
        hf_steps = lambda n: model.generate(hf, max_new_tokens=n, min_new_tokens=n,
                                            do_sample=True, top_k=0, pad_token_id=0)
        try:
            with torch.no_grad():
                hf_steps(2)
                t1, _ = timed(lambda: hf_steps(1), device)
                tn, _ = timed(lambda: hf_steps(33), device)
            out["hf_generate"] = {"ms_per_step": 1e3 * (tn - t1) / 32, **memory(device)}
        except Exception as e:
            out["hf_generate"] = {"error": f"{type(e).__name__}: {e}"[:2000],
                                  "ms_per_step": float("nan")}
        best = min((m for m in ("eager", "cuda_graphs") if "ms_per_step" in out.get(m, {})),
                   key=lambda m: out[m]["ms_per_step"], default="eager")
        out["best"] = best
        ours = out[best].get("ms_per_step", float("nan"))
        out["vs_hf"] = out["hf_generate"]["ms_per_step"] / ours
        out["arithmetic"] = (
            "rollout_s_extrapolated = ms_per_step x sum over t < new_tokens of read(t) / "
            "read(t_measured), read(t) = weights + (prompts x prompt_tokens + rows x t) x "
            "kv_bytes_per_token, t_measured the mean context of the timed steps: the steps stay "
            "as memory-bound as measured")
        return out

    def decode_line(d):
        modes = []
        for m in ("eager", "cuda_graphs"):
            if m not in d:
                continue
            x = d[m]
            modes.append(f"{m} failed: {x['error'][:300]}" if "error" in x else (
                f"{m} {x['ms_per_step']:.1f} ms per step, {100 * x['of_roofline']:.0f} % of the "
                f"roofline, a whole rollout ~{x['rollout_s_extrapolated']:.0f} s, peak "
                f"{x.get('peak_allocated_GB', 0):.1f} GB allocated / "
                f"{x.get('peak_reserved_GB', 0):.1f} GB reserved"))
        return (f"3. decode, {B * G} rows after {B} x {P}-token prompts: {'; '.join(modes)}; "
                f"HF generate {d['hf_generate']['ms_per_step']:.1f} ms per step "
                f"({d['vs_hf']:.1f}x slower than {d['best']})")
    decoded = section("decode", decode, decode_line)

    # 4. CUDA graphs against eager decoding
    shape = {} if big else dict(rows=8, steps=40, prompt_tokens=(20, 90))   # the dry run: less
    section("graphs_vs_eager", lambda: gpu_graphs_vs_eager(model, rand, device, **shape),
            lambda v: (f"4. CUDA graphs vs eager, greedy, {v['rows']} rows x {v['steps']} steps "
                       f"(lengths {v['lengths'][0]}-{v['lengths'][1]}, {v['compactions']} "
                       f"compactions): {v['rows_identical']} of {v['rows']} rows identical, "
                       f"largest logit difference {v['max_logit_difference']}"
                       + ("" if v["captured_on_cuda"] else " (no CUDA: eager against eager)")))

    # 5. a LoRA change between two rollouts, seen by replayed graphs
    torch.manual_seed(0)
    apply_lora(model)
    section("lora_change", lambda: gpu_lora_change(model, rand, device),
            lambda v: (f"5. LoRA changed between two rollouts: the replayed graphs' tokens equal "
                       f"eager decoding's: {v['second_equals_eager']}; they changed: "
                       f"{v['changed']}"))

    # 6. one update micro-batch at the worst case, and the 2,000-step projection
    grpo.enable_checkpointing(model)
    targs = grpo.parse_args(["--max-new-tokens", str(L)])
    completions = [[rand(L), rand(L)]]  # 2 rows = --micro-batch-tokens 16,384
    advantages = torch.tensor([[1.0, -1.0]])

    def update():
        model.train()
        run = lambda: grpo.policy_update(model, [rand(P)], completions, advantages, targs)
        run()
        memory(device)
        s, _ = timed(run, device)
        best = decoded.get(decoded.get("best", "eager"), {}) if isinstance(decoded, dict) else {}
        rollout = best.get("rollout_s_extrapolated", float("nan"))
        return {"seconds": s, "prompt_tokens": P, "completion_tokens": [L, L], **memory(device),
                "training_step_s": rollout + B * G / 2 * s,
                "projected_2000_steps_h": 2000 * (rollout + B * G / 2 * s) / 3600,
                "arithmetic": "training_step_s = the whole rollout extrapolated "
                              "+ (B x G / 2) micro-batches x seconds"}
    section("update_micro_batch", update, lambda v: (
        f"6. update micro-batch ({P} + 2 x {L} tokens): {v['seconds']:.2f} s, peak "
        f"{v.get('peak_allocated_GB', 0):.1f} GB allocated / "
        f"{v.get('peak_reserved_GB', 0):.1f} GB reserved; "
        f"a training step at the cap ~{v['training_step_s']:.0f} s, 2,000 steps ~"
        f"{v['projected_2000_steps_h']:.1f} h (an upper bound)"))

    # 7. NCCL with the process group's timeout
    def nccl():
        minutes = float(os.environ.get(processes.TIMEOUT, 180))
        out = {"timeout_minutes": minutes, "variable": processes.TIMEOUT}
        if device == "cuda":
            import datetime
            dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0,
                                    world_size=1, timeout=datetime.timedelta(minutes=minutes))
            x = torch.ones(1, device=device)
            dist.all_reduce(x)
            out.update(version=".".join(map(str, torch.cuda.nccl.version())),
                       all_reduce_ok=x.item() == 1.0)
            dist.destroy_process_group()
        return out
    section("nccl", nccl, lambda v: (
        f"7. NCCL {v.get('version', '(no GPU)')}: a process group with a "
        f"{v['timeout_minutes']:.0f}-minute timeout (${v['variable']}), all_reduce "
        f"{'ok' if v.get('all_reduce_ok') else 'not run'}"))
    if args.quick:
        return result
    model.eval()
    bench_gpu_long(args, model, rand, device, result, folder, bandwidth, weight_bytes, kv_token,
                   targs, (B, G, P, L))
    return result


def bench_gpu_long(args, model, rand, device, result, folder, bandwidth, weight_bytes, kv_token,
                   targs, shape):
    """bench.py gpu without --quick, after the quick sections: decode at batch 16/64/128 after
    draft-variant prompts, the sampler, two whole training steps."""
    import torch

    import extras.graphs
    import generation
    import grpo
    from generation import generate
    from lora import merged
    B, G, P, L = shape
    config = model.config
    big = args.shape == "mathstral"
    # without --quick: decode at batch 16/64/128 after draft-variant prompts, the sampler, two
    # whole training steps
    prompt_len, new = (1536, 128) if big else (32, 16)  # a draft-variant prompt: 1,000-2,000 tokens
    result["decode_by_batch"] = {}
    model.eval()
    for batch in (16, 64, 128):  # batch/16 prompts x 16 samples, as in training
        prompts = [rand(prompt_len) for _ in range(batch // 16)]
        kw = dict(n=16, temperature=1.0, eos_token_id=-1, pad_token_id=0, batch_size=batch)
        rate = {}
        with merged(model):
            with_graphs = lambda *a, **k: generate(*a, graphs=extras.graphs.Graphs(), **k)
            for label, gen in (("ours", generate), ("graphs", with_graphs),
                               ("copied", copied_generate)):
                if label == "graphs" and device != "cuda":
                    continue
                t1, _ = timed(lambda: gen(model, prompts, max_new_tokens=1, **kw), device)
                tn, _ = timed(lambda: gen(model, prompts, max_new_tokens=new, **kw), device)
                rate[label] = batch * (new - 1) / (tn - t1)
            ids = torch.tensor([p for p in prompts for _ in range(16)], device=device)
            with torch.no_grad():
                hf_steps = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n,
                                                    do_sample=True, top_k=0, pad_token_id=0)
                hf_steps(2)
                h1, _ = timed(lambda: hf_steps(1), device)
                hn, _ = timed(lambda: hf_steps(new), device)
        hf = batch * (new - 1) / (hn - h1)
        # HBM bytes a step reads at the mean context
        step_bytes = weight_bytes + (len(prompts) * prompt_len + batch * new / 2) * kv_token
        roof = batch / (step_bytes / (bandwidth * 1e9))
        best = max(v for k, v in rate.items() if k != "copied")
        result["decode_by_batch"][batch] = {"prompt_tokens": prompt_len,
                                            **{f"{k}_tok_s": v for k, v in rate.items()},
                                            "hf_tok_s": hf, "roofline_tok_s": roof,
                                            "vs_hf": best / hf, "vs_copied": best / rate["copied"],
                                            "of_roofline": best / roof}
        rates = ", ".join(f"{k} {v:.0f} tok/s" for k, v in rate.items())
        print(f"decode batch {batch:3d} after {prompt_len}-token prompts: {rates}, "
              f"HF generate {hf:.0f} tok/s ({best / hf:.2f}x), "
              f"roofline {roof:.0f} tok/s ({100 * best / roof:.0f} %)", flush=True)
        save("gpu", result, folder)
    # keyed noise vs multinomial, per step
    result["sampler"] = bench_sampler(args, device, vocab=config.vocab_size)
    save("gpu", result, folder)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6, betas=(0.9, 0.99), weight_decay=0.01)
    # every group has a gradient
    rewards = torch.tensor([[float(g % 2) for g in range(G)] for _ in range(B)])

    def update(prompts, completions):
        adv = grpo.group_advantages(rewards)
        loss = grpo.policy_update(model, prompts, completions, adv, targs).loss
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return loss
    gen = torch.Generator().manual_seed(1)
    draft_lengths = torch.randint(P // 3, 2 * P // 3, (B,), generator=gen)  # 1-2k
    lengths = {"paper_step": [P] * B,  # the worst case
               "draft_step": [int(x) for x in draft_lengths]}
    for step_name, lens in lengths.items():
        prompts = [rand(n) for n in lens]
        memory(device)
        model.eval()
        with merged(model, generation.cache_bytes(model, sum(lens), B * G, L)):
            rollouts = lambda: generate(model, prompts, n=G, max_new_tokens=L, temperature=1.0,
                                        eos_token_id=-1, pad_token_id=0, seed=1,
                                        graphs=graphs_for(device))
            t_roll, completions = timed(rollouts, device)
        model.train()
        t_upd, _ = timed(lambda: update(prompts, completions), device)
        result[step_name] = {"prompt_tokens": lens, "prompts": B, "generations": G, "new_tokens": L,
                             "rollout_s": t_roll, "update_s": t_upd, "step_s": t_roll + t_upd,
                             **memory(device),
                             "projected_2000_steps_h": 2000 * (t_roll + t_upd) / 3600}
        s = result[step_name]
        print(f"{step_name} ({B}x{G} rollouts, prompts of {lens} tokens, "
              f"every completion at the {L}-token cap): "
              f"rollouts {s['rollout_s']:.1f} s + update {s['update_s']:.1f} s, peak "
              f"{s.get('peak_allocated_GB', 0):.1f} GB; "
              f"2,000 such steps: {s['projected_2000_steps_h']:.1f} h (an upper bound)", flush=True)
        save("gpu", result, folder)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section",
                    choices=["grader", "extraction", "cpu", "update", "memory", "ops", "rollout",
                             "stops", "sampler", "merge", "gap", "gpu", "memory-child"])
    ap.add_argument("--math-verify", action="store_true",
                    help="grader: compare with math-verify if installed")
    ap.add_argument("--new-tokens", type=int, default=64, help="cpu/update: tokens per rollout")
    ap.add_argument("--steps", type=int, default=6,
                    help="cpu/update: steps (the first is not timed; median of rest)")
    ap.add_argument("--drafts", action="store_true",
                    help="cpu: prompts carry a draft (another problem's solution)")
    ap.add_argument("--hidden", type=int, default=256,
                    help="cpu/update: model width (64 x 2 layers = --model tiny)")
    ap.add_argument("--layers", type=int, default=4, help="cpu/update: model depth")
    ap.add_argument("--prompt-tokens", type=int, default=400, help="update: prompt length")
    ap.add_argument("--shape", default="mathstral", choices=["mathstral", "tiny"],
                    help="gpu: model shape")
    ap.add_argument("--quick", action="store_true",
                    help="gpu: the first-GPU sections only (<= 5 minutes)")
    ap.add_argument("--record", action="store_true",
                    help="write bench/results/, the README's figures (run at its settings)")
    ap.add_argument("--out", default=None,
                    help="the JSON's folder (default bench/latest/; --record: bench/results/)")
    ap.add_argument("--mode", default="prompt_once", help="memory-child: prompt_once|whole_rows")
    args = ap.parse_args(argv)
    args.out = args.out or (RESULTS if args.record else LATEST)
    sections = {"grader": bench_grader, "extraction": bench_extraction, "cpu": bench_cpu,
                "update": bench_update,
                "memory": bench_memory, "memory-child": memory_child,
                "ops": bench_ops, "rollout": bench_rollout, "stops": bench_stops,
                "sampler": bench_sampler,
                "merge": bench_merge, "gap": bench_gap, "gpu": bench_gpu}
    sections[args.section](args)


if __name__ == "__main__":
    main()
