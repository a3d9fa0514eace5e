"""The suite's own mutation check: small wrong changes to the method, each of which the suite must
catch. Not a test module (pytest does not collect it); it runs from any folder:

  python tests/mutants.py              # every mutant against the whole suite; exit 1 if one lives
  python tests/mutants.py --list       # the mutants, one a line (each checked to apply)
  python tests/mutants.py --only NAME [NAME ...]   # some of them
  python tests/mutants.py --fast       # each against its `first` files alone (quick iteration)

For each mutant: the working tree's files (git ls-files, untracked ones included, ignored ones
not) are copied to a temporary folder, the change is applied there (its original text must occur
exactly once: a stale mutant is an error, not a pass), and `python -m pytest -x -q -p
no:cacheprovider` runs over every test file, the mutant's `first` files first (they usually kill
it within seconds; the rest still run if they do not). Before the mutants, the unmutated suite
must pass the same way. A mutant is killed when pytest fails; the first failing test is reported.
Each mutant is a data row, so one is re-pointed by editing its `original` and `replacement` when
the code moves.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutant(NamedTuple):
    name: str
    file: str
    original: str
    replacement: str
    description: str
    first: tuple = ()         # test files likely to kill it, run before the others


MUTANTS = [
    # -- sampling
    Mutant("temperature-inverted", "generation.py",
           "logits = logits.float() / temperature",
           "logits = logits.float() * temperature",
           "the sampler multiplies the logits by T instead of dividing",
           ("test_sampling_flags.py",)),
    Mutant("top-p-ignored", "generation.py", "    if top_p < 1.0:\n", "    if False:\n",
           "the sampler never applies the nucleus", ("test_sampling_flags.py",)),
    Mutant("top-p-one-short", "generation.py",
           "before = sorted_probs.cumsum(dim=-1) - sorted_probs",
           "before = sorted_probs.cumsum(dim=-1)",
           "the nucleus loses the token that crosses top_p", ("test_sampling_flags.py",)),
    Mutant("grpo-temperature-dropped", "grpo.py",
           "args.temperature, args.top_p, args.rollout_batch_size,",
           "1.0, args.top_p, args.rollout_batch_size,",
           "rollouts sample at T = 1 whatever --temperature says", ("test_sampling_flags.py",)),
    Mutant("grpo-top-p-dropped", "grpo.py",
           "args.temperature, args.top_p, args.rollout_batch_size,",
           "args.temperature, 1.0, args.rollout_batch_size,",
           "rollouts ignore --top-p", ("test_sampling_flags.py",)),
    Mutant("evaluate-temperature-dropped", "evaluate.py",
           "max_new_tokens=args.max_new_tokens, temperature=args.temperature,",
           "max_new_tokens=args.max_new_tokens, temperature=0.6 if args.temperature else 0.0,",
           "evaluation samples at 0.6 whatever --temperature says", ("test_sampling_flags.py",)),
    Mutant("drafts-temperature-dropped", "drafts.py",
           "temperature=args.temperature, top_p=args.top_p,",
           "temperature=0.8, top_p=args.top_p,",
           "drafts sample at 0.8 whatever --temperature says", ("test_sampling_flags.py",)),
    # -- LoRA
    Mutant("lora-scale-2", "lora.py", "self.scaling = alpha / r", "self.scaling = 2.0",
           "a new adapter's scale is 2 whatever r and alpha are",
           ("test_peft_compat.py", "test_lora.py")),
    Mutant("lora-load-scale-2", "lora.py", 'm.scaling = cfg["lora_alpha"] / cfg["r"]',
           "m.scaling = 2.0", "a loaded adapter's scale is 2 whatever its file says",
           ("test_peft_compat.py", "test_lora.py")),
    Mutant("lora-merge-scale-2", "lora.py",
           "return (self.lora_B.weight @ self.lora_A.weight) * self.scaling",
           "return (self.lora_B.weight @ self.lora_A.weight) * 2.0",
           "merging folds B A in at scale 2", ("test_lora.py",)),
    # -- data order
    Mutant("step-rows-same-prompts", "grpo.py",
           "positions = range((step - 1) * batch, step * batch)",
           "positions = range(0, batch)",
           "every step serves the same prompts", ("test_training_step.py",)),
    Mutant("step-rows-same-order", "grpo.py", "manual_seed(seed * 100_003 + epoch)",
           "manual_seed(seed * 100_003)", "every epoch in the same order",
           ("test_training_step.py",)),
    Mutant("step-rows-seed-ignored", "grpo.py", "manual_seed(seed * 100_003 + epoch)",
           "manual_seed(epoch)", "the data order ignores --seed", ("test_training_step.py",)),
    # -- the update
    Mutant("clip-removed", "grpo.py", "clip_grad_norm_(params, args.max_grad_norm)",
           'clip_grad_norm_(params, float("inf"))',
           "no gradient clipping (the norm is still measured and logged)",
           ("test_training_step.py",)),
    Mutant("adamw-beta2", "grpo.py", "betas = (args.beta1, args.beta2)",
           "betas = (args.beta1, 0.999)", "AdamW's beta2 at torch's default 0.999",
           ("test_training_step.py",)),
    Mutant("adamw-beta1-default", "grpo.py", '("--beta1", 0.9,', '("--beta1", 0.8,',
           "--beta1's default is not the paper's 0.9", ("test_training_step.py",)),
    Mutant("adamw-weight-decay", "grpo.py", "weight_decay=args.weight_decay)",
           "weight_decay=0.0)", "no weight decay", ("test_training_step.py",)),
    Mutant("adamw-eps", "grpo.py", "eps=1e-8,", "eps=1e-6,", "AdamW's eps 1e-6",
           ("test_training_step.py",)),
    Mutant("micro-batch-budget-ignored", "grpo.py",
           "if current and (len(current) + 1) * lengths[current[0]] > budget:",
           "if False:", "one micro-batch whatever --micro-batch-tokens says",
           ("test_properties.py", "test_training_step.py")),
    Mutant("micro-batch-one-over", "grpo.py",
           "if current and (len(current) + 1) * lengths[current[0]] > budget:",
           "if current and len(current) * lengths[current[0]] > budget:",
           "a micro-batch may take one row more than the budget holds",
           ("test_properties.py", "test_training_step.py")),
    Mutant("loss-per-sequence-length", "grpo.py",
           "return -(per_token * weights).sum() / normaliser",
           "return -((per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1)).sum() / "
           "normaliser",
           "vanilla GRPO: each completion's loss divided by its own length, not L_max",
           ("test_training_step.py", "test_grpo.py")),
    Mutant("loss-normaliser-micro-batch", "grpo.py",
           "                                    normaliser, clip_eps)",
           "                                    mb.ids.numel(), clip_eps)",
           "each micro-batch divided by its own size again, not the batch's B G L_max",
           ("test_training_step.py", "test_grpo.py")),
    Mutant("loss-normaliser-constant", "grpo.py", "normaliser = B * G * args.max_new_tokens",
           "normaliser = B * args.max_new_tokens", "the normaliser B L_max instead of B G L_max",
           ("test_training_step.py", "test_grpo.py")),
    Mutant("next-token-shift", "generation.py",
           "return torch.cat([first, own], 1)",
           "return out.last_hidden_state",
           "position t scores token t with the state that has read it",
           ("test_training_step.py", "test_grpo.py")),
    Mutant("advantages-std", "grpo.py", "return rewards - rewards.mean(dim=1, keepdim=True)",
           "return (rewards - rewards.mean(dim=1, keepdim=True)) / "
           "(rewards.std(dim=1, keepdim=True) + 1e-4)",
           "advantages divided by the group's std (vanilla GRPO)",
           ("test_grpo.py", "test_training_step.py")),
    Mutant("resume-start-step", "runs.py",
           '        print(f"resumed from {path}")\n        return step\n',
           '        print(f"resumed from {path}")\n        return step + 1\n',
           "--resume starts one step after its checkpoint's",
           ("test_bad_input.py", "test_grpo.py")),
    # -- what the sampler saw, the engine, stop signals
    Mutant("sampler-logprob-unnormalised", "generation.py",
           "    probs = probs / probs.sum(dim=-1, keepdim=True)  # what the race drew from",
           "    probs = probs  # what the race drew from",
           "a token's log-prob taken before the nucleus is renormalised",
           ("test_generation.py",)),
    Mutant("importance-cap-ignored", "grpo.py",
           "weights = weights * ratio.clamp(max=cap)",
           "weights = weights * ratio.clamp(max=cap) ** 0",
           "--importance-sampling-cap reweights nothing", ("test_grpo.py",)),
    Mutant("update-attention-sees-ahead", "generation.py",
           "visible(pos, pos[P:], sliding_window)", "visible(pos, pos[P:] + 1, sliding_window)",
           "in the update a completion token attends to the token after it",
           ("test_generation.py", "test_grpo.py")),
    Mutant("compaction-without-shrinking", "generation.py",
           "    if len(keep) * G2 > COMPACT_AT * B * G:\n", "    if False:\n",
           "finished rows leave the batch at every look, even when it does not shrink",
           ("test_generation.py",)),
    Mutant("update-attention-no-causal", "generation.py",
           "    causal = causal_lower_right(T, P + T)", "    causal = None",
           "in the update (no sliding window) a completion token attends to every token",
           ("test_generation.py", "test_grpo.py")),
    Mutant("deterministic-ignored", "grpo.py", "    torch.use_deterministic_algorithms(True)",
           "    torch.use_deterministic_algorithms(False)",
           "--deterministic leaves non-deterministic kernels allowed", ("test_grpo.py",)),
    Mutant("graph-check-blind", "extras/graphs.py",
           "        if not (same and diff <= 1e-2):\n", "        if False:\n",
           "CUDA graphs trusted whatever they decode", ("test_generation.py",)),
    Mutant("graph-key-without-tensors", "extras/graphs.py",
           "tensors = tuple((t.data_ptr(), t.shape, t.stride(), t.dtype) for t in fields)",
           "tensors = ()",
           "a graph keyed by the width alone is replayed on other shapes", ("test_generation.py",)),
    Mutant("graph-failure-kills-the-run", "extras/graphs.py",
           "        except Exception as e:  # an OOM",
           "        except KeyError as e:  # an OOM",
           "a capture that fails after the check ends the run", ("test_generation.py",)),
    Mutant("graphs-unbounded", "extras/graphs.py",
           "        if len(self.graphs) > MAX_GRAPHS:\n", "        if False:\n",
           "graphs are never dropped", ("test_generation.py",)),
    Mutant("decode-window-ignored", "generation.py",
           "    if sliding_window:\n        unseen = ~rollout.visible(width, sliding_window)",
           "    if False:\n        unseen = ~rollout.visible(width, sliding_window)",
           "a decode step's layers ignore their sliding windows", ("test_generation.py",)),
    Mutant("stop-string-across-looks", "generation.py",
           "lo = max(0, start - STOP_LOOKBACK)", "lo = start",
           "a stop string that began before the look's new tokens is missed",
           ("test_generation.py",)),
    Mutant("stop-string-end-ignored", "generation.py",
           "            end = ends.get(r, written)", "            end = written",
           "a row that meets a stop string keeps its tokens after it", ("test_generation.py",)),
    Mutant("stop-signal-ends-the-step", "grpo.py",
           "            if any(gather(bool(signals))):  # every process drops the step",
           "            if False:  # every process drops the step",
           "a stop signal before the optimizer step finishes the step instead of dropping it",
           ("test_bad_input.py",)),
    # -- a run's folder, the stop it leaves, and the scripts' set-up
    Mutant("stop-leaves-no-marker", "runs.py",
           "    if distributed()[0] == 0:\n        with writing(args.output_dir), open(",
           "    if False:\n        with writing(args.output_dir), open(",
           "a stop on a signal leaves no `stopped` file (torchrun's exit 1 is not requeued)",
           ("test_bad_input.py", "test_distributed.py")),
    Mutant("stop-marker-kept", "runs.py",
           "            os.remove(os.path.join(args.output_dir, STOPPED))",
           "            os.path.join(args.output_dir, STOPPED)",
           "a resumed run keeps the `stopped` file of the stop before", ("test_bad_input.py",)),
    Mutant("run-folder-checked-after-the-model", "grpo.py",
           "    check_run_folder(args)  # a run there already",
           "    # check_run_folder(args)  # a run there already",
           "grpo.main checks the run folder and --resume's flags only after the model loads",
           ("test_bad_input.py",)),
    Mutant("resume-flags-unchecked", "runs.py", "        if differ:\n", "        if False:\n",
           "a resume with flags other than the checkpoint's goes on", ("test_bad_input.py",)),
    Mutant("group-of-one", "extras/cli.py", "GROUP = number(int, lambda x: x >= 2,",
           "GROUP = number(int, lambda x: x >= 1,", "--num-generations 1 is accepted",
           ("test_bad_input.py",)),
    Mutant("adapter-base-ignored", "evaluate.py",
           'args.model = args.model or base or "mistralai/Mathstral-7B-v0.1"',
           'args.model = args.model or "mistralai/Mathstral-7B-v0.1"',
           "evaluate.py --adapter without --model loads Mathstral, not the adapter's base model",
           ("test_evaluate.py",)),
    Mutant("adapter-base-unchecked", "evaluate.py",
           "    if args.model and base and name(args.model) != name(base):\n",
           "    if False:\n",
           "--model and the adapter's base model may differ", ("test_evaluate.py",)),
    Mutant("collect-skips-silently", "tests/conftest.py",
           "    if config.option.collectonly and UNCOLLECTED:\n", "    if False:\n",
           "a test file that does not collect drops from tests/collected.txt without a word",
           ("test_collected.py",)),
    Mutant("bench-records-by-default", "bench/__init__.py",
           "args.out = args.out or (RESULTS if args.record else LATEST)",
           "args.out = args.out or RESULTS",
           "bench.py overwrites the README's figures whatever its settings",
           ("test_pipeline.py",)),
    # -- evaluation
    Mutant("pass-at-k-off-by-one", "evaluate.py", "for i in range(n - c + 1, n + 1))",
           "for i in range(n - c + 2, n + 1))", "pass@k's product misses a factor",
           ("test_summary.py", "test_evaluate.py")),
    Mutant("summary-lenient-is-strict", "evaluate.py",
           'correct = [sum(x[mode] for x in s) for s in samples]',
           'correct = [sum(x["strict"] for x in s) for s in samples]',
           "lenient pass@k counts the strict grades", ("test_summary.py",)),
    Mutant("summary-extra-samples", "evaluate.py",
           'samples = [by_id[r["id"]][:n] for r in problems]',
           'samples = [by_id[r["id"]] for r in problems]',
           "pass@k counts samples beyond the n every problem has", ("test_summary.py",)),
    Mutant("avg-at-n-lenient", "evaluate.py",
           'accuracy = [statistics.mean(x["strict"] for x in s) for s in samples]',
           'accuracy = [statistics.mean(x["lenient"] for x in s) for s in samples]',
           "avg@n from the lenient grades", ("test_summary.py",)),
    Mutant("maj-tie-latest", "evaluate.py", "winner = votes.most_common(1)[0][0]",
           "winner = max(votes, key=lambda a: (votes[a], list(votes).index(a)))",
           "a tied vote goes to the latest answer, not the earliest", ("test_summary.py",)),
    Mutant("maj-none-votes", "evaluate.py",
           "votes = Counter(keys[i] for i in subset if keys[i] is not None)",
           "votes = Counter(keys[i] for i in subset)",
           "samples without an answer vote (as one answer)", ("test_summary.py",)),
    Mutant("maj-subsets-sorted", "evaluate.py",
           "[rng.sample(range(n), k) for _ in range(trials)]",
           "[sorted(rng.sample(range(n), k)) for _ in range(trials)]",
           "a subset's tie goes to its lowest sample number, not to the one drawn first",
           ("test_evaluate.py", "test_summary.py")),
    Mutant("maj-200-subsets", "evaluate.py", "def maj_at_k(keys, correct, k, rng, trials=100):",
           "def maj_at_k(keys, correct, k, rng, trials=200):",
           "maj@k over 200 subsets, not the author's 100", ("test_summary.py",)),
    Mutant("maj-seed-0", "evaluate.py", 'rng, out["maj"] = random.Random(42), {}',
           'rng, out["maj"] = random.Random(0), {}', "maj@k's subsets seeded 0, not 42",
           ("test_summary.py",)),
    Mutant("maj-1-estimated", "evaluate.py", 'out["strict"]["pass@1"] if k == 1 else',
           'out["strict"]["pass@1"] if k == 0 else',
           "maj@1 estimated over random single samples, not pass@1", ("test_summary.py",)),
    Mutant("maj-equivalent-by-default", "evaluate.py",
           'def summarize(rows, records, ks, vote="exact"):',
           'def summarize(rows, records, ks, vote="equivalent"):',
           "answers the checker equates vote together by default (ours, not the author's)",
           ("test_summary.py",)),
    Mutant("stops-in-sampling-runs", "evaluate.py",
           'stop = args.stop == "always" or args.stop == "greedy" and args.temperature == 0',
           'stop = args.stop != "never"',
           "sampling runs stop at 'Problem:' too", ("test_evaluate.py",)),
    Mutant("k-default-without-n", "evaluate.py",
           "ks = args.k or [2 ** i for i in range(n.bit_length())] + ([n] if n & (n - 1) else [])",
           "ks = args.k or [2 ** i for i in range(n.bit_length())]",
           "the default k leaves out n when n is not a power of two", ("test_evaluate.py",)),
    # -- the author's extractions
    Mutant("boxed-unclosed-none", "reward.py",
           "the scan ends, the box before wins\n                return found",
           "the scan ends, the box before wins\n                return None",
           "a completion cut inside its last box has no answer", ("test_reward.py",)),
    Mutant("boxed-first-wins", "reward.py",
           "found, at = text[at + 1:m.start()].strip(), m.end()",
           "found, at = found or text[at + 1:m.start()].strip(), m.end()",
           "the first box wins, not the last", ("test_reward.py",)),
    Mutant("boxed-resumes-at-once", "reward.py", "            at += 1           # the author's",
           "            at += 0           # the author's",
           "after `\\boxed` + another character the scan resumes at once (the author's moves "
           "one on)", ("test_reward.py",)),
    Mutant("boxed-bare-without-space", "reward.py", r'_BARE = re.compile(r"[ \t]+(',
           r'_BARE = re.compile(r"[ \t]*(', "`\\boxed5` is a box", ("test_reward.py",)),
    Mutant("fence-unclosed-deleted", "reward.py", 'text = re.sub(r"```.*?```", "",',
           'text = re.sub(r"```.*?(?:```|$)", "",',
           "an unclosed code fence deletes the rest of the text", ("test_reward.py",)),
    Mutant("answer-is-whole-decimal", "reward.py",
           r'\$?([^\n.$]+?)\$?(?=[.\n]|$)", re.I)' + "\n_ANSWER_EQ",
           r'\$?([^\n$]+?)\$?(?=\.\s|\.$|\n|$)", re.I)' + "\n_ANSWER_EQ",
           "'The answer is 0.6.' gives 0.6 (the author's gives 0)", ("test_reward.py",)),
    Mutant("answer-colon-with-is", "reward.py",
           "said = _ANSWER_IS.findall(text) or _ANSWER_EQ.findall(text)",
           "said = _ANSWER_IS.findall(text) + _ANSWER_EQ.findall(text)",
           "'answer: X' counts even when an 'answer is X' exists", ("test_reward.py",)),
    Mutant("answer-is-first", "reward.py", "return (var[1] if var else said[-1]).strip()",
           "return (var[1] if var else said[0]).strip()",
           "the first 'answer is X' wins, not the last", ("test_reward.py",)),
    Mutant("answer-keeps-variable", "reward.py",
           r'var = re.fullmatch(r"[a-zA-Z]\s*=\s*(.+)", said[-1].strip())', "var = None",
           "'answer is x = 4' gives 'x = 4'", ("test_reward.py",)),
    Mutant("math-ranked-by-start", "reward.py", "ends = [(m.end(), ", "ends = [(m.start(), ",
           "the math candidate that starts last wins, not the one that ends last",
           ("test_reward.py",)),
    Mutant("math-tie-first-kind", "reward.py",
           "sorted(ends, key=lambda e: e[0])[-1][1]", "max(ends, key=lambda e: e[0])[1]",
           "a tie in where candidates end goes to the earlier kind ($x = 5$ gives 5)",
           ("test_reward.py",)),
    # -- the universe, the derangement, the pool as released
    Mutant("derangement-neighbour", "drafts.py",
           "j = next((j for j in range(n) if j != i and perm[j] != i and perm[i] != j), i)",
           "j = (i + 1) % n", "a fixed point swaps with its neighbour", ("test_drafts.py",)),
    Mutant("derangement-rechecks", "drafts.py",
           "for i in [i for i in range(n) if perm[i] == i]:",
           "for i in (i for i in range(n) if perm[i] == i):",
           "a fixed point that an earlier swap repaired is skipped", ("test_drafts.py",)),
    Mutant("universe-drops-empty-gold", "drafts.py", 'and r.get("split") != "math500"]',
           'and r.get("split") != "math500" and r["answer"].strip()]',
           "the two problems with an empty gold are dropped (8,886)", ("test_drafts.py",)),
    Mutant("universe-keeps-math500", "drafts.py", 'and r.get("split") != "math500"]',
           "and True]", "MATH-500 problems (split math500) are trained on", ("test_drafts.py",)),
    Mutant("exclude-by-id", "grpo.py",
           'excluded = {r["problem"] for r in load_jsonl(args.exclude)}',
           'excluded = {r["id"] for r in load_jsonl(args.exclude)}',
           "--exclude matches ids, which never equal problem texts: nothing is excluded",
           ("test_drafts.py",)),
    Mutant("import-order-ignored", "extras/pool.py",
           "order = problem_order(records, args.order) if args.order else range(len(records))",
           "order = range(len(records))", "extras.pool import --order keeps the records' order",
           ("test_drafts.py",)),
    # -- the first command's table (extras/demo.py)
    Mutant("demo-halves", "extras/demo.py", "n = max(1, len(values) // 3)",
           "n = max(1, len(values) // 2)", "the table's 'thirds' are halves", ("test_demo.py",)),
    Mutant("demo-rate-is-gold", "extras/demo.py",
           'rates = [m["draft_answer_rate"] for m in metrics]',
           'rates = [m["gold_answer_rate"] for m in metrics]',
           "the draft_answer_rate column shows the gold answer's rate", ("test_demo.py",)),
    Mutant("demo-trained-is-base", "extras/demo.py",
           'evaluate_held_out(variant, "--adapter", adapter)',
           "evaluate_held_out(variant)", "a variant's 'trained' evaluation runs the base model",
           ("test_demo.py",)),
    Mutant("demo-threads-kept", "extras/demo.py",
           "        torch.set_num_threads(1)\n    try:", "        pass\n    try:",
           "the scripts run on all threads in the demo: pasted with OMP_NUM_THREADS=1, they differ",
           ("test_demo.py",)),
    # -- the answer checker
    Mutant("normalize-raises", "reward.py",
           r'parts = [x for x in s.split("\\approx") if x] or [""]',
           r'parts = [x for x in s.split("\\approx") if x]',
           "normalize raises on answers that normalise to nothing (is_equiv's catch-all hides it; "
           "maj@k's vote calls normalize unguarded)", ("test_properties.py",)),
    Mutant("points-in-hash-order", "reward.py", "for v in sorted(names)} for k in range(4)]",
           "for v in names} for k in range(4)]",
           "algebraic answers compared at points that depend on the process's string hashing",
           ("test_reward.py",)),
    # -- bench.py cost's arithmetic and bench.py gpu's guards
    Mutant("cost-kernel-time-dropped", "bench/cost.py",
           "gpu_s += aten.kernels * a.kernel_us * 1e-6", "gpu_s += 0.0",
           "a replayed decode step costs its bytes alone, not its kernels' own time",
           ("test_bench.py",)),
    Mutant("cost-scores-dropped", "bench/cost.py",
           '"scores": block.rows * m.heads * m.layers * keys * SCORE_BYTES,', '"scores": 0,',
           "the decode score path's bytes are left out", ("test_bench.py",)),
    Mutant("cost-width-unrounded", "bench/cost.py",
           "return min(cap, generation.WIDTH_STEP * math.ceil((t + 1) / generation.WIDTH_STEP))",
           "return min(cap, t + generation.CHECK_EVERY)",
           "a decode step reads its own K/V to its position, not to the width's multiple of 128",
           ("test_bench.py",)),
    Mutant("cost-prompt-unpadded", "bench/cost.py", "    return generation.bucket(n)",
           "    return n", "the prompts' K/V priced at their length, not the buffer's",
           ("test_bench.py",)),
    Mutant("cost-no-compaction", "bench/cost.py",
           "if len(going) * G2 <= generation.COMPACT_AT * rows:", "if False:",
           "finished rows never leave the batch: no one-row tail", ("test_bench.py",)),
    Mutant("gpu-budget-ignored", "bench/gpu.py", "elif left < BUDGET.get(key, 0):",
           "elif False:", "bench.py gpu runs a section that its time left cannot fit",
           ("test_pipeline.py",)),
    Mutant("gpu-missing-ignored", "bench/gpu.py", "    if missing:\n", "    if False:\n",
           "bench.py gpu runs a section without what it needs", ("test_pipeline.py",)),
]


def files_to_copy():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def suite_files(first=()):
    """Every test file, `first` before the others."""
    names = sorted(f for f in os.listdir(os.path.join(ROOT, "tests"))
                   if re.fullmatch(r"test_.*\.py", f))
    missing = [f for f in first if f not in names]
    if missing:
        raise SystemExit(f"error: no such test file(s) {missing}")
    return [f"tests/{f}" for f in [*first, *(f for f in names if f not in first)]]


def mutated(mutant, folder=ROOT):
    """mutant.file's text under `folder` with the change applied; its original text must occur
    there exactly once."""
    with open(os.path.join(folder, mutant.file), encoding="utf-8") as f:
        text = f.read()
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(f"error: mutant {mutant.name}: its original text occurs {count} times in "
                         f"{mutant.file} (must be once): re-point it\n  {mutant.original!r}")
    return text.replace(mutant.original, mutant.replacement)


def run_suite(mutant, files, fast, timeout):
    """(outcome, first failing test or '', seconds) with `mutant` applied (None: the code as is)."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as folder:
        for path in files:
            os.makedirs(os.path.dirname(os.path.join(folder, path)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, path), os.path.join(folder, path))
        if mutant is not None:
            text = mutated(mutant, folder)
            with open(os.path.join(folder, mutant.file), "w", encoding="utf-8") as f:
                f.write(text)
        first = mutant.first if mutant else ()
        targets = [f"tests/{f}" for f in first] if fast and first else suite_files(first)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *targets]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.time()
        try:
            run = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed", f"(timed out after {timeout} s)", time.time() - start
        seconds = time.time() - start
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)
    if run.returncode == 0:
        return "survived", "", seconds
    if run.returncode in (1, 2) and failed:
        return "killed", failed.group(1), seconds
    tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
    return f"error (pytest exit {run.returncode})", tail, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true",
                    help="list the mutants (each checked to apply exactly once) and exit")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants alone")
    ap.add_argument("--fast", action="store_true",
                    help="each mutant against its `first` test files alone (not the whole suite)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated run (it must pass for the result to mean anything)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per suite run")
    args = ap.parse_args(argv)
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("error: two mutants share a name")
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"error: no mutant named {', '.join(unknown)} (see --list)")
        chosen = [m for m in MUTANTS if m.name in args.only]
    for m in chosen:               # a stale mutant stops the run before any suite runs
        mutated(m)
        suite_files(m.first)
    if args.list:
        for m in chosen:
            print(f"{m.name:30} {m.file:14} {m.description}")
        return 0
    files = files_to_copy()
    scope = "each mutant's first files" if args.fast else "the whole suite"
    start = time.time()
    if not args.no_baseline:
        outcome, detail, seconds = run_suite(None, files, args.fast, args.timeout)
        print(f"{'(no mutant)':30} {'passes' if outcome == 'survived' else outcome:9} "
              f"{seconds:6.0f} s  {detail}", flush=True)
        if outcome != "survived":
            print("the unmutated suite does not pass: no mutant result means anything")
            return 2
    rows = []
    for m in chosen:
        outcome, detail, seconds = run_suite(m, files, args.fast, args.timeout)
        rows.append((m, outcome))
        print(f"{m.name:30} {outcome:9} {seconds:6.0f} s  {detail}", flush=True)
    killed = sum(outcome == "killed" for _, outcome in rows)
    print(f"\n{killed} of {len(rows)} mutants killed ({scope}), "
          f"{time.time() - start:.0f} s in all")
    for m, outcome in rows:
        if outcome != "killed":
            print(f"  {outcome}: {m.name} ({m.file}: {m.description})")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
