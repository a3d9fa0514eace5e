"""Evaluation: MATH-500 greedy pass@1, sampling pass@k / avg@k / maj@k, and seed statistics (Welch's t).

  python evaluate.py --model mistralai/Mathstral-7B-v0.1 --adapter runs/mismatched-wrong/step-2000 \\
      --data data/math500.jsonl --output results/mw-seed0.json                        # greedy, Thinking: N/A
  python evaluate.py --model M --adapter A --data data/aime2025.jsonl --samples 2048 --k 1,2,4,...,1024 \\
      --output results/aime25.json
  python evaluate.py compare mismatched-wrong=a0.json,a1.json matched-wrong=b0.json,b1.json

Every sample is appended to <output>.records.jsonl as it is produced; rerunning the same command resumes, and
the summary is recomputed from the records. Grading is strict (last \\boxed{} only); lenient is reported beside.
"""
import argparse
import functools
import json
import math
import os
import random
import statistics
import sys
from collections import Counter

from drafts import DATA, DRAFT_MODEL_TEMPLATE, build_prompt, encode_prompt, load_jsonl, pending_chunks, read_resumable
from reward import extract_boxed, is_equiv, lenient_answer, normalize

PROMPTS = {
    "nodraft": lambda problem: build_prompt(problem, None),                      # the test-time prompt
    "instruct": lambda problem: f"[INST] {problem}\n\nPlease reason step by step, and put your final answer "
                                f"within \\boxed{{}}. [/INST]",                 # Mathstral's own format
    "draftgen": lambda problem: DRAFT_MODEL_TEMPLATE.format(problem=problem),    # the draft model's prompt
}
STOP_STRINGS = ("\n\nProblem:", "\nProblem:")


# ----------------------------------------------------------------------------- estimators
def pass_at_k(n, c, k):
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), as a stable product (no huge binomials)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def vote_clusters(answers):
    """Cluster ids for answers, equal when is_equiv: exact normalised strings first, then representatives."""
    reps, norm_to_id, out = [], {}, []                   # reps[j]: the first answer of cluster j
    for a in answers:
        if a is None:
            out.append(-1)
            continue
        key = normalize(a)
        if key not in norm_to_id:
            hit = next((j for j, r in enumerate(reps) if is_equiv(a, r)), None)
            if hit is None:
                reps.append(a)
            norm_to_id[key] = len(reps) - 1 if hit is None else hit
        out.append(norm_to_id[key])
    return out


def maj_at_k(clusters, correct, k, trials=200, seed=0):
    """Majority vote over k samples (ties: the earliest), averaged over random k-subsets when k < n."""
    n, rng = len(clusters), random.Random(seed)
    subsets = [list(range(n))] if k == n else [sorted(rng.sample(range(n), k)) for _ in range(trials)]
    wins = 0
    for subset in subsets:
        counts = {}
        for i in subset:
            if clusters[i] >= 0:
                counts[clusters[i]] = counts.get(clusters[i], 0) + 1
        if counts:
            best = max(counts.values())
            winner = next(clusters[i] for i in subset if counts.get(clusters[i]) == best)
            wins += next(correct[i] for i in subset if clusters[i] == winner)
    return wins / len(subsets)


def _betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b), math only."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch_t_test(a, b):
    """Two-sided Welch's t-test: (t, p) with Welch-Satterthwaite degrees of freedom."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two values per group")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:                            # two constant samples: equal, or infinitely far apart
        gap = statistics.mean(a) - statistics.mean(b)
        return (0.0, 1.0) if gap == 0 else (math.copysign(math.inf, gap), 0.0)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, betainc(df / 2, 0.5, df / (df + t * t))


# ----------------------------------------------------------------------------- records -> summary
def summarize(rows, records, ks):
    """The summary dict, recomputed from per-sample records (so a resumed run reports the same)."""
    by_id = {}
    for rec in records:
        by_id.setdefault(rec["id"], []).append(rec)
    problems = [r for r in rows if r["id"] in by_id]
    n = min(len(by_id[r["id"]]) for r in problems) if problems else 0
    ks = [k for k in ks if k <= n] or ([1] if n else [])
    out = {"num_problems": len(problems), "samples_per_problem": n}
    for mode in ("strict", "lenient"):
        out[mode] = {f"pass@{k}": statistics.mean(pass_at_k(n, sum(x[mode] for x in by_id[r["id"]][:n]), k)
                                                   for r in problems) for k in ks} if problems else {}
    accuracy = {r["id"]: statistics.mean(x["strict"] for x in by_id[r["id"]][:n]) for r in problems}  # strict
    out["avg@n"] = statistics.mean(accuracy.values()) if problems else 0.0
    if n > 1:
        maj = {k: [] for k in ks}
        for r in problems:
            recs = by_id[r["id"]][:n]
            clusters = vote_clusters([x["pred"] for x in recs])
            for k in ks:
                maj[k].append(maj_at_k(clusters, [x["strict"] for x in recs], k))
        out["maj"] = {f"maj@{k}": statistics.mean(v) for k, v in maj.items()}
    for field in ("level", "subject"):
        groups = {}
        for r in problems:
            if r.get(field) is not None:
                groups.setdefault(str(r[field]), []).append(accuracy[r["id"]])
        if groups:
            out[f"by_{field}"] = {g: {"n": len(v), "accuracy": statistics.mean(v)} for g, v in sorted(groups.items())}
    return out


# ----------------------------------------------------------------------------- commands
def run(args):
    rows = load_jsonl(args.data)[:args.limit]
    ks = sorted({int(k) for k in args.k.split(",")}) if args.k else [1]
    n = args.samples
    records_path = args.output + ".records.jsonl"
    setup = {k: getattr(args, k) for k in ("model", "adapter", "prompt", "temperature", "top_p", "max_new_tokens",
                                           "samples", "seed", "no_stop", "batch_size")}   # what the samples depend on
    config = "|".join(map(str, setup.values()))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    records = read_resumable(records_path)
    if any(r.get("config") != config for r in records):
        raise ValueError(f"{records_path} holds samples of another configuration: use another --output")
    done = Counter(rec["id"] for rec in records)
    todo = [r for r in rows if done.get(r["id"], 0) < n]
    if any(done[rec["id"]] < n for rec in records):      # a half-sampled problem is dropped and sampled again
        records = [rec for rec in records if done[rec["id"]] >= n]
        with open(records_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    print(f"{len(rows)} problems from {args.data}: {len(rows) - len(todo)} already done, {len(todo)} to run")
    if todo:
        from generation import generate, load_model
        from lora import load_lora, merged
        model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
        if args.adapter:
            load_lora(model, args.adapter)
        per_batch = max(1, args.batch_size // n)
        pending = {r["id"] for r in todo}
        with merged(model), open(records_path, "a", encoding="utf-8") as f:
            for start, chunk in pending_chunks(rows, per_batch, pending):
                ids = [encode_prompt(tokenizer, PROMPTS[args.prompt](r["problem"])) for r in chunk]
                outs = generate(model, ids, n=n, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p if args.temperature else 1.0,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                seed=args.seed * 1_000_003 + start,
                                stop_strings=() if args.no_stop else STOP_STRINGS, tokenizer=tokenizer,
                                batch_size=args.batch_size, desc=f"eval {start + len(chunk)}/{len(rows)}")
                for r, samples in zip(chunk, outs):
                    if r["id"] not in pending:
                        continue
                    for s, toks in enumerate(samples):
                        text = tokenizer.decode(toks, skip_special_tokens=True)
                        for stop in ([] if args.no_stop else STOP_STRINGS):
                            text = text.split(stop)[0]
                        pred = extract_boxed(text)
                        rec = {"id": r["id"], "sample": s, "tokens": len(toks), "completion": text,
                               "pred": pred, "strict": is_equiv(pred, r["answer"]),
                               "lenient": is_equiv(lenient_answer(text), r["answer"]), "config": config}
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        records.append(rec)
                f.flush()
    summary = {"data": args.data, **setup, **summarize(rows, records, ks)}
    with open(args.output + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(args.output + ".tmp", args.output)
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("by_")}, indent=2))
    return summary


def compare(specs, metric="strict.pass@1"):
    """specs: ['label=a.json,b.json', ...]; prints mean ± std per label and Welch's t against the first."""
    groups = []
    for spec in specs:
        label, _, files = spec.rpartition("=")
        values = []
        for path in files.split(","):
            with open(path) as f:
                data = json.load(f)
            values += [100 * functools.reduce(lambda v, key: v[key], metric.split("."), result)
                       for result in (data if isinstance(data, list) else [data])]
        groups.append((label or files, values))
    print(f"{'variant':24s} {'seeds':>5s} {metric + ' (%)':>22s} {'Δ vs first':>10s} {'t':>7s} {'p':>8s}")
    for label, values in groups:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        line = f"{label:24s} {len(values):5d} {statistics.mean(values):14.2f} ± {sd:5.2f}"
        if (label, values) != groups[0] and len(values) > 1 and len(groups[0][1]) > 1:
            t, p = welch_t_test(values, groups[0][1])
            line += f" {statistics.mean(values) - statistics.mean(groups[0][1]):+10.2f} {t:7.2f} {p:8.4f}"
        print(line)
    return groups


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        ap = argparse.ArgumentParser(prog="evaluate.py compare", description="mean ± std and Welch's t per variant")
        ap.add_argument("specs", nargs="+", help="LABEL=result.json[,result.json...] (or a JSON list of results)")
        ap.add_argument("--metric", default="strict.pass@1", help="dotted key into each result JSON")
        a = ap.parse_args(argv[1:])
        return compare(a.specs, a.metric)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--model", default="mistralai/Mathstral-7B-v0.1", help="base model: hub id, local dir, or 'tiny'")
    a("--adapter", default=None, help="a PEFT-format LoRA directory (ours, PEFT's, Unsloth's)")
    a("--data", default=os.path.join(DATA, "math500.jsonl"), help="problems JSONL (math500, aime2025, ...)")
    a("--output", default="results.json", help="summary JSON; per-sample records go to OUTPUT.records.jsonl")
    a("--prompt", default="nodraft", choices=sorted(PROMPTS), help="nodraft (Thinking: N/A), instruct, draftgen")
    a("--limit", type=int, default=None, help="only the first N problems")
    a("--samples", type=int, default=1, help="n samples per problem (1 = greedy pass@1)")
    a("--k", default=None, help="comma-separated k for pass@k/maj@k, e.g. 1,2,4,8 (default 1)")
    a("--temperature", type=float, default=None, help="0 = greedy (default with --samples 1), else 0.6")
    a("--top-p", type=float, default=0.95, help="nucleus top_p for sampling (paper: 0.95)")
    a("--max-new-tokens", type=int, default=4096, help="generation cap (paper: 4096)")
    a("--seed", type=int, default=0, help="sampling seed")
    a("--batch-size", type=int, default=64, help="sequences decoded together (samples depend on it and --seed)")
    a("--no-stop", action="store_true", help="do not stop at '\\n\\nProblem:' / '\\nProblem:'")
    a("--trust-remote-code", action="store_true", help="allow model repos with custom code (off by default)")
    args = ap.parse_args(argv)
    if args.temperature is None:
        args.temperature = 0.0 if args.samples == 1 else 0.6
    return run(args)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
