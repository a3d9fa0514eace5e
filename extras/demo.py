"""The README's first command: GRPO learning a toy task on a CPU, in a minute or two.

  python -m extras.demo                            # everything under runs/demo/
  python -m extras.demo --seed 1 --out runs/demo-seed1

A toy learner is built on the spot and cached in OUT/model: a Mistral-architecture model of 0.16M
parameters and a BPE tokenizer, trained for some seconds on sums of three digits written in the
paper's prompts. Then the three scripts run on it as you would run them, each command printed
first: drafts.py generate (the toy writes its own drafts, at the draft model's prompt, where it was
taught to slip), grpo.py --variant mismatched-wrong, and evaluate.py on 100 held-out sums (Thinking:
N/A), for the base model and for the trained adapter.

The toy learner leans on its thinking section: on sums of ten or more it was taught to copy the
draft's boxed answer ("The thinking says \\boxed{13}.") 80 % of the time and to work the sum
out 20 %; on smaller sums the other way round. A mismatched draft's answer belongs to another
problem, so copying it earns 0 and working the sum out earns 1: GRPO moves the learner from the one
to the other. At test time the draft slot says N/A, and a learner that still copies answers "N/A".

Every command runs on one CPU thread (OMP_NUM_THREADS=1, unless you set it): the toy's matrices are
too small for a second thread to pay, and on a busy machine threads waiting on each other made runs
several times slower.
"""
import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time

from drafts import DRAFT_MODEL_TEMPLATE, build_prompt
from extras.cli import SEED, Parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# How the toy learner is built. A cached model is used only if its stamp holds the same recipe and
# seed: bump "version" whenever the code that builds it changes.
RECIPE = {"version": 1,
          "held_out": 100,         # sums kept out of everything but the evaluation
          "drafter": 0.3,          # share of the teacher-forcing examples at the draft prompt
          "slip": 0.5,             # the drafter's chance to slip at each of its two additions
          "solve": [0.8, 0.2],     # the learner's chance to work out a sum below ten / ten or more
          "vocab_size": 600, "hidden": 64, "layers": 2,
          "steps": 600, "batch": 64, "lr": 3e-3}
STAMP = "demo.json"
# the GRPO run: 8 prompts x 8 rollouts a step; the learning rate suits a 0.16M-parameter learner
STEPS, PROMPTS, GENERATIONS, NEW_TOKENS, LR = 90, 8, 8, 32, 3e-4


# ----------------------------------------------------------------------------- the toy task
def problem(a, b, c):
    return f"What is {a} + {b} + {c}?"


def solution(a, b, c, slips=(0, 0)):
    """A step-by-step solution; slips shift the two partial sums (the weak drafter's mistakes)."""
    s = max(a + b + slips[0], 0)
    t = max(s + c + slips[1], 0)
    return f" {a} + {b} = {s}, {s} + {c} = {t}. The answer is \\boxed{{{t}}}."


def copy_answer(draft):
    """What the learner writes when it copies its thinking section's answer ("N/A" included)."""
    answer = draft.split("\\boxed{")[-1].split("}")[0]
    return f" The thinking says \\boxed{{{answer}}}."


def toy_problems(seed, held_out=RECIPE["held_out"]):
    """The 1,000 sums of three digits, shuffled by the seed: (training, held-out) triples,
    disjoint."""
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]
    random.Random(seed).shuffle(triples)
    return triples[held_out:], triples[:held_out]


def rows(triples):
    """Problems in the fields the scripts read (level 3: inside the recipe's levels 3-5)."""
    return [{"id": f"toy-{a}{b}{c}", "problem": problem(a, b, c), "answer": str(a + b + c),
             "level": 3, "subject": "Toy arithmetic"} for a, b, c in triples]


def example(triples, rng, recipe=RECIPE):
    """One teacher-forcing (prompt, completion): the drafter at the draft model's prompt, or the
    learner at the paper's, shown N/A or a draft written for another problem."""
    a, b, c = rng.choice(triples)
    slips = lambda: [rng.choice((-2, -1, 1, 2)) if rng.random() < recipe["slip"] else 0
                     for _ in range(2)]
    if rng.random() < recipe["drafter"]:
        return DRAFT_MODEL_TEMPLATE.format(problem=problem(a, b, c)), solution(a, b, c, slips())
    draft = "N/A" if rng.random() < 1 / 3 else solution(*rng.choice(triples), slips()).strip()
    prompt = build_prompt(problem(a, b, c), draft)
    if rng.random() < recipe["solve"][a + b + c >= 10]:
        return prompt, solution(a, b, c)
    return prompt, copy_answer(draft)


# ----------------------------------------------------------------------------- the toy learner
def train_tokenizer(texts, vocab_size):
    """Byte-level BPE whose merges may cross spaces (the template's sentences become a few tokens)
    but not digits (every number is a token of its own) nor a brace (after "\\boxed{" a number and
    "N/A" alike start a new token); BOS prepended like Mistral's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split("{", behavior="merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def build(folder, seed, recipe=RECIPE):
    """Train the toy learner from the seed and save it into folder: safetensors, tokenizer, and
    the stamp last, in a temporary folder renamed into place, so that a crash never leaves a
    half-written model under the name."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM
    train, _ = toy_problems(seed, recipe["held_out"])
    rng = random.Random(seed)
    size = recipe["steps"] * recipe["batch"]
    data = [example(train, rng, recipe) for _ in range(max(size, 3000))]
    tokenizer = train_tokenizer([text for pair in data[:3000] for text in pair],
                                recipe["vocab_size"])
    data = data[:size]
    prompts = tokenizer([p for p, _ in data])["input_ids"]
    completions = tokenizer([c for _, c in data], add_special_tokens=False)["input_ids"]
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=recipe["hidden"],
                           intermediate_size=2 * recipe["hidden"],
                           num_hidden_layers=recipe["layers"], num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                           eos_token_id=2, pad_token_id=3, sliding_window=None,
                           tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MistralForCausalLM(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # no sum whose order depends on the thread count; faster too
    try:
        teacher_forcing(model, prompts, completions, recipe)
    finally:
        torch.set_num_threads(threads)
    tmp = f"{folder}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, STAMP), "w") as f:
        json.dump({"seed": seed, **recipe}, f, indent=2)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def teacher_forcing(model, prompts, completions, recipe):
    """A batch of (prompt, completion + EOS) a step, the loss on the completions only."""
    import torch
    steps, batch = recipe["steps"], recipe["batch"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe["lr"], total_steps=steps,
                                                   pct_start=0.1)
    model.train()
    for step in range(steps):
        seqs = [(prompts[i], completions[i] + [2]) for i in range(step * batch, (step + 1) * batch)]
        width = max(len(p) + len(c) for p, c in seqs)
        ids = torch.tensor([p + c + [3] * (width - len(p) - len(c)) for p, c in seqs])
        labels = torch.tensor([[-100] * len(p) + c + [-100] * (width - len(p) - len(c))
                               for p, c in seqs])
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"  teacher forcing: step {step + 1}/{steps}, loss {loss.item():.3f}")
    model.eval()


def cached(folder, seed, recipe=RECIPE):
    """Whether folder holds the model that this seed and recipe build (its stamp says so)."""
    try:
        with open(os.path.join(folder, STAMP)) as f:
            return json.load(f) == {"seed": seed, **recipe}
    except (OSError, ValueError):
        return False


def learner(folder, seed, recipe=RECIPE):
    """The toy learner's folder: the cached one, else built now."""
    if cached(folder, seed, recipe):
        print(f"toy learner: {folder} (cached)")
        return folder
    print(f"toy learner: building {folder} from seed {seed}, once")
    start = time.time()
    build(folder, seed, recipe)
    print(f"  built in {time.time() - start:.0f} s")
    return folder


# ----------------------------------------------------------------------------- the pipeline
def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def remove(*paths):
    """A rerun starts afresh: grpo.py would refuse a folder holding a run, and drafts.py and
    evaluate.py would resume from their files."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def script(*argv):
    """Run one of the project's scripts as a newcomer would, the command printed first."""
    print("\n$ python " + " ".join(argv), flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, *argv], env={"OMP_NUM_THREADS": "1", **os.environ})
    if done.returncode:
        sys.exit(f"error: `python {' '.join(argv[:2])} ...` failed (exit status {done.returncode})")
    print(f"({time.time() - start:.0f} s)")


def thirds(values):
    """The means of the first and of the last third of values."""
    n = max(1, len(values) // 3)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def report(run, base, trained, curves):
    """What the run shows: the reward and the copying, early and late, and the evaluations."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    rewards = [m["reward"] for m in metrics]
    window = max(1, len(rewards) // 6)
    means = [rewards[i:i + window] for i in range(0, len(rewards), window)]
    line = lambda label, text: print(f"  {label:<32}{text}")
    print(f"\nWhat this run shows ({len(metrics)} GRPO steps, {PROMPTS} prompts x {GENERATIONS} "
          "rollouts each):")
    line(f"reward, {window}-step means", " ".join(f"{sum(m) / len(m):.2f}" for m in means))
    line("reward, first -> last third", "{:.2f} -> {:.2f}".format(*thirds(rewards)))
    line("draft_answer_rate, the same", "{:.2f} -> {:.2f}  (rollouts giving the shown draft's "
         "answer)".format(*thirds([m["draft_answer_rate"] for m in metrics])))
    line(f"pass@1, {trained['num_problems']} held-out sums",
         f"{base['strict']['pass@1']:.2f} base -> {trained['strict']['pass@1']:.2f} trained  "
         "(greedy, Thinking: N/A)")
    line("metrics", f"{run}/metrics.jsonl")
    line("curves", curves)
    print("A toy: GRPO removes a shortcut that the toy learner was built with. The paper's figures "
          "need\nthe paper's models (Mathstral-7B, Qwen2.5-Math-1.5B's drafts, MATH) and a GPU: "
          "see the README.")


def main(argv=None):
    args = Parser(prog="python -m extras.demo", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter).flags(
        ("--seed", 0, "builds the toy learner, splits the sums, seeds the drafts and GRPO", SEED),
        ("--out", "runs/demo", "folder for the model (cached), data, pool, run and evaluations"),
    ).parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sys.exit(f"error: --out {args.out}: a file, not a folder")
    out = os.path.relpath(args.out, ROOT)
    os.chdir(ROOT)                                 # the scripts' paths: from the repository's root
    path = lambda name: os.path.join(out, name)
    run, seed = path("mismatched-wrong"), str(args.seed)
    os.makedirs(out, exist_ok=True)
    learner(path("model"), args.seed)
    remove(path("pool.jsonl"), run, *[path(f"eval-{name}.json{records}") for name in
                                      ("base", "trained") for records in ("", ".records.jsonl")])
    train, held_out = toy_problems(args.seed)
    write_jsonl(path("train.jsonl"), rows(train))
    write_jsonl(path("heldout.jsonl"), rows(held_out))
    script("drafts.py", "generate", "--model", path("model"), "--data", path("train.jsonl"),
           "--out", path("pool.jsonl"), "--num-drafts", "4", "--max-new-tokens", str(NEW_TOKENS),
           "--seed", seed)
    script("grpo.py", "--model", path("model"), "--variant", "mismatched-wrong",
           "--drafts", path("pool.jsonl"), "--output-dir", run, "--max-steps", str(STEPS),
           "--prompts-per-step", str(PROMPTS), "--num-generations", str(GENERATIONS),
           "--max-new-tokens", str(NEW_TOKENS), "--lr", str(LR), "--save-every", str(STEPS),
           "--seed", seed)
    results = {}
    for name, adapter in (("base", []), ("trained", ["--adapter", f"{run}/step-{STEPS}"])):
        script("evaluate.py", "--model", path("model"), *adapter, "--data", path("heldout.jsonl"),
               "--max-new-tokens", str(NEW_TOKENS), "--output", path(f"eval-{name}.json"))
        with open(path(f"eval-{name}.json")) as f:
            results[name] = json.load(f)
    plot = ["evaluate.py", "plot", "--metrics", run, "--smooth", "5", "--output",
            path("curves.png")]
    curves = f"`pip install matplotlib`, then `python {' '.join(plot)}`"
    if importlib.util.find_spec("matplotlib"):     # not in requirements.txt: drawn if installed
        script(*plot)
        curves = path("curves.png")
    report(run, results["base"], results["trained"], curves)


if __name__ == "__main__":
    main()
