"""The README's first command: the recipe's five variants trained with GRPO on a toy task,
side by side, on a CPU, in two to three minutes.

  python -m extras.demo                            # everything under runs/demo/
  python -m extras.demo --variants mismatched-wrong matched-correct    # two of them
  python -m extras.demo --seed 1 --out runs/demo-seed1

A toy learner is built on the spot and cached in OUT/model: a Mistral-architecture model
of 0.16M parameters and a BPE tokenizer, trained for some seconds on sums of three
digits written in the paper's prompts. Then the three scripts run on it, each command
printed first: drafts.py generate once (the toy writes its own drafts, at the draft
model's prompt, where it was taught to slip), evaluate.py once for the base model on 100
held-out sums (Thinking: N/A), and for each variant, one after another, grpo.py
--variant V (the same pool, seed and steps) and evaluate.py for its adapter. It ends
with one table, a row a variant, and (with matplotlib installed) one figure, a line a
variant. Each command runs in this process: its script's main() with the printed
arguments, as pasting it would run it, but Python, torch and transformers start once,
not twelve times (they took a quarter of the time).

The toy learner leans on its thinking section: on sums of ten or more it was taught to
copy the draft's boxed answer ("The thinking says \\boxed{13}.") 80 % of the time and to
work the sum out 20 %; on smaller sums the other way round. Where the copied answer is
not the problem's own (a mismatched draft's, a wrong draft's, "N/A"), copying earns 0
and working the sum out earns 1, and GRPO can move the learner from the one to the
other; a matched correct draft's answer earns 1 copied or worked out alike. At test time
the draft slot says N/A, and a learner that still copies answers "N/A".

Every command runs on one CPU thread (OMP_NUM_THREADS=1, unless you set it): the toy's
matrices are too small for a second thread to pay, and on a busy machine threads waiting
on each other made runs several times slower.
"""
import argparse
import functools
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from typing import NamedTuple

import torch

import drafts
import evaluate
import grpo
from drafts import DRAFT_MODEL_TEMPLATE, VARIANTS, build_prompt
from extras.cli import SEED, Parser
from processes import run_main

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


class Setting(NamedTuple):
    """The pipeline's sizes, the same for every variant."""
    steps: int             # GRPO steps
    prompts: int           # prompts a step
    generations: int       # rollouts a prompt
    new_tokens: int        # the cap of every generation: drafts, rollouts, evaluations
    lr: float              # GRPO's learning rate
    drafts: int            # drafts a problem in the pool
    problems: int          # training sums drafted for and trained on (of the 900)


# 8 prompts x 8 rollouts a step; the learning rate suits a 0.16M-parameter learner
SETTING = Setting(steps=90, prompts=8, generations=8, new_tokens=32, lr=3e-4, drafts=4,
                  problems=900)


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


MAINS = {"drafts.py": drafts.main, "evaluate.py": evaluate.main, "grpo.py": grpo.main}


def script(*argv):
    """Run one of the project's scripts as `python SCRIPT ARGS` would, the command
    printed first: its main(ARGS) in this process, a bad input one line `error: ...`,
    as the script's."""
    print("\n$ python " + " ".join(argv), flush=True)
    start, threads = time.time(), torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:   # else torch read it, as a script would
        torch.set_num_threads(1)
    try:
        run_main(functools.partial(MAINS[argv[0]], list(argv[1:])))
    finally:
        torch.set_num_threads(threads)
    print(f"({time.time() - start:.0f} s)")


def pipeline(out, seed, variants, setting=SETTING, recipe=RECIPE):
    """The toy learner (cached), one pool of drafts, the base model's evaluation, then
    a GRPO run and its evaluation for each variant, one after another: their rows of the
    table."""
    path = lambda name: os.path.join(out, name)
    model, pool, held_out = path("model"), path("pool.jsonl"), path("heldout.jsonl")
    evaluation = lambda name: path(f"eval-{name}.json")
    os.makedirs(out, exist_ok=True)
    learner(model, seed, recipe)
    written = [evaluation(name) for name in ("base", *variants)]
    remove(pool, *map(path, variants), *written, *[e + ".records.jsonl" for e in written])
    train, tested = toy_problems(seed, recipe["held_out"])
    write_jsonl(path("train.jsonl"), rows(train[:setting.problems]))
    write_jsonl(held_out, rows(tested))
    tokens, steps = str(setting.new_tokens), str(setting.steps)     # as flags
    script("drafts.py", "generate", "--model", model, "--data", path("train.jsonl"),
           "--out", pool, "--num-drafts", str(setting.drafts), "--max-new-tokens", tokens,
           "--seed", str(seed))
    evaluate_held_out = lambda name, *adapter: script(
        "evaluate.py", "--model", model, *adapter, "--data", held_out,
        "--max-new-tokens", tokens, "--output", evaluation(name))
    evaluate_held_out("base")
    for variant in variants:
        script("grpo.py", "--model", model, "--variant", variant, "--drafts", pool,
               "--output-dir", path(variant), "--max-steps", steps,
               "--prompts-per-step", str(setting.prompts),
               "--num-generations", str(setting.generations), "--max-new-tokens", tokens,
               "--lr", str(setting.lr), "--save-every", steps, "--seed", str(seed))
        adapter = os.path.join(path(variant), f"step-{steps}")
        evaluate_held_out(variant, "--adapter", adapter)
    return [row(variant, path(variant), evaluation("base"), evaluation(variant))
            for variant in variants]


# ----------------------------------------------------------------------------- the table
class Thirds(NamedTuple):
    first: float           # the mean over the first third of the steps
    last: float            # over the last third


class Row(NamedTuple):
    """A variant's row of the table."""
    variant: str
    reward: Thirds
    # the rollouts giving the shown draft's answer; no-draft: None
    draft_answer_rate: Thirds | None
    base: float            # held-out pass@1 (strict, greedy, Thinking: N/A): base model
    trained: float         # the trained adapter's


def thirds(values):
    """The means of the first and of the last third of values."""
    n = max(1, len(values) // 3)
    return Thirds(sum(values[:n]) / n, sum(values[-n:]) / n)


def pass_at_1(path):
    with open(path) as f:
        return json.load(f)["strict"]["pass@1"]


def row(variant, run, base, trained):
    """A variant's row: its run's metrics.jsonl, and the two evaluations' summaries."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    rates = [m["draft_answer_rate"] for m in metrics]
    return Row(variant, thirds([m["reward"] for m in metrics]),
               None if None in rates else thirds(rates),
               pass_at_1(base), pass_at_1(trained))


def table(table_rows, setting, held_out):
    """The table that ends the demo, a row a variant."""
    pair = lambda t: "-" if t is None else f"{t.first:.2f} -> {t.last:.2f}"
    line = lambda *cells: "  {:<20}{:<16}{:<20}{}".format(*cells)
    return "\n".join([
        f"What the runs show ({setting.steps} GRPO steps each, {setting.prompts} "
        f"prompts x {setting.generations} rollouts a step, one pool, one seed;\n"
        f"first -> last third of the steps; pass@1 on {held_out} held-out sums, "
        "greedy, Thinking: N/A):",
        line("variant", "reward", "draft_answer_rate", "pass@1"),
        *[line(r.variant, pair(r.reward), pair(r.draft_answer_rate),
               f"{r.base:.2f} base -> {r.trained:.2f} trained") for r in table_rows]])


# ----------------------------------------------------------------------------- the command
def main(argv=None):
    args = Parser(prog="python -m extras.demo", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter).flags(
        ("--seed", 0, "builds the toy learner, splits the sums, seeds the drafts and GRPO", SEED),
        ("--out", "runs/demo", "the model (cached), data, pool, runs, evaluations"),
    )
    args.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS,
                      metavar="V", help="the variants trained, in order (default: all)")
    args = args.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sys.exit(f"error: --out {args.out}: a file, not a folder")
    start, out = time.time(), os.path.relpath(args.out, ROOT)
    variants = list(dict.fromkeys(args.variants))  # each once
    os.chdir(ROOT)                                 # the scripts' paths: from the repository's root
    table_rows = pipeline(out, args.seed, variants)
    runs = [os.path.join(out, variant) for variant in variants]
    plot = ["evaluate.py", "plot", "--metrics", *runs, "--smooth", "5",
            "--output", os.path.join(out, "curves.png")]
    curves = f"`pip install matplotlib`, then `python {' '.join(plot)}`"
    if importlib.util.find_spec("matplotlib"):     # not in requirements.txt: drawn if installed
        script(*plot)
        curves = plot[-1]
    print("\n" + table(table_rows, SETTING, RECIPE["held_out"]))
    note = lambda label, text: print(f"  {label:<20}{text}")
    note("draft_answer_rate", "rollouts giving the shown draft's answer (none shown in")
    note("", "no-draft; in matched-correct mostly the sum's own: working out counts too)")
    note("metrics", f"{os.path.join(out, 'VARIANT', 'metrics.jsonl')}, the evaluations "
         f"{os.path.join(out, 'eval-*.json')}")
    note("curves", curves)
    note("time", f"{time.time() - start:.0f} s")
    print("A toy. It can set a draft whose answer the learner can copy for reward\n"
          "(matched-correct) against drafts it cannot (the others); it cannot tell\n"
          "matched-wrong from mismatched-wrong (a copy of either earns 0), nor give the\n"
          "paper's numbers (+1.62 pp): those need the paper's models (Mathstral-7B,\n"
          "Qwen2.5-Math-1.5B's drafts, MATH) and a GPU: see the README.")


if __name__ == "__main__":
    main()
