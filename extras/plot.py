"""Figures of evaluate.py's results and of grpo.py's runs (`python evaluate.py plot ...`):
presentation, kept out of the method's files. matplotlib is an optional extra, imported only here.

  python evaluate.py plot mw=results/mw-seed{0..9}.json mtw=results/mtw-seed{0..9}.json \\
      --reference mtw --output results/figure.png
  python evaluate.py plot --metrics runs/mismatched-wrong-seed0 runs/matched-wrong-seed0 \\
      --output curves.png
"""
import math
import os
import statistics

import numpy as np

from drafts import load_jsonl
from extras.cli import COUNT, Parser
from extras.stats import load_groups, value, welch_t_test


def _pyplot():
    try:
        import matplotlib.pyplot as plt  # an optional extra: only the figures need it
    except ImportError:
        raise ImportError("evaluate.py plot needs matplotlib: pip install matplotlib") from None
    plt.switch_backend("Agg")                   # files only, no display
    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8,
                         "axes.ymargin": 0.12})
    return plt


def plot_results(specs, reference=None):
    """Strict pass@k against k per dataset (--samples > 1; baselines, --prompt instruct/draftgen,
    dashed), then pass@1 per variant per dataset (greedy): mean ± std over seeds, every seed a
    point, Welch's p against `reference`."""
    plt, groups = _pyplot(), load_groups(specs)
    if reference is not None and reference not in groups:
        raise ValueError(f"--reference {reference!r} is none of the labels {list(groups)}")
    color = {label: f"C{i % 10}" for i, label in enumerate(groups)}  # one per label
    dataset = lambda r: os.path.splitext(os.path.basename(value(r, "data")))[0]
    panel = lambda r: (value(r, "samples") == 1, dataset(r))   # (greedy, dataset)
    panels = sorted({panel(r) for rs in groups.values() for r in rs})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False,
                             layout="constrained")
    for ax, (greedy, data) in zip(axes[0], panels):
        series = {label: mine for label, rs in groups.items()
                  if (mine := [r for r in rs if panel(r) == (greedy, data)])}
        if greedy:
            pass1 = {label: [100 * value(r, "strict.pass@1") for r in rs]
                     for label, rs in series.items()}
            for x, (label, ys) in enumerate(pass1.items()):
                ax.scatter(x + np.linspace(-0.15, 0.15, len(ys) + 2)[1:-1], ys, s=14, alpha=0.6,
                           color=color[label])
                std = np.std(ys, ddof=1) if len(ys) > 1 else 0
                ax.errorbar(x, np.mean(ys), yerr=std, fmt="_k", ms=22, capsize=5)
                if label != reference and min(len(ys), len(pass1.get(reference, []))) > 1:
                    ax.annotate(f"p = {welch_t_test(ys, pass1[reference])[1]:.2g}", (x, max(ys)),
                                xytext=(0, 8), textcoords="offset points", ha="center")
            ax.set_xticks(range(len(pass1)), list(pass1), rotation=20, ha="right")
            title = f"{data}: pass@1, mean ± std over seeds"
            title += f"\nWelch's p vs {reference}" if reference in pass1 else ""
            ax.set(ylabel="strict pass@1 (%)", title=title, xlim=(-0.5, len(pass1) - 0.5))
            continue
        for label, rs in series.items():
            # the k every seed has
            ks = sorted(set.intersection(*({int(k.split("@")[1]) for k in value(r, "strict")}
                                           for r in rs)))
            ys = np.array([[100 * r["strict"][f"pass@{k}"] for k in ks] for r in rs])  # [seeds, K]
            baseline = rs[0].get("prompt") in ("instruct", "draftgen")     # drawn dashed
            seeds = f" ({len(rs)} seeds, min-max)" if len(rs) > 1 else ""
            ax.plot(ks, ys.mean(0), "--" if baseline else "-", marker="o", ms=3,
                    color=color[label], label=label + seeds)
            ax.fill_between(ks, ys.min(0), ys.max(0), color=color[label], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="k", ylabel="strict pass@k (%)", title=f"{data}: pass@k")
        ax.legend()
    return fig


def plot_metrics(run_dirs, window=20):
    """The training-curves figure of runs/NAME/metrics.jsonl, one line per run, each a trailing
    moving average over `window` steps; skipped (non-finite) steps are left out, and so are the
    no-draft runs' null draft metrics."""
    plt, name = _pyplot(), lambda d: os.path.basename(os.path.normpath(d))
    runs = {name(d): load_jsonl(os.path.join(d, "metrics.jsonl"), ("step",)) for d in run_dirs}
    keys = [k for k in ("reward", "completion_length", "frac_reward_zero_std", "entropy",
                        "grad_norm", "draft_answer_rate", "gold_answer_rate")
            if any(r.get(k) is not None for rs in runs.values() for r in rs)]
    fig, axes = plt.subplots(2, 4, figsize=(20, 7.2), layout="constrained")
    for ax, key in zip(axes.flat, keys):
        ax.xaxis.get_major_locator().set_params(integer=True)      # steps are whole numbers
        for label, rs in runs.items():
            points = [(r["step"], r[key]) for r in rs
                      if r.get(key) is not None and math.isfinite(r[key])]
            steps, ys = zip(*points) if points else ((), ())
            average = [statistics.mean(ys[max(0, i - window + 1):i + 1]) for i in range(len(ys))]
            ax.plot(steps, average, label=label)
        ax.set(title=f"{key} (moving average, {window} steps)", xlabel="step")
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend()
    return fig


def main(argv):
    """evaluate.py plot ...: the figure of results files, or --metrics: the training curves of run
    folders."""
    a = Parser(prog="evaluate.py plot", description="figures of results files or of runs").flags(
        ("--output", "figure.png", "the figure file (.png, .pdf, .svg)"),
        ("--reference", None, "the label that Welch's p is taken against"),
        ("--metrics", False, "training curves of runs/NAME/metrics.jsonl"),
        ("--smooth", 20, "--metrics: moving-average window in steps", COUNT))
    a.add_argument("specs", nargs="+",
                   help="LABEL=a.json[,b.json...] (a repeated label pools); --metrics: run dirs")
    a = a.parse_args(argv)
    fig = plot_metrics(a.specs, a.smooth) if a.metrics else plot_results(a.specs, a.reference)
    fig.savefig(a.output, dpi=120)
    print(f"wrote {a.output}")
