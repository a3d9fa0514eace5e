"""Benchmarks. Every performance or agreement figure in README.md and docs/ comes from
one of these commands; each faster path is measured beside the slower one it replaced,
kept in bench/ as the baseline, with a check that both compute the same thing. One
module of bench/ a thing measured; this file parses the section and dispatches.

  python bench.py grader [--math-verify] | extraction
      bench/grader.py: reward.py's agreement on tests/data/grader_cases.jsonl, its
      worst-case timings (and where math-verify, if installed, disagrees); what the
      training reward's extraction finds on 1,500 unboxed MATH solutions
  python bench.py cpu [--drafts]
      bench/cpu.py: our GRPO step vs TRL's GRPOTrainer (if installed), generate vs HF
  python bench.py update | memory | gap | merge
      bench/update.py: the prompt-once update vs whole rows (full_sequence_update), with
      a gradient check; the peak RSS of its worst micro-batch; the sampler-trainer
      log-prob gap; how much of a LoRA update a bf16 merge keeps
  python bench.py rollout --steps 3 | ops
      bench/rollout.py: the decode engine vs the one before (dynamic_generate), each
      prompt held once vs copied (copied_generate); aten ops a decode step, at 32 layers
  python bench.py stops | sampler
      bench/sampling.py: stop strings at a look, few tokens vs all; keyed sampling vs
      torch.multinomial
  python bench.py gpu --quick
      bench/gpu.py: the first-GPU checks, <= 5 minutes (without --quick, then decode by
      batch, the sampler, whole training steps: bench/gpu_long.py)
  python bench.py cost [--metrics runs/X/metrics.jsonl]
      bench/cost.py: a run's wall-clock on an H100 and an H200, by arithmetic

Each section prints its figures and writes <section>-<device>.json into bench/latest/
(not committed), or with --record into bench/results/, the figures README.md and docs/
quote, or into --out (default $OUT when that is set).
"""
import argparse
import importlib
import os

from bench.common import LATEST, RESULTS

SECTIONS = {  # section: (its module in bench/, its function)
    "grader": ("grader", "bench_grader"),
    "extraction": ("grader", "bench_extraction"),
    "cpu": ("cpu", "bench_cpu"),
    "update": ("update", "bench_update"),
    "memory": ("update", "bench_memory"),
    "memory-child": ("update", "memory_child"),
    "gap": ("update", "bench_gap"),
    "merge": ("update", "bench_merge"),
    "rollout": ("rollout", "bench_rollout"),
    "ops": ("rollout", "bench_ops"),
    "stops": ("sampling", "bench_stops"),
    "sampler": ("sampling", "bench_sampler"),
    "gpu": ("gpu", "bench_gpu"),
    "cost": ("cost", "bench_cost"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=list(SECTIONS))
    ap.add_argument("--math-verify", action="store_true",
                    help="grader: compare with math-verify if installed")
    ap.add_argument("--new-tokens", type=int, default=64,
                    help="cpu/update: tokens per rollout")
    ap.add_argument("--steps", type=int, default=6,
                    help="cpu/update: steps (the first is not timed; median of rest)")
    ap.add_argument("--drafts", action="store_true",
                    help="cpu: prompts carry a draft (another problem's solution)")
    ap.add_argument("--hidden", type=int, default=256,
                    help="cpu/update: model width (64 x 2 layers = --model tiny)")
    ap.add_argument("--layers", type=int, default=4, help="cpu/update: model depth")
    ap.add_argument("--prompt-tokens", type=int, default=400,
                    help="update: prompt length")
    ap.add_argument("--shape", default="mathstral", choices=["mathstral", "tiny"],
                    help="gpu: model shape")
    ap.add_argument("--quick", action="store_true",
                    help="gpu: the first-GPU sections only (<= 5 minutes)")
    ap.add_argument("--budget", type=float, default=None,
                    help="gpu: wall-clock seconds for the run (--quick: 285, after "
                         "~15 s of imports); a section the time left cannot fit is "
                         "skipped, saying so")
    ap.add_argument("--record", action="store_true",
                    help="write bench/results/, the figures README.md and docs/ quote "
                         "(run at their settings)")
    ap.add_argument("--out", default=os.environ.get("OUT"),
                    help="the folder of its JSON (and gpu's log); default $OUT if set, "
                         "else bench/latest/ (--record: bench/results/)")
    ap.add_argument("--metrics", default=None,
                    help="cost: a run's metrics.jsonl, whose lengths it prices")
    ap.add_argument("--mode", default="prompt_once",
                    help="memory-child: prompt_once|whole_rows")
    args = ap.parse_args(argv)
    args.out = args.out or (RESULTS if args.record else LATEST)
    return args


def main(argv=None):
    args = parse_args(argv)
    module, function = SECTIONS[args.section]
    getattr(importlib.import_module(f"bench.{module}"), function)(args)

