"""Evaluation: MATH-500 greedy pass@1, sampling pass@k / avg@k / maj@k; across
runs (in extras/stats.py and extras/plot.py) Welch's t and the figures.

  python evaluate.py --adapter runs/mismatched-wrong-seed0/step-2000 \\
      --output results/mw-seed0.json              # MATH-500, greedy, Thinking: N/A
  python evaluate.py --adapter A --data data/aime2025.jsonl --samples 2048 \\
      --k 1,2,4,...,1024 --output results/aime25.json
  torchrun --nproc-per-node 8 evaluate.py ...    # the same samples and summary, 8 GPUs
  python evaluate.py compare mismatched-wrong=a0.json,a1.json \\
      matched-wrong=b0.json,b1.json

Every sample is appended to <output>.records.jsonl as it is drawn (by process 0,
for all); rerunning the command, with any number of processes, draws only the
missing ones. Grading is strict (last \\boxed{} only); lenient beside.
"""
import argparse
import functools
import importlib
import json
import math
import os
import random
import statistics
import sys
from collections import Counter

from drafts import (
    DATA,
    DRAFT_MODEL_TEMPLATE,
    build_prompt,
    encode_prompt,
    load_jsonl,
    output_path,
    read_resumable,
)
from extras.cli import COUNT, FRACTION, NONNEGATIVE, SEED, Parser, counts
from reward import extract_boxed, is_equiv, lenient_answer

PROMPTS = {
    # the test-time prompt: the training template with "Thinking: N/A"
    "nodraft": lambda problem: build_prompt(problem, None),
    # Mathstral's own format
    "instruct": lambda problem:
        f"[INST] {problem}\n\nPlease reason step by step, and put your final answer "
        "within \\boxed{}. [/INST]",
    # the draft model's prompt
    "draftgen": lambda problem: DRAFT_MODEL_TEMPLATE.format(problem=problem),
}
STOP_STRINGS = ("\n\nProblem:", "\nProblem:")


@functools.lru_cache(maxsize=8)
def stop_finder(tokenizer, stop_strings):
    """generate's stop(job, tail, first) -> where a row ends in its tail: just
    after the first token at or after `first` whose text, with the STOP_LOOKBACK
    tokens before it, holds a stop string; None if none. Only a token whose text
    holds a stop string's last character can complete one: no other is decoded."""
    from generation import STOP_LOOKBACK
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    enders = {i for i, text in enumerate(texts)
              if any(s[-1] in text for s in stop_strings)}

    def stop(job, tail, first):
        for u in range(first, len(tail)):
            if tail[u] in enders:
                window = tokenizer.decode(tail[max(0, u - STOP_LOOKBACK):u + 1])
                if any(s in window for s in stop_strings):
                    return u + 1
        return None
    return stop


# ----------------------------------------------------------------------------- estimators
def pass_at_k(n, c, k):
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), as a stable product (no huge
    binomials)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def vote_keys(answers, equivalent=False):
    """What each sample votes for (None: no vote). The author's: its exact
    answer string. equivalent=True (ours, not in the recipe): the first earlier
    answer is_equiv to it."""
    if not equivalent:
        return list(answers)
    key = {}
    for a in answers:
        if a is not None and a not in key:
            key[a] = next((f for f in key if key[f] == f and is_equiv(a, f)), a)
    return [key.get(a) for a in answers]


def maj_at_k(keys, correct, k, rng, trials=100):
    """The author's maj@k: the vote of all n samples if k >= n, else the mean
    over `trials` k-subsets drawn by rng.sample. No answer, no vote; a tie goes
    to the answer met first in the subset; no vote at all is wrong; the winner
    is graded as its first voter was."""
    n = len(keys)
    subsets = [range(n)] if k >= n else [rng.sample(range(n), k) for _ in range(trials)]
    wins = 0
    for subset in subsets:
        votes = Counter(keys[i] for i in subset if keys[i] is not None)
        if votes:
            winner = votes.most_common(1)[0][0]
            wins += next(correct[i] for i in subset if keys[i] == winner)
    return wins / len(subsets)


# ------------------------------------------------------------------- records -> summary
def summarize(rows, records, ks, vote="exact"):
    """The summary dict, recomputed from per-sample records (so a resumed run
    reports the same). maj@k by `vote` (see vote_keys); maj@1 is pass@1, as the
    author's."""
    by_id = {}
    for rec in records:
        by_id.setdefault(rec["id"], []).append(rec)
    problems = [r for r in rows if r["id"] in by_id]
    # the samples every problem has
    n = min((len(by_id[r["id"]]) for r in problems), default=0)
    samples = [by_id[r["id"]][:n] for r in problems]                       # [problems][n]
    ks = [k for k in ks if k <= n] or ([1] if n else [])
    out = {"num_problems": len(problems), "samples_per_problem": n}
    for mode in ("strict", "lenient"):
        correct = [sum(x[mode] for x in s) for s in samples]           # c of each problem
        out[mode] = {f"pass@{k}": statistics.mean(pass_at_k(n, c, k) for c in correct)
                     for k in ks}
    # per problem: its share of strictly correct samples
    accuracy = [statistics.mean(x["strict"] for x in s) for s in samples]
    out["avg@n"] = statistics.mean(accuracy) if problems else 0.0
    if n > 1:
        rng, out["maj"] = random.Random(42), {}
        keys = [vote_keys([x["pred"] for x in s], vote == "equivalent") for s in samples]
        grades = [[x["strict"] for x in s] for s in samples]
        for k in ks:            # the author's order of draws: k by k, problem by problem
            out["maj"][f"maj@{k}"] = out["strict"]["pass@1"] if k == 1 else (
                statistics.mean(maj_at_k(key, grade, k, rng)
                                for key, grade in zip(keys, grades)))
    for field in ("level", "subject"):
        groups = {}
        for r, share in zip(problems, accuracy):
            if r.get(field) is not None:
                groups.setdefault(str(r[field]), []).append(share)
        if groups:
            out[f"by_{field}"] = {g: {"n": len(v), "accuracy": statistics.mean(v)}
                                  for g, v in sorted(groups.items())}
    return out


# ----------------------------------------------------------------------------- commands
def run(args):
    from extras.graphs import cuda_graphs
    from extras.trackers import tracker
    from generation import generate, load_model  # torch: only here
    from lora import adapter_config, load_lora, merge_lora
    from processes import distributed, gather, rounds
    rank, world = distributed(vars(args))
    # k: the author's 1, 2, 4, ... up to n, and n
    n = args.samples
    ks = args.k or [2 ** i for i in range(n.bit_length())] + ([n] if n & (n - 1) else [])
    # the author stops greedy runs only at these; sampling runs go to EOS or the cap
    stop = args.stop == "always" or args.stop == "greedy" and args.temperature == 0
    stops = STOP_STRINGS if stop else ()
    if ks[-1] > n:
        raise ValueError(f"--k {','.join(map(str, ks))}: more than --samples {n} "
                         "(pass@k and maj@k need k <= n)")
    output_path(args.output, "--output")
    if args.adapter and not os.path.isdir(args.adapter):
        raise FileNotFoundError(f"--adapter {args.adapter}: no such folder")
    # the base model: --model, else the adapter's (as PEFT's loaders take it),
    # else Mathstral's
    base = args.adapter and adapter_config(args.adapter).get("base_model_name_or_path")
    # a hub id's last part, or a local copy's folder
    name = lambda model: os.path.basename(os.path.normpath(model)).lower()
    if args.model and base and name(args.model) != name(base):
        raise ValueError(f"--model {args.model} is not --adapter {args.adapter}'s base "
                         f"model {base} (its adapter_config.json's "
                         "base_model_name_or_path): leave --model out to load that, "
                         f"or if the two are one, write {args.model} there")
    args.model = args.model or base or "mistralai/Mathstral-7B-v0.1"
    rows = load_jsonl(args.data)[:args.limit]
    if not rows:
        raise ValueError(f"{args.data}: no problems")
    records_path = args.output + ".records.jsonl"
    # what the samples depend on: records drawn under another setup are not
    # mixed in
    setup = {k: getattr(args, k) for k in ("model", "adapter", "prompt", "temperature",
                                           "top_p", "max_new_tokens", "samples", "seed",
                                           "stop")}
    config = "|".join(map(str, setup.values()))
    # (id, sample) -> record
    read = lambda: {(r["id"], r["sample"]): r for r in read_resumable(records_path)}
    missing = None
    if rank == 0:                     # process 0 alone reads and writes the files
        records = read()
        if any(r.get("config") != config for r in records.values()):
            raise ValueError(f"{records_path} holds samples of another configuration: "
                             "use another --output")
        # problem id -> the sample numbers it lacks
        missing = {r["id"]: [s for s in range(n) if (r["id"], s) not in records]
                   for r in rows}
        print(f"{len(rows)} problems from {args.data}, "
              f"{sum(map(len, missing.values()))} samples to draw")
    # sample s of problem i is keyed (seed, i, s): draw only those missing
    missing = gather(missing)[0]
    todo = [(i, r) for i, r in enumerate(rows) if missing[r["id"]]]
    size = max(1, args.batch_size // n)   # problems a round, each with its n samples
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    if rank < len(chunks):
        model, tokenizer = load_model(args.model,
                                      trust_remote_code=args.trust_remote_code)
        if args.adapter:
            load_lora(model, args.adapter)
        # sampling at base-model speed; no way back needed, no copy kept
        merge_lora(model, spare=None)
        graphs = cuda_graphs(not args.no_cuda_graphs)

    def sample(chunk):
        ids = [encode_prompt(tokenizer, PROMPTS[args.prompt](r["problem"]))
               for _, r in chunk]
        outs = generate(model, ids, n=[missing[r["id"]] for _, r in chunk],
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_p=args.top_p if args.temperature else 1.0,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id,
                        seed=args.seed, prompt_numbers=[i for i, _ in chunk],
                        stop=stop_finder(tokenizer, stops) if stops else None,
                        batch_size=args.batch_size, graphs=graphs)
        recs = []
        for (_, r), samples in zip(chunk, outs):
            for s, toks in zip(missing[r["id"]], samples):
                text = tokenizer.decode(toks, skip_special_tokens=True)
                for end in stops:
                    text = text.split(end)[0]
                pred = extract_boxed(text)
                recs.append({"id": r["id"],
                             "sample": s,
                             "tokens": len(toks),
                             "completion": text,
                             "pred": pred,
                             "strict": is_equiv(pred, r["answer"]),
                             "lenient": is_equiv(lenient_answer(text), r["answer"]),
                             "config": config})
        return recs
    rounds(chunks, sample, records_path,
           f"eval, {size} problem(s) x {world} process(es) a round")
    if rank > 0:
        return None
    records = sorted(read().values(), key=lambda r: r["sample"])
    summary = {"data": args.data, **setup, "maj_vote": args.maj_vote,
               **summarize(rows, records, ks, args.maj_vote)}
    with open(args.output + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(args.output + ".tmp", args.output)
    # not per problem
    headline = {k: v for k, v in summary.items() if not k.startswith("by_")}
    print(json.dumps(headline, indent=2))
    log = tracker(args.report_to, args.output + ".tracker",
                  args.run_name or os.path.basename(args.output), setup)
    if log:
        log.log(headline, 0)
        log.close()
    if args.model == "tiny":          # smoke runs end here: say what a zero means
        print(f"--model tiny: {len(rows)} problems evaluated (adapter {args.adapter}). "
              "Its weights are random, so\npass@1 = 0 and reward=0.000 are expected: "
              "it tests the plumbing; python -m extras.demo and tests/test_grpo.py, "
              "learning.")
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # across runs' results: extras/stats.py, extras/plot.py
    if argv and argv[0] in ("compare", "plot"):
        tool = "extras.stats" if argv[0] == "compare" else "extras.plot"
        return importlib.import_module(tool).main(argv[1:])
    args = Parser(description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter).flags(
        ("--model", None,
         "base model: hub id, local dir, or 'tiny' "
         "(default: the one --adapter names, else mistralai/Mathstral-7B-v0.1)"),
        ("--adapter", None,
         "a PEFT-format LoRA directory (ours, PEFT's, Unsloth's)"),
        ("--data", os.path.join(DATA, "math500.jsonl"),
         "problems JSONL (math500, aime2025, ...)"),
        ("--output", "results.json",
         "summary JSON; per-sample records go to OUTPUT.records.jsonl"),
        ("--prompt", "nodraft",
         "nodraft (Thinking: N/A), instruct, draftgen", tuple(PROMPTS)),
        ("--limit", None, "only the first N problems", COUNT),
        ("--samples", 1, "n samples per problem (1 = greedy pass@1)", COUNT),
        ("--k", None,
         "comma-separated k for pass@k/maj@k (default 1,2,4,... up to n, and n)", counts),
        ("--maj-vote", "exact",
         "exact: answer strings vote (the author's); equivalent: answers the checker "
         "equates vote together (ours, not in the recipe)", ("exact", "equivalent")),
        ("--temperature", None,
         "0 = greedy (default with --samples 1), else 0.6", NONNEGATIVE),
        ("--top-p", 0.95, "nucleus top_p for sampling (paper: 0.95)", FRACTION),
        ("--max-new-tokens", 4096, "generation cap (paper: 4096)", COUNT),
        ("--seed", 0, "sampling seed", SEED),
        ("--batch-size", 64,
         "sequences decoded together (samples do not depend on it)", COUNT),
        ("--no-cuda-graphs", False,
         "decode eagerly on CUDA (default: CUDA graphs, checked)"),
        ("--stop", "greedy",
         "stop at '\\n\\nProblem:' / '\\nProblem:' in greedy runs only (the author's), "
         "always, or never", ("greedy", "always", "never")),
        ("--trust-remote-code", False,
         "allow model repos with custom code (off by default)"),
        ("--report-to", "none",
         "the summary to an experiment tracker too", ("none", "wandb", "tensorboard")),
        ("--run-name", None,
         "the tracker's name for the evaluation (default: --output's name)"),
    ).parse_args(argv)
    if args.temperature is None:
        args.temperature = 0.0 if args.samples == 1 else 0.6
    return run(args)


if __name__ == "__main__":
    from processes import run_main  # torch is imported only now
    run_main(main)
