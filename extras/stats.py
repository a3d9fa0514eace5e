"""Statistics across runs (`python evaluate.py compare ...`): mean ± std of a metric over each
label's result files (a label per variant, a file per seed) and Welch's t-test against the first
label, as the paper reports MATH-500 greedy pass@1 over 10 seeds. Math only: the regularised
incomplete beta for the t distribution's tail.

  python evaluate.py compare matched-wrong=results/matched-wrong-seed{0..9}.json \\
      mismatched-wrong=results/mismatched-wrong-seed{0..9}.json
"""
import functools
import math
import os
import statistics

from drafts import load_json
from extras.cli import Parser


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
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                     + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch_t_test(a, b):
    """Two-sided Welch's t-test: (t, p) with Welch-Satterthwaite degrees of freedom."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two values per group")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # two constant samples: equal, or infinitely far apart
        gap = statistics.mean(a) - statistics.mean(b)
        return (0.0, 1.0) if gap == 0 else (math.copysign(math.inf, gap), 0.0)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, betainc(df / 2, 0.5, df / (df + t * t))


def load_groups(specs):
    """['label=a.json,b.json', ...] -> {label: [result dicts]}. A repeated label pools its files:
    the shell turns `label=seed{0..9}.json` into ten words `label=seed0.json` ..., which must mean
    `label=seed0.json,...`."""
    groups = {}
    for spec in specs:
        label, _, files = spec.rpartition("=")
        for path in files.split(","):
            if not label and not os.path.exists(path):    # mismatched-wrong:a.json, say
                raise FileNotFoundError(f"{path}: no such file (name results LABEL=a.json"
                                        "[,b.json...], e.g. mismatched-wrong=a.json)")
            data = load_json(path)
            data = data if isinstance(data, list) else [data]
            if not all(isinstance(r, dict) for r in data):
                raise ValueError(f"{path}: not a result of evaluate.py "
                                 "(a JSON object, or a list of them)")
            groups.setdefault(label or files, []).extend({**r, "file": path} for r in data)
    return groups


def value(result, metric):
    """result["strict"]["pass@1"] for metric "strict.pass@1"; a missing key names the file."""
    try:
        return functools.reduce(lambda v, key: v[key], metric.split("."), result)
    except (KeyError, TypeError):
        raise KeyError(f"{result['file']}: no {metric!r}") from None


def compare(specs, metric="strict.pass@1"):
    """specs: ['label=a.json,b.json', ...]; prints mean ± std per label and Welch's t against the
    first."""
    groups = [(label, [100 * value(r, metric) for r in results])
              for label, results in load_groups(specs).items()]
    print(f"{'variant':24s} {'seeds':>5s} {metric + ' (%)':>22s} {'Δ vs first':>10s} {'t':>7s} "
          f"{'p':>8s}")
    for label, values in groups:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        line = f"{label:24s} {len(values):5d} {statistics.mean(values):14.2f} ± {sd:5.2f}"
        if (label, values) != groups[0] and len(values) > 1 and len(groups[0][1]) > 1:
            t, p = welch_t_test(values, groups[0][1])
            gap = statistics.mean(values) - statistics.mean(groups[0][1])
            line += f" {gap:+10.2f} {t:7.2f} {p:8.4f}"
        print(line)
    return groups


def main(argv):
    a = Parser(prog="evaluate.py compare", description="seed statistics").flags(
        ("--metric", "strict.pass@1", "dotted key into each result JSON"))
    a.add_argument("specs", nargs="+",
                   help="LABEL=a.json[,b.json...] (a repeated label pools its files)")
    a = a.parse_args(argv)
    return compare(a.specs, a.metric)
