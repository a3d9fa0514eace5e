"""What a grpo.py run writes and reads back besides the method: checkpoints
(atomic; the two newest with AdamW's state; resumed exactly, a damaged one
passed over), stop signals (Slurm's time limit and preemption), and the logs
(metrics.jsonl, completions.jsonl, a tracker), cut back to the checkpoint on
resume."""
import contextlib
import errno
import json
import os
import re
import shutil
import signal

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from drafts import load_json, read_resumable
from lora import load_lora, save_lora
from processes import distributed, gather
from reward import is_equiv

# ---------------------------------------------------------------------- checkpoints
# the newest checkpoints with AdamW's state: a damaged one has one before it
KEEP_OPTIMIZER = 2
# the flags a resumed run may change
FREE = {"resume", "output_dir", "max_steps", "save_every", "rollout_batch_size",
        "micro_batch_tokens", "no_cuda_graphs", "model", "data", "drafts", "exclude",
        "report_to", "run_name", "log_completions"}
# in --output-dir: why the run stopped on a signal (stopped), till it goes on
STOPPED = "stopped"


@contextlib.contextmanager
def writing(folder):
    """Writes into `folder`: a full disk is one error naming it, whichever
    library's write met it (safetensors raises no OSError)."""
    try:
        yield
    except Exception as e:
        if getattr(e, "errno", None) != errno.ENOSPC and "No space left" not in str(e):
            raise
        raise OSError(f"{folder}: the disk is full; free some space, then rerun with "
                      "--resume (the checkpoints on disk are whole)") from None


def save_checkpoint(args, step, model, optimizer):
    """step-N/: PEFT adapter + optimizer.safetensors + trainer_state.json,
    renamed into place."""
    final = os.path.join(args.output_dir, f"step-{step}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    state = optimizer.state_dict()["state"]      # {parameter index: {moment: tensor}}
    tensors = {f"state.{i}.{k}": v.contiguous().cpu()
               for i, s in state.items() for k, v in s.items()}
    with writing(args.output_dir):
        save_lora(model, tmp, base_model_name_or_path=args.model)
        save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({"step": step, "args": vars(args)}, f, indent=2)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(args.output_dir)[:-KEEP_OPTIMIZER]:
        with contextlib.suppress(FileNotFoundError):       # removed by an earlier save
            os.remove(os.path.join(args.output_dir, f"step-{old}", "optimizer.safetensors"))


def _checkpoints(output_dir):
    # step-N folders whose trainer_state.json is written: the complete ones
    return sorted(int(m.group(1)) for d in os.listdir(output_dir)
                  if (m := re.fullmatch(r"step-(\d+)", d))
                  and os.path.exists(os.path.join(output_dir, d, "trainer_state.json")))


def check_run_folder(args):
    """The checks of --output-dir and --resume that need no model, so grpo.main
    makes them before one loads: a file is not a folder; a folder that holds a
    run needs --resume; --resume's newest checkpoint must have been trained with
    these flags (its trainer_state.json says; FREE lists the flags a resume may
    change)."""
    folder = args.output_dir
    flags = vars(args)
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise ValueError(f"--output-dir {folder}: a file, not a folder")
        return
    steps = _checkpoints(folder)
    if not args.resume:
        if steps or os.path.exists(os.path.join(folder, "metrics.jsonl")):
            raise ValueError(f"{folder} already holds a run: pass --resume, "
                             "or another --output-dir")
        return
    for step in reversed(steps):
        path = os.path.join(folder, f"step-{step}")
        try:                            # one that does not read back: the one before it
            saved = load_json(os.path.join(path, "trainer_state.json"))["args"]
        except Exception:
            continue
        differ = [f"--{k.replace('_', '-')} {saved[k]}" for k in saved
                  if k in flags and k not in FREE and saved[k] != flags[k]]
        if differ:
            raise ValueError(f"{path} was trained with {', '.join(differ)}: "
                             "resume with the same flags")
        return


def resume(args, model, optimizer):
    """Load the newest checkpoint that reads back whole (the adapter and AdamW's
    state); return its step (0 if none). A damaged one (a disk or copy fault) is
    passed over, saying so, for the one before it. Its flags:
    check_run_folder's."""
    for step in reversed(_checkpoints(args.output_dir)):
        path = os.path.join(args.output_dir, f"step-{step}")
        moments = os.path.join(path, "optimizer.safetensors")
        if not os.path.exists(moments):
            continue                        # older checkpoints keep the adapter alone
        try:
            load_lora(model, path)
            state = {}
            for key, value in load_file(moments).items():
                _, i, name = key.split(".")                 # state.<i>.<name>
                state.setdefault(int(i), {})[name] = value
            # load_state_dict moves each moment to its parameter's device
            # (`step` stays on the CPU)
            groups = optimizer.state_dict()["param_groups"]
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except Exception as e:      # safetensors' own errors too: the file is wrong
            print(f"warning: {path} does not read back "
                  f"({str(e).strip().splitlines()[0]}); trying the one before")
            continue
        print(f"resumed from {path}")
        return step
    print(f"--resume: no checkpoint in {args.output_dir}, starting from step 0")
    return 0


def start_or_resume(args, model, optimizer):
    """The step to start after: 0 for a new run (in a folder that holds none:
    nothing is overwritten by accident), else --resume's checkpoint, the same on
    every process. The checks are check_run_folder's (made again here for
    train()'s callers other than grpo.main); a stop's marker (stopped) goes, as
    the run goes on."""
    check_run_folder(args)
    os.makedirs(args.output_dir, exist_ok=True)
    start = resume(args, model, optimizer) if args.resume else 0
    if len(set(starts := gather(start))) > 1:
        raise ValueError(f"processes resumed from steps {starts}: --output-dir must be "
                         "one folder that all nodes share")
    if distributed()[0] == 0:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.output_dir, STOPPED))
    return start


# ----------------------------------------------------------------------------- signals
@contextlib.contextmanager
def stop_signals():
    """Within the block SIGTERM and SIGUSR1 (Slurm's warning before a time
    limit, or a preemption) are noted in the list it yields, not fatal: the loop
    drops the step it is in if that step has not reached its optimizer step
    (drop_step), else ends it; either way a checkpoint is on disk and the run
    exits with 128 + the signal's number (stopped)."""
    got = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum))
           for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def save_if_due(args, step, model, optimizer, stop):
    """A checkpoint (by process 0) every --save-every steps, at the last, and at
    a stop."""
    due = step % args.save_every == 0 or step == args.max_steps or stop
    if due and distributed()[0] == 0:
        save_checkpoint(args, step, model, optimizer)


def drop_step(args, step, model, optimizer, signals):
    """A stop signal came before `step` changed the weights or AdamW's state
    (its optimizer step): the step is dropped whole, and the state after the
    step before is checkpointed unless it is on disk. -> the exit status
    (stopped). --resume redoes the step exactly: its problems and its noise
    depend on its number alone."""
    done = step - 1
    if distributed()[0] == 0 and done and done not in _checkpoints(args.output_dir):
        save_checkpoint(args, done, model, optimizer)
    return stopped(args, signals, done)


def stopped(args, signals, step):
    """Process 0 writes why the run stopped into --output-dir/stopped; every
    process waits for that and the checkpoint to be on disk. -> 128 + the
    signal's number, the exit status of a process killed by it. The job script
    requeues on either: under torchrun only the file tells, since torchrun exits
    1 whatever its processes exit with."""
    number = (signals or [signal.SIGTERM])[0]
    message = f"signal {number}: stopped after step {step}, checkpointed; rerun with --resume"
    if distributed()[0] == 0:
        with writing(args.output_dir), open(os.path.join(args.output_dir, STOPPED), "w") as f:
            f.write(message + "\n")
    gather(None)
    print(message)
    return 128 + number


# ---------------------------------------------------------------------------- logs
def keep_upto(path, step):
    """Keep a log's records up to `step` (later ones, and a line torn by a
    crash, are dropped)."""
    if not os.path.exists(path):
        return []
    records = [r for r in read_resumable(path) if r["step"] <= step]
    with writing(os.path.dirname(path)), open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)
    return records


def step_record(step, batch, prompt_ids, rollouts, update, grad_norm, skipped, times,
                args, epoch, graphs):
    """A step's line in metrics.jsonl: its rollouts (grpo.Rollouts), its update
    (grpo.Update), its times (start, update's start, end) and whether decoding
    replays CUDA graphs."""
    rewards = torch.tensor(rollouts.rewards)                     # [B, G]
    B, G = rewards.shape
    drafts = "draft_pred" in batch[0]
    # the share of rollouts whose answer is the problem's `key` answer
    rate = lambda key: sum(is_equiv(a, p[key])
                           for group, p in zip(rollouts.answers, batch)
                           for a in group) / (B * G) if drafts else None
    lengths = torch.tensor([len(c) for group in rollouts.completions
                            for c in group]).float()              # [B*G]
    # [B] groups without a learning signal
    zero_std = (rewards.std(dim=1).nan_to_num() == 0).float()
    entropies = torch.tensor([e for group in rollouts.entropies
                              for row in group for e in row])   # [tokens]
    # over the tokens the update ran
    gap = update.gaps.abs()
    ratio = update.gaps.exp()
    stat = lambda x, f: f(x).item() if len(x) else None
    t0, t1, t2 = times
    return {"step": step,
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().nan_to_num().item(),
            "frac_reward_zero_std": zero_std.mean().item(),
            "completion_length": lengths.mean().item(),
            "clipped_ratio": (lengths >= args.max_new_tokens).float().mean().item(),
            "prompt_length": sum(map(len, prompt_ids)) / B,
            "loss": update.loss,
            "grad_norm": grad_norm,
            # the sampler's, per token of every rollout
            "entropy": stat(entropies, torch.mean),
            "logp_diff_mean": stat(gap, torch.mean),  # |log pi - log pi_sampler|
            "logp_diff_max": stat(gap, torch.max),
            "ratio_min": stat(ratio, torch.min),      # pi / pi_sampler
            "ratio_mean": stat(ratio, torch.mean),
            "ratio_max": stat(ratio, torch.max),
            "lr": args.lr,
            "epoch": epoch,
            "skipped": skipped,
            "draft_answer_rate": rate("draft_pred"),  # answering as the draft did
            "gold_answer_rate": rate("answer"),
            "rollout_time": t1 - t0,
            "update_time": t2 - t1,
            "step_time": t2 - t0,
            # whether decoding replays CUDA graphs
            **(graphs.stats() if graphs else NO_GRAPHS)}


def completion_lines(step, batch, rollouts, args):
    """completions.jsonl's lines: every rollout of every --log-completions-th
    step."""
    if not args.log_completions or step % args.log_completions:
        return []
    mean = lambda xs: sum(xs) / max(1, len(xs))
    return [{"step": step,
             "id": p["id"],
             "variant": args.variant,
             "draft_source": p.get("draft_source"),
             "draft_answer": p.get("draft_pred"),
             "completion": text,
             "reward": value,
             "answer": answer,
             "logprob": mean(logprobs),
             "entropy": mean(entropies)}
            for p, *group in zip(batch, rollouts.texts, rollouts.rewards,
                                 rollouts.answers, rollouts.logprobs, rollouts.entropies)
            for text, value, answer, logprobs, entropies in zip(*group)]


NO_GRAPHS = {"cuda_graphs": False, "graphs": 0, "graph_captures": 0, "graph_mb": 0.0}


class RunLog:
    """What a run writes besides checkpoints (process 0 alone): metrics.jsonl, a
    line per step, with the count of skipped steps; completions.jsonl; the
    tracker's records (--report-to); the progress bar. A resumed run keeps the
    lines up to its checkpoint and continues the tracker's."""

    def __init__(self, args, start):
        self.args = args
        self.writes = distributed()[0] == 0
        self.paths = [os.path.join(args.output_dir, f"{name}.jsonl")
                      for name in ("metrics", "completions")]
        kept = [keep_upto(path, start) if self.writes else [] for path in self.paths]
        self.skipped = sum(r.get("skipped", False) for r in kept[0])
        self.tracker = None
        self.graphs_said = False
        if self.writes:
            # an optional extra, imported here; None for --report-to none
            from extras.trackers import tracker
            self.tracker = tracker(args.report_to, args.output_dir, args.run_name,
                                   vars(args), start)
        self.bar = tqdm(desc=f"grpo {args.variant}", unit="step", initial=start,
                        total=args.max_steps, disable=not self.writes)

    def step(self, step, batch, prompt_ids, rollouts, update, grad_norm, skipped, times,
             epoch, graphs):
        """A step's line in metrics.jsonl (step_record), its rollouts in
        completions.jsonl every --log-completions steps, the tracker, the
        progress bar."""
        record = step_record(step, batch, prompt_ids, rollouts, update, grad_norm,
                             skipped, times, self.args, epoch, graphs)
        lines = completion_lines(step, batch, rollouts, self.args)
        self.skipped += skipped
        record["skipped_steps"] = self.skipped
        for path, written in zip(self.paths, ([record], lines)):
            if self.writes and written:
                with writing(self.args.output_dir), open(path, "a") as f:
                    f.writelines(json.dumps(line, ensure_ascii=False) + "\n"
                                 for line in written)
        if self.tracker:
            self.tracker.log(record, step, lines)
        self.bar.set_postfix(reward=f"{record['reward']:.3f}",
                             len=f"{record['completion_length']:.0f}", refresh=False)
        self.bar.update()
        if self.writes and record["graphs"] and not self.graphs_said:
            print(f"\nafter step {step}: {record['graphs']} CUDA graphs kept "
                  f"({record['graph_captures']} captured), {record['graph_mb']:.0f} MB")
            self.graphs_said = True

    def close(self):
        self.bar.close()
        if self.tracker:
            self.tracker.close()
