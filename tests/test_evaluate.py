import copy
import json
import os
import random
from fractions import Fraction
from math import comb

import pytest

import evaluate
from evaluate import maj_at_k, pass_at_k, vote_keys
from extras import plot, stats
from extras.stats import betainc, welch_t_test


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize("n,c,k", [
    (10, 0, 1),
    (10, 10, 1),
    (10, 3, 10),
    (10, 8, 3),
    (10, 7, 3),
    (16, 1, 4),
    (256, 1, 128),
    (2048, 1, 1024),
    (2048, 5, 1024),
    (2048, 2047, 1),
    (2048, 0, 1024),
    (2048, 1000, 1024),
    (2048, 3, 1),
])
def test_pass_at_k_equals_the_exact_rational(n, c, k):
    assert abs(pass_at_k(n, c, k) - float(exact_pass_at_k(n, c, k))) < 1e-12


def test_welch_matches_reference_values():
    # references: scipy.stats.ttest_ind(a, b, equal_var=False)
    a = [71.2, 72.5, 71.9, 72.8, 71.4, 72.0, 72.3, 71.7, 72.6, 71.5]
    b = [70.1, 70.9, 70.4, 70.8, 69.9, 70.6, 70.2, 70.7, 70.3, 70.5]
    cases = [(a, b, 7.736044728618026, 1.5916747965535678e-06),
             ([1, 2, 3, 4], [2, 4, 6, 8, 10, 12], -2.713602101199873, 0.03182444378084147),
             ([0.5, 0.51, 0.49], [0.52, 0.53, 0.5, 0.55], -2.100420126042015, 0.0959962757042303)]
    for x, y, t_ref, p_ref in cases:
        t, p = welch_t_test(x, y)
        assert abs(t - t_ref) < 1e-6
        assert abs(p - p_ref) < 1e-6 * max(1, p_ref)
        assert abs(p - p_ref) / p_ref < 1e-6
    assert abs(betainc(2, 3, 0.4) - 0.5248) < 1e-12                  # I_0.4(2,3) = 0.5248 exactly


def test_majority_votes_exact_strings_or_equivalent_answers():
    preds = ["\\frac12", "0.5", "1/2", "3", "3", None]
    correct = [True, True, True, False, False, False]
    keys = vote_keys(preds)
    assert keys == preds and maj_at_k(keys, correct, 6, None) == 0.0       # 3 (twice) wins
    assert maj_at_k(keys[:3], correct[:3], 3, None) == 1.0    # a three-way tie: the first, 1/2
    assert maj_at_k([None] * 3, [False] * 3, 3, None) == 0.0                # no vote: wrong
    ours = vote_keys(preds, equivalent=True)
    assert ours == ["\\frac12"] * 3 + ["3", "3", None]
    assert maj_at_k(ours, correct, 6, None) == 1.0                         # 1/2 (three) wins
    # k < n: 100 subsets drawn by rng.sample; four different answers, so each pair ties and the
    # one drawn first wins
    rng, again = random.Random(42), random.Random(42)
    firsts = [again.sample(range(4), 2)[0] for _ in range(100)]
    assert maj_at_k(keys[:4], [True, False, False, True], 2, rng) == sum(
        i in (0, 3) for i in firsts) / 100 != 0.5


def eval_args(tmp_path, *extra):
    return ["--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "3",
            "--max-new-tokens", "12", "--output", str(tmp_path / "r.json"), *extra]


def test_sampling_run_writes_records_and_resumes_exactly(tmp_path):
    tmp_path = tmp_path / "results"  # --output's folder does not exist yet
    summary = evaluate.main(eval_args(tmp_path, "--samples", "8", "--k", "1,2,4,8"))
    assert summary["samples_per_problem"] == 8
    assert set(summary["strict"]) == {f"pass@{k}" for k in (1, 2, 4, 8)}
    assert set(summary["maj"]) == {f"maj@{k}" for k in (1, 2, 4, 8)}
    assert summary["num_problems"] == 3
    records = tmp_path / "r.json.records.jsonl"
    full = records.read_text().splitlines()
    assert len(full) == 24
    assert len({(json.loads(line)["id"], json.loads(line)["sample"]) for line in full}) == 24
    records.write_text("\n".join(full[:11]) + '\n{"id": "torn')     # interrupted inside problem 2
    again = evaluate.main(eval_args(tmp_path, "--samples", "8", "--k", "1,2,4,8"))
    assert records.read_text().splitlines() == full  # nothing lost, nothing duplicated
    assert again == summary
    # nothing of the first run is lost
    with pytest.raises(ValueError, match="another configuration"):
        evaluate.main(eval_args(tmp_path, "--samples", "8", "--k", "1,2,4,8", "--seed", "1"))
    assert records.read_text().splitlines() == full


def test_stop_strings_cut_greedy_runs_only_and_k_defaults_to_the_authors(tmp_path, monkeypatch):
    """The author's: a greedy run stops at 'Problem:'; a sampling run goes to EOS or the cap, so a
    completion that writes a new problem is graded by its last box. Every sample here is that
    completion (the engine replaced); --k defaults to 1, 2, 4, ... up to n, and n."""
    import generation
    text = " so \\boxed{5}\nProblem: next \\boxed{7}"
    ids = generation.load_tokenizer("tiny")(text, add_special_tokens=False)["input_ids"]
    stopped = []

    def engine(model, prompts, n, stop=None, **kwargs):
        stopped.append(stop is not None)
        return [[list(ids)] * len(samples) for samples in n]
    monkeypatch.setattr(generation, "generate", engine)
    preds, summaries = {}, {}
    for samples, stop in (("1", []), ("6", []), ("6", ["--stop", "always"]),
                          ("1", ["--stop", "never"])):
        out = tmp_path / f"{samples}{stop}.json"
        summaries[samples] = evaluate.main(["--model", "tiny", "--data", "data/aime2025.jsonl",
                                            "--limit", "1", "--samples", samples, *stop,
                                            "--output", str(out)])
        records = [json.loads(line) for line in open(str(out) + ".records.jsonl")]
        preds[samples, *stop] = {r["pred"] for r in records}
    assert preds == {("1",): {"5"}, ("6",): {"7"}, ("6", "--stop", "always"): {"5"},
                     ("1", "--stop", "never"): {"7"}}
    assert stopped == [True, False, True, False]
    assert set(summaries["1"]["strict"]) == {"pass@1"} and "maj" not in summaries["1"]
    assert set(summaries["6"]["maj"]) == {"maj@1", "maj@2", "maj@4", "maj@6"}


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate.main(["--model", "tiny", "--data", str(tmp_path / "nope.jsonl")])


def test_an_adapter_is_evaluated_on_the_base_model_it_names(tmp_path, tiny):
    """Without --model, the adapter's adapter_config.json's base_model_name_or_path (as PEFT's
    loaders take it), not Mathstral (offline: an error). With --model, the same model under
    another name (a hub id's last part, a local copy's folder) is taken; another model is one
    line naming both, before any model loads."""
    from lora import apply_lora, save_lora
    model = apply_lora(copy.deepcopy(tiny[0]))
    save_lora(model, tmp_path / "a", base_model_name_or_path="tiny")
    flags = ["--data", "data/aime2025.jsonl", "--limit", "1", "--max-new-tokens", "2"]
    summary = evaluate.main([*flags, "--adapter", str(tmp_path / "a"),
                             "--output", str(tmp_path / "r.json")])
    assert summary["model"] == "tiny" and summary["num_problems"] == 1
    save_lora(model, tmp_path / "b", base_model_name_or_path="/elsewhere/TINY/")
    summary = evaluate.main([*flags, "--model", "tiny", "--adapter", str(tmp_path / "b"),
                             "--output", str(tmp_path / "s.json")])
    assert summary["model"] == "tiny"
    save_lora(model, tmp_path / "c", base_model_name_or_path="mistralai/Mathstral-7B-v0.1")
    with pytest.raises(ValueError) as e:
        evaluate.main([*flags, "--model", "tiny", "--adapter", str(tmp_path / "c"),
                       "--output", str(tmp_path / "t.json")])
    assert f"--model tiny is not --adapter {tmp_path / 'c'}'s base model mistralai/" in str(e.value)
    assert not (tmp_path / "t.json.records.jsonl").exists()


def test_compare_reads_seed_files_and_prints_welch(tmp_path, capsys):
    a = [{"strict": {"pass@1": v}}
         for v in (0.712, 0.725, 0.719, 0.728, 0.714, 0.720, 0.723, 0.717, 0.726, 0.715)]
    b = [{"strict": {"pass@1": v}}
         for v in (0.701, 0.709, 0.704, 0.708, 0.699, 0.706, 0.702, 0.707, 0.703, 0.705)]
    for name, runs in (("a", a), ("b", b)):
        for i, r in enumerate(runs):
            (tmp_path / f"{name}{i}.json").write_text(json.dumps(r))
    files = lambda name: ",".join(str(tmp_path / f"{name}{i}.json") for i in range(10))
    groups = evaluate.main(["compare", f"matched-wrong={files('b')}",
                            f"mismatched-wrong={files('a')}"])
    assert [len(v) for _, v in groups] == [10, 10]
    out = capsys.readouterr().out
    assert "mismatched-wrong" in out and "+1.55" in out and "7.74" in out and "0.0000" in out


def test_compare_pools_a_repeated_label_as_the_shell_passes_brace_expansions(tmp_path, capsys):
    values = {"mw": (0.712, 0.725, 0.719, 0.728), "mtw": (0.701, 0.709, 0.704, 0.708)}
    for name, vs in values.items():
        for i, v in enumerate(vs):
            (tmp_path / f"{name}{i}.json").write_text(json.dumps({"strict": {"pass@1": v}}))
    path = lambda name, i: str(tmp_path / f"{name}{i}.json")
    # `mw=mw{0..3}.json`: 4 words
    braces = [f"{name}={path(name, i)}" for name in values for i in range(4)]
    commas = [f"{name}=" + ",".join(path(name, i) for i in range(4)) for name in values]
    assert evaluate.main(["compare", *braces]) == evaluate.main(["compare", *commas])
    by_braces, by_commas = capsys.readouterr().out.split("variant")[1:]
    assert by_braces == by_commas and [len(v) for _, v in stats.compare(commas)] == [4, 4]
    t, p = welch_t_test([100 * v for v in values["mtw"]], [100 * v for v in values["mw"]])
    assert f"{t:7.2f} {p:8.4f}" in by_braces  # one row with t and p
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        evaluate.main(["compare", f"x={tmp_path / 'bad.json'}"])
    with pytest.raises(KeyError, match="mw0.json: no 'lenient.pass@1'"):
        evaluate.main(["compare", "--metric", "lenient.pass@1", f"x={path('mw', 0)}"])
    with pytest.raises(FileNotFoundError, match=r"mw:\S+: no such file \(name results LABEL=a"):
        evaluate.main(["compare", f"mw:{path('mw', 0)}"])                     # ':' for '='


def fake_result(data, samples, curve, prompt="nodraft"):
    ks = [2 ** i for i in range(len(curve))]
    return {"data": f"data/{data}.jsonl", "prompt": prompt, "samples": samples,
            "strict": {f"pass@{k}": v for k, v in zip(ks, curve)}}


def colours(png):
    from matplotlib.image import imread
    pixels = imread(png)  # [H, W, 4] floats: it decodes
    return len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1]).tolist()})


def test_plot_results_draws_pass_at_k_and_greedy_panels(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    files = {}
    for label, base in (("mw", 0.72), ("mtw", 0.70)):
        for s in range(3):
            files.setdefault(label, []).append(tmp_path / f"{label}-greedy{s}.json")
            files[label][-1].write_text(json.dumps(fake_result("math500", 1, [base + 0.004 * s])))
    for s in range(2):
        files["mw"].append(tmp_path / f"mw-aime{s}.json")
        curve = [0.1 + s / 50, 0.2, 0.3, 0.4, 0.5]
        files["mw"][-1].write_text(json.dumps(fake_result("aime2025", 16, curve)))
    baseline = fake_result("aime2025", 16, [0.05, 0.1, 0.2, 0.3, 0.35], "instruct")
    (tmp_path / "base.json").write_text(json.dumps(baseline))
    specs = [f"mw={f}" for f in files["mw"]] + ["mtw=" + ",".join(map(str, files["mtw"])),
                                                 f"base={tmp_path / 'base.json'}"]
    fig = plot.plot_results(specs, reference="mtw")
    passk, greedy = fig.axes
    assert passk.get_title() == "aime2025: pass@k" and passk.get_xscale() == "log"
    styles = [(line.get_label(), line.get_linestyle()) for line in passk.get_lines()]
    assert styles == [("mw (2 seeds, min-max)", "-"), ("base", "--")]  # baseline dashed
    assert list(passk.get_lines()[0].get_xdata()) == [1, 2, 4, 8, 16]
    assert passk.get_lines()[0].get_ydata()[0] == pytest.approx(100 * (0.1 + 0.01))  # mean of seeds
    assert greedy.get_title().startswith("math500: pass@1") and "vs mtw" in greedy.get_title()
    p = welch_t_test([72.0, 72.4, 72.8], [70.0, 70.4, 70.8])[1]
    assert [t.get_text() for t in greedy.texts] == [f"p = {p:.2g}"]  # mw against the reference
    assert [t.get_text() for t in greedy.get_xticklabels()] == ["mw", "mtw"]
    evaluate.main(["plot", *specs, "--reference", "mtw", "--output", str(tmp_path / "fig.png")])
    assert colours(tmp_path / "fig.png") > 50                                          # not blank
    assert capsys.readouterr().out == f"wrote {tmp_path / 'fig.png'}\n"
    with pytest.raises(ValueError, match="--reference 'nope'"):
        plot.plot_results(specs, reference="nope")


def test_plot_metrics_draws_training_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for run, rate in (("mw-seed0", 0.1), ("nd-seed0", None)):
        os.makedirs(tmp_path / run)
        with open(tmp_path / run / "metrics.jsonl", "w") as f:
            for step in range(1, 41):
                row = {"step": step, "reward": step / 40, "completion_length": 100 - step,
                       "frac_reward_zero_std": 0.5, "entropy": 2 - step / 40,
                       "grad_norm": float("nan") if step == 7 else 0.1,
                       "draft_answer_rate": rate, "gold_answer_rate": rate and step / 40}
                f.write(json.dumps(row) + "\n")
    fig = plot.plot_metrics([str(tmp_path / "mw-seed0"), str(tmp_path / "nd-seed0") + "/"],
                            window=4)
    shown = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split()[0] for ax in shown] == ["reward", "completion_length",
                                                           "frac_reward_zero_std", "entropy",
                                                           "grad_norm", "draft_answer_rate",
                                                           "gold_answer_rate"]
    reward = shown[0].get_lines()[0]
    assert reward.get_label() == "mw-seed0"
    assert reward.get_ydata()[5] == pytest.approx((3 + 4 + 5 + 6) / 4 / 40)
    assert len(shown[4].get_lines()[0].get_xdata()) == 39  # the NaN step left out
    # no-draft: no draft curve
    assert [len(line.get_xdata()) for line in shown[5].get_lines()] == [40, 0]
    os.makedirs(tmp_path / "short")
    short = "".join(json.dumps({"step": s, "reward": s / 3}) + "\n" for s in (1, 2, 3))
    (tmp_path / "short" / "metrics.jsonl").write_text(short)
    fig = plot.plot_metrics([str(tmp_path / "short")])  # 3 steps: matplotlib would say 1.5
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    ticks = [float(text.replace("\u2212", "-")) for text in labels]
    assert ticks and all(t == int(t) for t in ticks)  # steps: integer ticks only
    evaluate.main(["plot", "--metrics", str(tmp_path / "mw-seed0"),
                   "--output", str(tmp_path / "curves.png")])
    assert colours(tmp_path / "curves.png") > 50
    assert capsys.readouterr().out.endswith(f"wrote {tmp_path / 'curves.png'}\n")


def test_plot_without_matplotlib_names_the_install_command(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install matplotlib"):
        evaluate.main(["plot", "--metrics", str(tmp_path), "--output", str(tmp_path / "x.png")])
