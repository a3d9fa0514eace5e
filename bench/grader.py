"""bench.py grader: reward.py's agreement on tests/data/grader_cases.jsonl, its worst-case
timings, and (--math-verify) where math-verify, never imported by the core, disagrees.
bench.py extraction: what the training reward's extraction finds on unboxed solutions."""
import json
import os
import statistics
import sys
import time

from bench.common import HERE, cpu_name, save
from reward import is_equiv, reward


def bench_grader(args):
    cases_path = os.path.join(HERE, "tests", "data", "grader_cases.jsonl")
    cases = [json.loads(line) for line in open(cases_path, encoding="utf-8")]
    agree, times, disagreements = 0, [], []
    for c in cases:
        t = time.perf_counter()
        if c["kind"] == "answer":
            ok = is_equiv(c["pred"], c["gold"]) == c["equal"]
        else:
            got = (reward(c["completion"], c["gold"], strict=True),
                   reward(c["completion"], c["gold"]))
            ok = got == (c["strict"], c["lenient"])
        times.append(time.perf_counter() - t)
        agree += ok
        if not ok:
            disagreements.append(c)
    sys.path.insert(0, os.path.join(HERE, "tests"))
    from test_reward import ADVERSARIAL
    adv = []
    for text in ADVERSARIAL:
        for strict in (True, False):
            t = time.perf_counter()
            reward(text, "\\frac{1}{2}", strict=strict)
            adv.append(time.perf_counter() - t)
    result = {"cases": len(cases), "agreement": agree / len(cases),
              "mean_ms": 1e3 * statistics.mean(times), "max_ms": 1e3 * max(times),
              "adversarial_mean_ms": 1e3 * statistics.mean(adv),
              "adversarial_max_ms": 1e3 * max(adv), "device": cpu_name()}
    if args.math_verify:
        math_verify_agreement(cases, result)
    print(f"grader: {agree}/{len(cases)} agree ({100 * result['agreement']:.2f}%), "
          f"mean {result['mean_ms']:.3f} ms, max {result['max_ms']:.2f} ms; "
          f"adversarial inputs: mean {result['adversarial_mean_ms']:.2f} ms, "
          f"max {result['adversarial_max_ms']:.1f} ms")
    for c in disagreements[:20]:
        print("  disagrees:", c)
    save("grader", result, args.out)


def math_verify_agreement(cases, result):
    """math-verify's agreement on the answer pairs, into result (a message if not
    installed)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        print("math-verify is not installed (pip install math-verify); skipping the comparison")
        return
    mv_agree = 0
    answers = [c for c in cases if c["kind"] == "answer"]
    for c in answers:
        try:
            mv = bool(verify(parse(f"${c['gold']}$"), parse(f"${c['pred']}$")))
        except Exception:
            mv = False
        mv_agree += mv == c["equal"]
        if mv != c["equal"]:
            verdict = "accepts" if mv else "rejects"
            print(f"  math-verify {verdict} {c['pred']!r} for {c['gold']!r}")
    result["math_verify_agreement_on_answer_pairs"] = mv_agree / len(answers)


def unboxed(text):
    """text with each \\boxed{X} replaced by X."""
    while (i := text.find("\\boxed{")) >= 0:
        depth = 0
        for j in range(i + 6, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        text = text[:i] + text[i + 7:j] + text[j + 1:]
    return text


def bench_extraction(args):
    """What each extraction finds: every 8th solution of data/math_train.jsonl (1,500), its boxes
    taken out (their content kept) and one line appended; reward 1 counted. Last, the solutions
    whole, cut inside a new box (`\\boxed{` unclosed): the strict reward."""
    from drafts import load_jsonl
    rows = load_jsonl(os.path.join(HERE, "data", "math_train.jsonl"))[::8]
    endings = {"nothing": "", "Answer = X": "\nAnswer = {}", "x = X": "\nx = {}",
               "The answer is X.": "\nThe answer is {}."}
    result = {"problems": len(rows), "device": cpu_name()}
    for label, line in endings.items():
        result[label] = int(sum(reward(unboxed(r["solution"]) + line.format(r["answer"]),
                                       r["answer"]) for r in rows))
    result["cut inside a box (strict)"] = int(sum(
        reward(r["solution"] + "\nSo \\boxed{", r["answer"], strict=True) for r in rows))
    for label, count in result.items():
        print(f"{label:28s} {count}")
    save("extraction", result, args.out)
