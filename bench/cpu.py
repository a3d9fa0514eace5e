"""bench.py cpu: a GRPO step on the CPU, ours against TRL's GRPOTrainer (if installed)
with the same model, prompts, reward and hyper-parameters, and our generate against HF
generate."""
import json
import os
import shutil
import statistics
import time

import torch

import grpo
from bench.common import HERE, coin, cpu_name, save, small_model
from drafts import build_prompt, load_jsonl
from extras.tiny import tokenizer as tiny_tokenizer
from generation import generate
from lora import apply_lora, merged
from reward import reward


def bench_cpu(args):
    """4 prompts x 8 rollouts x --new-tokens on a random Mistral (--hidden x
    --layers): generate against HF generate, LoRA merged and unmerged; then GRPO
    steps, ours and TRL's, under the real grader and a coin-flip reward; the medians
    of steps 2.. (--steps)."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tok = tiny_tokenizer()
    B, G, L, steps = 4, 8, args.new_tokens, args.steps
    rows = [r for r in load_jsonl(os.path.join(HERE, "data", "math_train.jsonl"))
            if r.get("level") in (3, 4, 5) and r["answer"]][:B * steps]
    # --drafts: another problem's solution as the draft, as mismatched prompts show
    for i, r in enumerate(rows):
        r["draft"] = rows[(i + 1) % len(rows)]["solution"] if args.drafts else None
    result = {"device": cpu_name(), "threads": torch.get_num_threads(),
              "B": B, "G": G, "hidden": args.hidden, "layers": args.layers,
              "max_new_tokens": L, "steps_timed": steps - 1, "drafts": args.drafts,
              "model": f"random Mistral, hidden {args.hidden}, {args.layers} layers"}

    # generation: ours vs HF generate, same model, 4 prompts x 8 samples, L tokens
    # each (a random model rarely stops)
    model = small_model(tok, args.hidden, args.layers).eval()
    ids = [tok(build_prompt(r["problem"], r["draft"]))["input_ids"] for r in rows[:B]]
    texts = [build_prompt(r["problem"], r["draft"]) for r in rows]
    prompt_lengths = [len(tok(text)["input_ids"]) for text in texts]
    result["mean_prompt_tokens"] = statistics.mean(prompt_lengths)
    t = time.perf_counter()
    ours = generate(model, ids, n=G, max_new_tokens=L, temperature=1.0, eos_token_id=-1,
                    pad_token_id=tok.pad_token_id)
    result["ours_generate_s"] = time.perf_counter() - t
    tokens = sum(len(c) for group in ours for c in group)
    tok.padding_side = "left"
    enc = tok(texts[:B], return_tensors="pt", padding=True)
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                       max_new_tokens=L, min_new_tokens=L, num_return_sequences=G,
                       pad_token_id=tok.pad_token_id)
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

    # one GRPO step (rollouts + rewards + update), ours vs TRL's GRPOTrainer with the
    # same settings. Two rewards: the real grader (a random model scores 0: every group
    # is skipped, as early in training on hard problems) and a deterministic coin flip
    # per completion (every group has variance: the full update runs in both trainers)
    for label, reward_fn in (("grader", None), ("coin", coin)):
        out = os.path.join("/tmp", "bench_cpu_ours")
        shutil.rmtree(out, ignore_errors=True)
        targs = grpo.parse_args([
            "--model", "small", "--variant", "no-draft", "--output-dir", out,
            "--max-steps", str(steps), "--prompts-per-step", str(B),
            "--num-generations", str(G), "--max-new-tokens", str(L),
            "--save-every", "100000", "--exclude", ""])
        torch.manual_seed(0)
        learner = apply_lora(small_model(tok, args.hidden, args.layers))
        grpo.train(targs, rows, learner, tok, reward_fn=reward_fn)
        metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        times = [m["step_time"] for m in metrics][1:]
        result[f"ours_step_s_{label}"] = statistics.median(times)
        try:
            theirs = trl_step(rows, tok, B, G, L, steps, reward_fn, args.hidden,
                              args.layers)
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


def trl_step(rows, tok, B, G, L, steps, reward_fn=None, hidden=256, layers=4):
    """TRL's GRPOTrainer on the same model, prompts, reward and hyper-parameters (Dr.
    GRPO loss, beta 0, LoRA)."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_begin(self, *a, **k):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.marks[-1] = time.perf_counter() - self.marks[-1]

    data = Dataset.from_list([{"prompt": build_prompt(r["problem"], r["draft"]),
                               "answer": r["answer"]} for r in rows])
    config = trl.GRPOConfig(
        output_dir="/tmp/bench_cpu_trl", per_device_train_batch_size=B * G,
        num_generations=G, max_completion_length=L, loss_type="dr_grpo",
        scale_rewards="none", beta=0.0, learning_rate=5e-6,
        lr_scheduler_type="constant", adam_beta2=0.99, weight_decay=0.01,
        max_grad_norm=1.0, temperature=1.0, top_p=1.0, max_steps=steps, use_cpu=True,
        bf16=False, save_strategy="no", report_to="none", logging_steps=1,
        gradient_checkpointing=True, shuffle_dataset=False, disable_tqdm=True)
    torch.manual_seed(0)
    timer = Timer()
    grade = reward_fn or reward
    rewards = lambda prompts, completions, answer, **kw: [
        grade(c, a) for c, a in zip(completions, answer)]
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    trainer = trl.GRPOTrainer(model=small_model(tok, hidden, layers), args=config,
                              train_dataset=data, processing_class=tok,
                              reward_funcs=rewards, peft_config=lora, callbacks=[timer])
    trainer.train()
    return {"trl_step_s": statistics.median(timer.marks[1:]),
            "trl_version": trl.__version__}
