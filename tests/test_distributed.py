"""torchrun with 2 CPU processes (gloo) gives what one process gives: grpo.py (resumed from a
one-process checkpoint: across world sizes too), evaluate.py and drafts.py generate; bad set-ups
stop before a model loads. Each launch is a real torchrun; each costs seconds, so one launch
proves what it can at once."""
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

import drafts
import evaluate
import grpo
import processes
import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A reward that depends on the completion's text (the tiny model's lenient reward is always 0):
# groups get non-zero advantages and the steps really move the adapter.
WRAPPER = """import sys
sys.path.insert(0, {root!r})
import grpo
grpo.reward = lambda text, gold, strict=False: float(len(text) % 2)
grpo.main(sys.argv[1:])
"""
GRPO_ARGS = ["--model", "tiny", "--variant", "no-draft", "--exclude", "", "--prompts-per-step", "3",
             "--num-generations", "2", "--max-new-tokens", "6", "--lr", "1e-3", "--save-every", "1",
             "--seed", "1"]  # seed 1: every step has a group whose rewards differ


def torchrun(script, *args, n=2, env=None):
    """Run `script args` under torchrun with n CPU processes; returns the completed process
    (output captured)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={n}", script, *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def wrapper(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(WRAPPER.format(root=ROOT))
    return str(path)


def metrics(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def assert_same_run(a, b, step):
    """Same steps and rewards exactly; loss and grad norm, and the adapter at `step`, to float
    rounding."""
    ma, mb = metrics(a), metrics(b)
    exact = lambda m: (m["step"], m["reward"], m["reward_std"], m["frac_reward_zero_std"])
    assert [exact(m) for m in ma] == [exact(m) for m in mb]
    for x, y in zip(ma, mb):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], 1e-4)
    wa, wb = (load_file(str(r / f"step-{step}" / "adapter_model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def test_grpo_two_processes_resume_a_one_process_run_and_end_where_one_process_ends(
        tmp_path, monkeypatch):
    """B x G = 3 x 2 rollouts: process 0 holds group 0 and half of group 1. Step 1 on one
    process, then --resume on two for steps 2-3 (each process loads the checkpoint, samples its
    share, and the gradients are summed) ends with one process's metrics and adapter (max abs <=
    1e-5)."""
    monkeypatch.setattr(grpo, "reward", lambda text, gold, strict=False: float(len(text) % 2))
    grpo.main([*GRPO_ARGS, "--max-steps", "3", "--output-dir", str(tmp_path / "one")])
    # the steps that two processes take do learn
    assert all(m["frac_reward_zero_std"] < 1 for m in metrics(tmp_path / "one")[1:])
    grpo.main([*GRPO_ARGS, "--max-steps", "1", "--output-dir", str(tmp_path / "switch")])
    resumed = torchrun(wrapper(tmp_path), *GRPO_ARGS, "--max-steps", "3",
                       "--output-dir", tmp_path / "switch", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "switch", 3)
    # the adapter really moved, so the 1e-5 above is a comparison, not two untouched zero
    # matrices
    moved = load_file(str(tmp_path / "one" / "step-3" / "adapter_model.safetensors"))
    assert max(v.abs().max().item() for k, v in moved.items() if "lora_B" in k) > 1e-4


def test_evaluate_and_drafts_on_two_processes_write_what_one_process_writes(tmp_path):
    """One launch runs drafts.py generate, then evaluate.py (a script calling both mains, as
    their own entry points do): the same pool, byte for byte and in the same order; the same
    evaluation records and summary. Chunks of 2 and of 1 problem(s), 3 of each: a round with an
    idle process."""
    pool = ["generate", "--model", "tiny", "--limit", "5", "--num-drafts", "2",
            "--max-new-tokens", "8", "--batch-size", "4"]
    scores = ["--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "3", "--samples", "4",
              "--k", "1,2,4", "--max-new-tokens", "8", "--batch-size", "4"]
    drafts.main([*pool, "--out", str(tmp_path / "one.jsonl")])
    one = evaluate.main([*scores, "--output", str(tmp_path / "one.json")])
    script = tmp_path / "both.py"
    script.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\n"
                      "import drafts, evaluate, processes\n"
                      f"processes.run_main(lambda: (drafts.main({pool!r} + ['--out', "
                      f"{str(tmp_path / 'two.jsonl')!r}]), evaluate.main({scores!r} + "
                      f"['--output', {str(tmp_path / 'two.json')!r}])))\n")
    run = torchrun(str(script))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert json.loads((tmp_path / "two.json").read_text()) == one
    lines = lambda p: sorted((tmp_path / p).read_text().splitlines())
    assert lines("two.json.records.jsonl") == lines("one.json.records.jsonl")


def test_processes_wait_for_each_other_up_to_the_timeout_they_are_given(tmp_path):
    """Uneven chunks: process 1's takes 8 s. With $DIST_TIMEOUT_MINUTES at 3 s, process 0 stops
    waiting and the run ends with one line naming the variable (the default, 180 minutes, outlasts
    an AIME chunk at n = 2,048, where NCCL's own 10 minutes would tear the run down); the other
    torchrun tests run under the default."""
    script = tmp_path / "slow.py"
    script.write_text(f"import os, sys, time\nsys.path.insert(0, {ROOT!r})\n"
                      "import evaluate, generation, processes\n"
                      "work = generation.generate\n"
                      "def slow(*a, **kw):\n"
                      "    time.sleep(8 * (os.environ['RANK'] == '1'))\n"
                      "    return work(*a, **kw)\n"
                      "generation.generate = slow\n"
                      "processes.run_main(lambda: evaluate.main(sys.argv[1:]))\n")
    run = torchrun(str(script), "--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "2",
                   "--max-new-tokens", "4", "--batch-size", "1", "--output", tmp_path / "r.json",
                   env={processes.TIMEOUT: "0.05"})
    assert run.returncode != 0, run.stderr[-3000:]
    assert f"waited longer than ${processes.TIMEOUT}" in run.stderr, run.stderr[-3000:]
    assert "Timed out waiting 3000ms" in run.stderr


def test_run_main_tears_nccl_down_and_skips_only_gloos_teardown(monkeypatch):
    import torch.distributed as dist
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(processes, "gather", lambda obj: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(os, "_exit", lambda code: calls.append(f"_exit {code}"))
    for backend in ("nccl", "gloo"):
        monkeypatch.setattr(dist, "get_backend", lambda: backend)
        processes.run_main(lambda: None)
    assert calls == ["barrier", "destroy", "barrier", "_exit 0"]


def test_bad_setups_stop_before_a_model_loads(tmp_path, monkeypatch, capsys):
    """Processes started with different flags (rank 0's are the run's): every process stops,
    none waits for the others in vain (a real launch). More processes than rollouts: a check of
    the flags and the world size alone, the same on every process (here as process 0 of 2)."""
    script = tmp_path / "differ.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, {ROOT!r})\nimport grpo\n"
                      "grpo.main(sys.argv[1:] + "
                      "(['--lr', '0.5'] if os.environ['RANK'] == '1' else []))\n")
    run = torchrun(str(script), *GRPO_ARGS, "--output-dir", tmp_path / "differ")
    assert run.returncode != 0 and "process 1: --lr" in run.stderr, run.stderr[-3000:]
    assert "training prompts" not in run.stdout and not (tmp_path / "differ").exists()
    monkeypatch.setattr(grpo, "distributed", lambda flags=None: (0, 3))
    with pytest.raises(ValueError, match="3 processes for 2 rollouts a step"):
        grpo.main([*GRPO_ARGS, "--prompts-per-step", "1", "--num-generations", "2",
                   "--output-dir", str(tmp_path / "few")])
    assert "training prompts" not in capsys.readouterr().out and not (tmp_path / "few").exists()


# as WRAPPER, each reward a tenth of a second late: a step lasts long enough to be signalled in
SLOW = WRAPPER.replace("import sys\n", "import sys, time\n").replace(
    "float(len(text) % 2)", "time.sleep(0.1) or float(len(text) % 2)")


def slurm_job(tmp_path, launch):
    """docs/scaling.md's Slurm script as task 1 of its array (no-draft, seed 1) in tmp_path,
    with `launch` in place of `python grpo.py` and a stub `scontrol` that logs its arguments;
    started in a session of its own."""
    readme = open(os.path.join(ROOT, "docs", "scaling.md"), encoding="utf-8").read()
    start = readme.index("#!/bin/bash\n#SBATCH")
    script = readme[start:readme.index("```", start)]
    assert script.count("python grpo.py ") == 1
    (tmp_path / "job.sh").write_text(script.replace("python grpo.py ", launch + " "))
    os.makedirs(tmp_path / "bin", exist_ok=True)
    (tmp_path / "bin" / "scontrol").write_text('#!/bin/sh\necho "$@" >> scontrol.log\n')
    os.chmod(tmp_path / "bin" / "scontrol", 0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "7"}
    return subprocess.Popen(["bash", str(tmp_path / "job.sh")], cwd=tmp_path, env=env,
                            stdout=open(tmp_path / "job.log", "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def children(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def test_a_preempted_job_is_requeued_by_the_readmes_script_and_resumes_exactly(tmp_path,
                                                                               monkeypatch):
    """The Slurm script of docs/scaling.md, three times over one run (save-every 1), each time
    signalled two steps after it started: under torchrun (2 processes), SIGTERM as Slurm
    delivers it, to the script, torchrun and its workers at once; under torchrun, SIGTERM to the
    workers alone (torchrun then exits 1); on one process, the time limit's SIGUSR1 to the
    script alone, which passes it on as SIGTERM (SIGTERM to one process alone:
    tests/test_bad_input.py). Each time the script requeues the job, and the run's `stopped`
    file says why; then --resume, on one process, logs each step once and ends where an
    uninterrupted run ends."""
    monkeypatch.setattr(grpo, "reward", lambda text, gold, strict=False: float(len(text) % 2))
    flags = [*GRPO_ARGS, "--max-steps", "12"]
    grpo.main([*flags, "--output-dir", str(tmp_path / "whole")])
    script = tmp_path / "slow.py"
    script.write_text(SLOW.format(root=ROOT))
    torchrun = f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node 2"
    run = tmp_path / "runs" / "no-draft-seed1"
    newest = lambda: max(runs._checkpoints(run), default=0) if run.exists() else 0
    for n, (launcher, who) in enumerate([(torchrun, "all"), (torchrun, "workers"),
                                         (sys.executable, "script")], 1):
        start = newest()
        job = slurm_job(tmp_path, f"{launcher} {script} {shlex.join(flags)}")
        try:
            while newest() < start + 2 and job.poll() is None:
                time.sleep(0.05)
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            top = children(job.pid)                    # torchrun, or grpo.py on one process
            workers = [c for pid in top for c in children(pid)]
            signalled = {"all": [job.pid, *top, *workers], "workers": workers, "script": [job.pid]}
            assert len(top) == 1 and len(workers) == (2 if launcher == torchrun else 0)
            for pid in signalled[who]:
                os.kill(pid, signal.SIGUSR1 if who == "script" else signal.SIGTERM)
            assert job.wait(timeout=120) == 0, (tmp_path / "job.log").read_text()[-3000:]
        finally:
            for pid in [job.pid, *children(job.pid)]:
                for child in [pid, *children(pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
        assert (tmp_path / "scontrol.log").read_text() == "requeue 7\n" * n
        stopped = (run / "stopped").read_text()
        assert stopped == f"signal 15: stopped after step {newest()}, checkpointed; rerun with "\
            "--resume\n"
    grpo.main([*flags, "--output-dir", str(run), "--resume"])
    assert not (run / "stopped").exists()
    assert_same_run(tmp_path / "whole", run, 12)
