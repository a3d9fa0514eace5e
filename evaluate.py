"""Evaluation: MATH-500 greedy pass@1, sampling pass@k / avg@k / maj@k, and seed statistics (Welch's t).

  python evaluate.py --model mistralai/Mathstral-7B-v0.1 --adapter runs/mismatched-wrong/step-2000 \\
      --data data/math500.jsonl --output results/mw-seed0.json                        # greedy, Thinking: N/A
  python evaluate.py --model M --adapter A --data data/aime2025.jsonl --samples 2048 --k 1,2,4,...,1024 \\
      --output results/aime25.json
  torchrun --nproc-per-node 8 evaluate.py ...                  # the same samples and summary on 8 GPUs
  python evaluate.py compare mismatched-wrong=a0.json,a1.json matched-wrong=b0.json,b1.json

Every sample is appended to <output>.records.jsonl as it is drawn (by process 0, for all); rerunning the command,
with any number of processes, draws only the missing ones. Grading is strict (last \\boxed{} only); lenient beside.
"""
import argparse
import functools
import json
import math
import os
import random
import statistics
import sys

import numpy as np

from drafts import (COUNT, DATA, DRAFT_MODEL_TEMPLATE, FRACTION, NONNEGATIVE, SEED, Parser, build_prompt, encode_prompt,
                    load_json, load_jsonl, output_path, read_resumable)
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
        for r in (r for r in problems if r.get(field) is not None):
            groups.setdefault(str(r[field]), []).append(accuracy[r["id"]])
        if groups:
            out[f"by_{field}"] = {g: {"n": len(v), "accuracy": statistics.mean(v)} for g, v in sorted(groups.items())}
    return out


# ----------------------------------------------------------------------------- commands
def run(args):
    from generation import distributed, gather, generate, load_model, rounds, tracker      # torch: only here
    from lora import load_lora, merge_lora
    rank, world = distributed(vars(args))
    n, ks = args.samples, sorted({int(k) for k in args.k.split(",") if k.strip().isdigit()}) if args.k else [1]
    if args.k and (len(ks) != len(set(args.k.split(","))) or min(ks) < 1 or max(ks) > n):
        raise ValueError(f"--k {args.k}: comma-separated whole numbers from 1 to --samples ({n}): pass@k and "
                         "maj@k need k <= n")
    output_path(args.output, "--output")
    if args.adapter and not os.path.isdir(args.adapter):
        raise FileNotFoundError(f"--adapter {args.adapter}: no such folder")
    rows = load_jsonl(args.data)[:args.limit]
    if not rows:
        raise ValueError(f"{args.data}: no problems")
    records_path = args.output + ".records.jsonl"
    setup = {k: getattr(args, k) for k in ("model", "adapter", "prompt", "temperature", "top_p", "max_new_tokens",
                                           "samples", "seed", "no_stop")}   # what the samples depend on
    config = "|".join(map(str, setup.values()))
    read = lambda: {(r["id"], r["sample"]): r for r in read_resumable(records_path)}   # (id, sample) -> record
    missing = None
    if rank == 0:                               # process 0 alone reads and writes the files
        records = read()
        if any(r.get("config") != config for r in records.values()):
            raise ValueError(f"{records_path} holds samples of another configuration: use another --output")
        missing = {r["id"]: [s for s in range(n) if (r["id"], s) not in records] for r in rows}
        print(f"{len(rows)} problems from {args.data}, {sum(map(len, missing.values()))} samples to draw")
    missing = gather(missing)[0]                # sample s of problem i is keyed (seed, i, s): draw only those missing
    todo, size = [(i, r) for i, r in enumerate(rows) if missing[r["id"]]], max(1, args.batch_size // n)
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    if rank < len(chunks):
        model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
        if args.adapter:
            load_lora(model, args.adapter)
        merge_lora(model, spare=None)           # sampling at base-model speed; no way back needed, no copy kept

    def sample(chunk):
        ids = [encode_prompt(tokenizer, PROMPTS[args.prompt](r["problem"])) for _, r in chunk]
        outs = generate(model, ids, n=[missing[r["id"]] for _, r in chunk], max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p if args.temperature else 1.0,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, seed=args.seed,
                        keys=[i for i, _ in chunk], stop_strings=() if args.no_stop else STOP_STRINGS,
                        tokenizer=tokenizer, batch_size=args.batch_size, cuda_graphs=args.cuda_graphs)
        recs = []
        for (_, r), samples in zip(chunk, outs):
            for s, toks in zip(missing[r["id"]], samples):
                text = tokenizer.decode(toks, skip_special_tokens=True)
                for stop in ([] if args.no_stop else STOP_STRINGS):
                    text = text.split(stop)[0]
                pred = extract_boxed(text)
                recs.append({"id": r["id"], "sample": s, "tokens": len(toks), "completion": text, "pred": pred,
                             "strict": is_equiv(pred, r["answer"]),
                             "lenient": is_equiv(lenient_answer(text), r["answer"]), "config": config})
        return recs
    rounds(chunks, sample, records_path, f"eval, {size} problem(s) x {world} process(es) a round")
    if rank > 0:
        return None
    records = sorted(read().values(), key=lambda r: r["sample"])
    summary = {"data": args.data, **setup, **summarize(rows, records, ks)}
    with open(args.output + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(args.output + ".tmp", args.output)
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("by_")}, indent=2))
    log = tracker(args.report_to, args.output + ".tracker", args.run_name or os.path.basename(args.output), setup)
    if log:                                     # the summary's numbers, flattened: strict/pass@1, maj/maj@8, ...
        log.log({f"{k}/{m}" if isinstance(v, dict) else k: x for k, v in summary.items() if not k.startswith("by_")
                 for m, x in (v.items() if isinstance(v, dict) else [(k, v)])}, 0)
        log.close()
    if args.model == "tiny":                    # the README's demo ends here: say what a zero means
        print(f"--model tiny: {len(rows)} problems evaluated (adapter {args.adapter}). Its weights are random, so\n"
              "pass@1 = 0 and reward=0.000 are expected: the demo tests the plumbing; tests/test_grpo.py, learning.")
    return summary


def load_groups(specs):
    """['label=a.json,b.json', ...] -> {label: [result dicts]}. A repeated label pools its files: the shell turns
    `label=seed{0..9}.json` into ten words `label=seed0.json` ..., which must mean `label=seed0.json,...`."""
    groups = {}
    for spec in specs:
        label, _, files = spec.rpartition("=")
        for path in files.split(","):
            data = load_json(path)
            data = data if isinstance(data, list) else [data]
            if not all(isinstance(r, dict) for r in data):
                raise ValueError(f"{path}: not a result of evaluate.py (a JSON object, or a list of them)")
            groups.setdefault(label or files, []).extend({**r, "file": path} for r in data)
    return groups


def value(result, metric):
    """result["strict"]["pass@1"] for metric "strict.pass@1"; a missing key names the file."""
    try:
        return functools.reduce(lambda v, key: v[key], metric.split("."), result)
    except (KeyError, TypeError):
        raise KeyError(f"{result['file']}: no {metric!r}") from None


def compare(specs, metric="strict.pass@1"):
    """specs: ['label=a.json,b.json', ...]; prints mean ± std per label and Welch's t against the first."""
    groups = [(label, [100 * value(r, metric) for r in results]) for label, results in load_groups(specs).items()]
    print(f"{'variant':24s} {'seeds':>5s} {metric + ' (%)':>22s} {'Δ vs first':>10s} {'t':>7s} {'p':>8s}")
    for label, values in groups:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        line = f"{label:24s} {len(values):5d} {statistics.mean(values):14.2f} ± {sd:5.2f}"
        if (label, values) != groups[0] and len(values) > 1 and len(groups[0][1]) > 1:
            t, p = welch_t_test(values, groups[0][1])
            line += f" {statistics.mean(values) - statistics.mean(groups[0][1]):+10.2f} {t:7.2f} {p:8.4f}"
        print(line)
    return groups


# ----------------------------------------------------------------------------- figures
def _pyplot():
    try:
        import matplotlib.pyplot as plt         # an optional extra: only the figures need it
    except ImportError:
        raise ImportError("evaluate.py plot needs matplotlib: pip install matplotlib") from None
    plt.switch_backend("Agg")                   # files only, no display
    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "axes.ymargin": 0.12})
    return plt


def plot_results(specs, reference=None):
    """Strict pass@k against k per dataset (--samples > 1; baselines, --prompt instruct/draftgen, dashed), then pass@1
    per variant per dataset (greedy): mean ± std over seeds, every seed a point, Welch's p against `reference`."""
    plt, groups = _pyplot(), load_groups(specs)
    if reference is not None and reference not in groups:
        raise ValueError(f"--reference {reference!r} is none of the labels {list(groups)}")
    color = {label: f"C{i % 10}" for i, label in enumerate(groups)}                        # one per label
    panel = lambda r: (value(r, "samples") == 1, os.path.splitext(os.path.basename(value(r, "data")))[0])
    panels = sorted({panel(r) for rs in groups.values() for r in rs})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False, layout="constrained")
    for ax, (greedy, data) in zip(axes[0], panels):
        series = {label: mine for label, rs in groups.items()
                  if (mine := [r for r in rs if panel(r) == (greedy, data)])}
        if greedy:
            pass1 = {label: [100 * value(r, "strict.pass@1") for r in rs] for label, rs in series.items()}
            for x, (label, ys) in enumerate(pass1.items()):
                ax.scatter(x + np.linspace(-0.15, 0.15, len(ys) + 2)[1:-1], ys, s=14, alpha=0.6, color=color[label])
                ax.errorbar(x, np.mean(ys), yerr=np.std(ys, ddof=1) if len(ys) > 1 else 0, fmt="_k", ms=22, capsize=5)
                if label != reference and min(len(ys), len(pass1.get(reference, []))) > 1:
                    ax.annotate(f"p = {welch_t_test(ys, pass1[reference])[1]:.2g}", (x, max(ys)), xytext=(0, 8),
                                textcoords="offset points", ha="center")
            ax.set_xticks(range(len(pass1)), list(pass1), rotation=20, ha="right")
            ax.set(ylabel="strict pass@1 (%)", title=f"{data}: pass@1, mean ± std over seeds"
                   + (f"\nWelch's p vs {reference}" if reference in pass1 else ""), xlim=(-0.5, len(pass1) - 0.5))
            continue
        for label, rs in series.items():
            ks = sorted(set.intersection(*({int(k.split("@")[1]) for k in value(r, "strict")} for r in rs)))
            ys = np.array([[100 * r["strict"][f"pass@{k}"] for k in ks] for r in rs])       # [seeds, K]
            ax.plot(ks, ys.mean(0), "--" if rs[0].get("prompt") in ("instruct", "draftgen") else "-", marker="o",
                    ms=3, color=color[label], label=label + (f" ({len(rs)} seeds, min-max)" if len(rs) > 1 else ""))
            ax.fill_between(ks, ys.min(0), ys.max(0), color=color[label], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="k", ylabel="strict pass@k (%)", title=f"{data}: pass@k")
        ax.legend()
    return fig


def plot_metrics(run_dirs, window=20):
    """The training-curves figure of runs/NAME/metrics.jsonl, one line per run, each a trailing moving average over
    `window` steps; skipped (non-finite) steps are left out, and so are the no-draft runs' null draft metrics."""
    plt, name = _pyplot(), lambda d: os.path.basename(os.path.normpath(d))
    runs = {name(d): load_jsonl(os.path.join(d, "metrics.jsonl"), ("step",)) for d in run_dirs}
    keys = [k for k in ("reward", "completion_length", "frac_reward_zero_std", "entropy", "grad_norm",
                        "draft_answer_rate", "gold_answer_rate") if any(r.get(k) is not None for rs in runs.values()
                                                                        for r in rs)]
    fig, axes = plt.subplots(2, 4, figsize=(20, 7.2), layout="constrained")
    for ax, key in zip(axes.flat, keys):
        ax.xaxis.get_major_locator().set_params(integer=True)      # steps are whole numbers
        for label, rs in runs.items():
            points = [(r["step"], r[key]) for r in rs if r.get(key) is not None and math.isfinite(r[key])]
            steps, ys = zip(*points) if points else ((), ())
            ax.plot(steps, [statistics.mean(ys[max(0, i - window + 1):i + 1]) for i in range(len(ys))], label=label)
        ax.set(title=f"{key} (moving average, {window} steps)", xlabel="step")
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend()
    return fig


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("compare", "plot"):
        ap = Parser(prog=f"evaluate.py {argv[0]}", description="seed statistics, or figures")
        ap.add_argument("specs", nargs="+", help="LABEL=a.json[,b.json...] (repeats pool); plot --metrics: run dirs")
        ap.add_argument("--metric", default="strict.pass@1", help="compare: dotted key into each result JSON")
        ap.add_argument("--output", required=argv[0] == "plot", help="plot: the figure file (.png, .pdf, .svg)")
        ap.add_argument("--reference", default=None, help="plot: the label that Welch's p is taken against")
        ap.add_argument("--metrics", action="store_true", help="plot: training curves of runs/NAME/metrics.jsonl")
        ap.add_argument("--smooth", type=COUNT, default=20, help="plot --metrics: moving-average window in steps")
        a = ap.parse_args(argv[1:])
        if argv[0] == "compare":
            return compare(a.specs, a.metric)
        fig = plot_metrics(a.specs, a.smooth) if a.metrics else plot_results(a.specs, a.reference)
        return fig.savefig(a.output, dpi=120)
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--model", default="mistralai/Mathstral-7B-v0.1", help="base model: hub id, local dir, or 'tiny'")
    a("--adapter", default=None, help="a PEFT-format LoRA directory (ours, PEFT's, Unsloth's)")
    a("--data", default=os.path.join(DATA, "math500.jsonl"), help="problems JSONL (math500, aime2025, ...)")
    a("--output", default="results.json", help="summary JSON; per-sample records go to OUTPUT.records.jsonl")
    a("--prompt", default="nodraft", choices=sorted(PROMPTS), help="nodraft (Thinking: N/A), instruct, draftgen")
    a("--limit", type=COUNT, default=None, help="only the first N problems")
    a("--samples", type=COUNT, default=1, help="n samples per problem (1 = greedy pass@1)")
    a("--k", default=None, help="comma-separated k for pass@k/maj@k, e.g. 1,2,4,8 (default 1)")
    a("--temperature", type=NONNEGATIVE, default=None, help="0 = greedy (default with --samples 1), else 0.6")
    a("--top-p", type=FRACTION, default=0.95, help="nucleus top_p for sampling (paper: 0.95)")
    a("--max-new-tokens", type=COUNT, default=4096, help="generation cap (paper: 4096)")
    a("--seed", type=SEED, default=0, help="sampling seed")
    a("--batch-size", type=COUNT, default=64, help="sequences decoded together (samples do not depend on it)")
    a("--cuda-graphs", action="store_true", help="replay each decode step as a CUDA graph")
    a("--no-stop", action="store_true", help="do not stop at '\\n\\nProblem:' / '\\nProblem:'")
    a("--trust-remote-code", action="store_true", help="allow model repos with custom code (off by default)")
    a("--report-to", default="none", choices=("none", "wandb", "tensorboard"), help="the summary to a tracker too")
    a("--run-name", default=None, help="the tracker's name for the evaluation (default: --output's file name)")
    args = ap.parse_args(argv)
    if args.temperature is None:
        args.temperature = 0.0 if args.samples == 1 else 0.6
    return run(args)


if __name__ == "__main__":
    from generation import run_main          # torch is imported only now
    run_main(main)
