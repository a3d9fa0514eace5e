"""bench.py's sections, one module per thing measured (bench.py lists them and
dispatches): grader.py, cpu.py (a GRPO step against TRL), update.py (the update, its
memory, the sampler gap, bf16 merges), rollout.py (the decode engine and the baselines
it replaced, host ops a step), sampling.py (stop strings, keyed sampling), gpu.py (the
first-GPU script), cost.py (the cost of a run by arithmetic); common.py holds what
they share (save, timing, the model shapes)."""
