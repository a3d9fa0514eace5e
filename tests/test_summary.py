"""evaluate.summarize on records whose counts are known, against pass@k, maj@k and avg@n computed
here exactly: 1 - C(n - c, k) / C(n, k) in fractions, majority votes counted by hand (the author's:
exact answer strings vote, samples without an answer do not, a tie goes to the earliest answer;
with --maj-vote equivalent, equivalent answers written differently vote together), and maj@k over
random subsets against the author's eval_math500_sampling.score_sampling run on these records."""
from fractions import Fraction
from math import comb
from statistics import mean

import pytest

from evaluate import summarize

N = 8
# id -> (gold, level, subject, the samples' (pred, strict, lenient), the majority votes' verdicts:
# exact strings, equivalent answers)
PROBLEMS = {
    # exact: 3 (samples 2, 3, 7) beats \frac12, 0.5 and 1/2 (one vote each). Equivalent: 1/2
    # (0, 1, 4) ties 3: the earlier, 1/2, wins
    "half": ("\\frac12", 3, "Algebra",
             [("\\frac12", 1, 1), ("0.5", 1, 1), ("3", 0, 0), ("3", 0, 0), ("1/2", 1, 1),
              (None, 0, 1), ("7", 0, 0), ("3", 0, 0)], (0, 1)),
    # four samples without an answer do not outvote 12's two
    "twelve": ("12", 4, "Algebra",
               [(None, 0, 0), (None, 0, 0), (None, 0, 0), ("12", 1, 1), ("12", 1, 1),
                ("13", 0, 0), (None, 0, 1), ("6", 0, 0)], (1, 1)),
    "none right": ("(1,2)", 5, "Geometry", [("(2,1)", 0, 0)] * 7 + [("(2,1)", 0, 1)], (0, 0)),
    "all right": ("5", 5, "Geometry",
                  [("5", 1, 1), ("5.0", 1, 1), ("05", 1, 1), ("5", 1, 1)] * 2, (1, 1)),
    # eight answers, one vote each: the earliest (right) wins. A ninth sample, right too, is
    # beyond the n = 8 every problem has, and counts nowhere.
    "spread": ("7", 3, "Number Theory",
               [(str(v), int(v == 7), int(v == 7)) for v in (7, 1, 2, 3, 4, 5, 6, 8, 7)], (1, 1)),
}
ROWS = [{"id": i, "problem": "p", "answer": gold, "level": level, "subject": subject}
        for i, (gold, level, subject, _, _) in PROBLEMS.items()]
ROWS.append({"id": "never drawn", "problem": "p", "answer": "1", "level": 3,
             "subject": "Algebra"})
RECORDS = [{"id": i, "sample": s, "pred": pred, "strict": bool(strict), "lenient": bool(lenient)}
           for i, (_, _, _, samples, _) in PROBLEMS.items()
           for s, (pred, strict, lenient) in enumerate(samples)]


def exact_pass_at_k(c, k, n=N):
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def counts(mode):
    column = {"strict": 1, "lenient": 2}[mode]
    return {i: sum(x[column] for x in samples[:N]) for i, (_, _, _, samples, _) in PROBLEMS.items()}


def test_summary_equals_the_exact_estimators():
    summary = summarize(ROWS, RECORDS, [1, 2, 4, 8, 16])   # 16 > n: left out
    assert summary["num_problems"] == 5 and summary["samples_per_problem"] == N
    for mode in ("strict", "lenient"):
        c = counts(mode)
        assert sorted(c.values()) != [0] * 5                 # known, and not all zero
        assert set(summary[mode]) == {"pass@1", "pass@2", "pass@4", "pass@8"}
        for k in (1, 2, 4, 8):
            expected = mean(exact_pass_at_k(c[i], k) for i in PROBLEMS)
            assert summary[mode][f"pass@{k}"] == pytest.approx(float(expected), abs=1e-12)
    assert counts("strict") != counts("lenient")
    assert summary["avg@n"] == pytest.approx(mean(c / N for c in counts("strict").values()))
    assert summary["maj"]["maj@8"] == mean(exact for *_, (exact, _) in PROBLEMS.values()) == 0.6
    assert summary["maj"]["maj@1"] == summary["strict"]["pass@1"]          # the author's shortcut
    assert summary["maj"]["maj@2"] == pytest.approx(0.424, abs=1e-12)      # the author's code
    accuracy = {i: c / N for i, c in counts("strict").items()}
    assert summary["by_level"]["5"] == {"n": 2, "accuracy": pytest.approx(
        (accuracy["none right"] + accuracy["all right"]) / 2)}
    assert summary["by_subject"]["Algebra"]["n"] == 2


def test_maj_at_k_is_the_authors():
    """maj@2 and maj@4 draw 100 random subsets per problem from random.Random(42), k by k and
    problem by problem: the values below are the author's score_sampling on these records (its
    math-verify replaced by our checker), run outside this repository."""
    exact = summarize(ROWS, RECORDS, [1, 2, 4, 8])["maj"]
    assert exact == pytest.approx({"maj@1": 0.35, "maj@2": 0.424, "maj@4": 0.36, "maj@8": 0.6},
                                  abs=1e-12)
    # ours: the same subsets; the author's code given answers clustered by hand (0.5 and 1/2 as
    # \frac12, 5.0 and 05 as 5)
    equivalent = summarize(ROWS, RECORDS, [1, 2, 4, 8], vote="equivalent")["maj"]
    assert equivalent == pytest.approx({"maj@1": 0.35, "maj@2": 0.424, "maj@4": 0.396,
                                        "maj@8": 0.8}, abs=1e-12)
    assert equivalent["maj@8"] == mean(eq for *_, (_, eq) in PROBLEMS.values())


@pytest.mark.parametrize("problem,vote", [("none right", 0.0), ("all right", 1.0)])
def test_maj_at_k_below_n_when_every_subset_votes_alike(problem, vote):
    """k < n averages over random k-subsets; where every answer is the same (wrong) one, or an
    equivalent right one, every subset votes alike and maj@k is exact."""
    row = [r for r in ROWS if r["id"] == problem]
    summary = summarize(row, [r for r in RECORDS if r["id"] == problem], [1, 2, 4, 8])
    assert summary["maj"] == {f"maj@{k}": vote for k in (1, 2, 4, 8)}
