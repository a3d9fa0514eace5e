"""Nothing is lost: a SIGTERM ends a run at a checkpoint it resumes from exactly, a damaged
checkpoint falls back to the one before, and every bad input to the three scripts is one line
`error: ...` naming the flag, file or value, with no run folder touched and nothing created."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import drafts
import evaluate
import extras.pool
import grpo
import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "tiny", "--variant", "no-draft", "--data", "tests/data/tiny_problems.jsonl",
        "--exclude", "", "--prompts-per-step", "2", "--num-generations", "3",
        "--max-new-tokens", "6", "--lr", "0.05", "--save-every", "2"]
# rewards with variance: every step updates
STREAM = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0] * 100


def rewards(skip=0, signal_at=None):
    """reward(text, gold) scripted by call number (from `skip` on); call `signal_at` sends this
    process a SIGTERM."""
    calls = iter(range(skip, 10 ** 6))

    def reward(text, gold, strict=False):
        i = next(calls)
        if i == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return STREAM[i]
    return reward


def same_run(a, b, step):
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        x, y = load_file(a / f"step-{step}" / name), load_file(b / f"step-{step}" / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    keys = ("step", "reward", "loss", "grad_norm", "skipped_steps")
    lines = lambda run: [{k: json.loads(line)[k] for k in keys}
                         for line in open(run / "metrics.jsonl")]
    assert lines(a) == lines(b)


def train_script(tmp_path, hook):
    """A grpo.py entry point, as run_main runs it, with `hook` (Python lines) run first."""
    script = tmp_path / "train.py"
    script.write_text(f"import os, signal, sys\nsys.path.insert(0, {ROOT!r})\n"
                      "import processes, grpo, runs\n"
                      f"sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
                      "import test_bad_input\n" + hook +
                      "processes.run_main(lambda: grpo.main(sys.argv[1:]))\n")
    return script


def run_cut(tmp_path, hook, steps=5):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the threads of this process: the same sums
    return subprocess.run([sys.executable, str(train_script(tmp_path, hook)), *TINY, "--max-steps",
                           str(steps), "--output-dir", tmp_path / "cut"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_sigterm_before_the_optimizer_step_drops_the_step_and_resume_redoes_it(tmp_path,
                                                                               monkeypatch):
    """Slurm's SIGTERM while step 3's rollouts are graded (save-every 2): nothing of step 3 has
    changed the weights yet, so it is dropped whole: step-2 is on disk already, the process exits
    with 143 (128 + SIGTERM) and metrics.jsonl ends at step 2; --resume redoes step 3 and ends
    where an uninterrupted run ends, bit for bit."""
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*TINY, "--max-steps", "5", "--output-dir", str(tmp_path / "whole")])
    run = run_cut(tmp_path, "grpo.reward = test_bad_input.rewards(signal_at=2 * 6 + 2)\n")
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-2000:]
    assert "stopped after step 2, checkpointed" in run.stdout
    assert sorted(os.listdir(tmp_path / "cut")) == ["metrics.jsonl", "step-2", "stopped"]
    assert (tmp_path / "cut" / "stopped").read_text() == ("signal 15: stopped after step 2, "
                                                          "checkpointed; rerun with --resume\n")
    assert [json.loads(line)["step"] for line in open(tmp_path / "cut" / "metrics.jsonl")] == [1, 2]
    monkeypatch.setattr(grpo, "reward", rewards(skip=2 * 6))
    grpo.main([*TINY, "--max-steps", "5", "--output-dir", str(tmp_path / "cut"), "--resume"])
    same_run(tmp_path / "whole", tmp_path / "cut", 5)
    assert not (tmp_path / "cut" / "stopped").exists()      # the run went on


def test_sigterm_after_the_optimizer_step_ends_the_step_and_checkpoints_it(tmp_path, monkeypatch):
    """A SIGTERM once step 3's optimizer step is taken (while its metrics are computed): the step
    ends, step-3 is written, exit 143; --resume continues bit for bit."""
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*TINY, "--max-steps", "5", "--output-dir", str(tmp_path / "whole")])
    hook = ("record = runs.step_record\n"
            "def signalled(step, *a):\n"
            "    os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None\n"
            "    return record(step, *a)\n"
            "runs.step_record = signalled\n"
            "grpo.reward = test_bad_input.rewards()\n")
    run = run_cut(tmp_path, hook)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-2000:]
    assert "stopped after step 3, checkpointed" in run.stdout
    assert sorted(os.listdir(tmp_path / "cut")) == ["metrics.jsonl", "step-2", "step-3", "stopped"]
    monkeypatch.setattr(grpo, "reward", rewards(skip=3 * 6))
    grpo.main([*TINY, "--max-steps", "5", "--output-dir", str(tmp_path / "cut"), "--resume"])
    same_run(tmp_path / "whole", tmp_path / "cut", 5)


def test_sigterm_a_quarter_into_a_long_rollout_ends_the_process_within_a_quarter_step(tmp_path):
    """Preemption: SIGTERM a quarter into step 3's rollouts (384 tokens a row; a quarter of step
    2's rollout time after step 2 is logged) ends the process within max(5 s, a quarter of a step)
    with 143: the engine looks at the host every 16 decode steps, and step 3 is dropped; --resume
    then finishes with every step logged once."""
    long = [*TINY[:-6], "--max-new-tokens", "384", "--save-every", "1", "--max-steps", "4",
            "--output-dir", str(tmp_path / "run")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "grpo.py", *long], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "run" / "metrics.jsonl"
    logged = lambda: metrics.read_text().count("\n") if metrics.exists() else 0
    while logged() < 2 and proc.poll() is None:
        time.sleep(0.02)
    step2 = json.loads(metrics.read_text().splitlines()[1])
    time.sleep(step2["rollout_time"] / 4)
    assert proc.poll() is None, "the run ended before the signal"
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    took = time.time() - sent
    assert took <= max(5.0, step2["step_time"] / 4), (took, step2["step_time"])
    assert [json.loads(line)["step"] for line in open(metrics)] == [1, 2]
    grpo.main([*long, "--resume"])
    assert [json.loads(line)["step"] for line in open(metrics)] == [1, 2, 3, 4]


@pytest.mark.parametrize("fails", ["checkpoint", "log"])
def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues_exactly(tmp_path, monkeypatch,
                                                                            fails):
    """The disk fills up while step 4's checkpoint (or metrics line) is written: one line naming
    the folder and the full disk, no traceback, the checkpoints on disk whole; once there is space
    again, --resume ends where an uninterrupted run ends, bit for bit. The writes fail as they do
    on a full disk: safetensors' SafetensorError (no OSError), Python's OSError ENOSPC, after
    part of the bytes went out."""
    import builtins
    import errno

    from safetensors import SafetensorError

    import runs
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*TINY, "--max-steps", "6", "--output-dir", str(tmp_path / "whole")])
    cut = tmp_path / "cut"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fails == "checkpoint":
        def save(tensors, path, **kw):
            if "step-4" not in path:
                return save_file(tensors, path, **kw)
            open(path, "wb").write(b"\0" * 100)
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                  "StorageFull, message: \"No space left on device\" })")
        monkeypatch.setattr(runs, "save_file", save)
    else:
        class Full:                    # a file that takes 10 bytes, then finds the disk full
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def writelines(self, lines):
                self.f.write("".join(lines)[:10])
                raise full
        def full_after_3(path, mode="r", *a, **kw):
            f = builtins.open(path, mode, *a, **kw)
            last = str(path).endswith("metrics.jsonl") and "a" in mode and \
                len(builtins.open(path).readlines()) == 3
            return Full(f) if last else f
        monkeypatch.setattr(runs, "open", full_after_3, raising=False)
    monkeypatch.setattr(grpo, "reward", rewards())
    message = error(grpo, *TINY, "--max-steps", "6", "--output-dir", cut)
    assert message == (f"error: {cut}: the disk is full; free some space, then rerun with "
                       "--resume (the checkpoints on disk are whole)")
    monkeypatch.undo()
    assert {d for d in os.listdir(cut) if not d.endswith(".tmp")} == {"metrics.jsonl", "step-2"}
    assert load_file(cut / "step-2" / "optimizer.safetensors")       # whole
    monkeypatch.setattr(grpo, "reward", rewards(skip=2 * 6))
    grpo.main([*TINY, "--max-steps", "6", "--output-dir", str(cut), "--resume"])
    same_run(tmp_path / "whole", cut, 6)


def test_evaluate_exits_at_once_on_sigterm_and_a_rerun_draws_only_what_is_missing(tmp_path):
    """evaluate.py installs no handler: a SIGTERM ends it at once (143); the rounds it finished
    are on disk, and rerunning the command draws only the missing samples."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "evaluate.py", "--model", "tiny", "--limit", "8", "--batch-size", "2",
           "--max-new-tokens", "256", "--stop", "never", "--output", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = tmp_path / "r.json.records.jsonl"
    written = lambda: records.exists() and records.read_text().endswith("\n")  # a round, whole
    while not written() and proc.poll() is None:
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM and time.time() - sent < 5
    kept = len(open(records).readlines())
    assert 0 < kept < 8
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert f"{8 - kept} samples to draw" in rerun.stdout
    assert json.load(open(out))["num_problems"] == 8


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, monkeypatch, capsys):
    """The newest checkpoint's optimizer.safetensors cut short (a disk or copy fault): --resume says
    so, resumes from the checkpoint before it (the two newest keep AdamW's state) and still ends
    bit-identical."""
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*TINY, "--max-steps", "6", "--output-dir", str(tmp_path / "whole")])
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*TINY, "--max-steps", "4", "--output-dir", str(tmp_path / "cut")])
    damaged = tmp_path / "cut" / "step-4" / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    monkeypatch.setattr(grpo, "reward", rewards(skip=2 * 6))
    grpo.main([*TINY, "--max-steps", "6", "--output-dir", str(tmp_path / "cut"), "--resume"])
    out = capsys.readouterr().out
    assert "step-4 does not read back" in out and "resumed from" in out
    assert out.index("step-4 does") < out.index("resumed from")
    assert f"resumed from {tmp_path / 'cut' / 'step-2'}" in out
    same_run(tmp_path / "whole", tmp_path / "cut", 6)


def error(module, *argv):
    """Run a script as its entry point does (processes.run_main); the one line it exits with."""
    with pytest.raises(SystemExit) as e:
        processes.run_main(lambda: module.main([str(a) for a in argv]))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def fingerprint(folder):
    paths = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in paths}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished 2-step run that every bad invocation below must leave as it was."""
    folder = tmp_path_factory.mktemp("run")
    grpo.main([*TINY, "--max-steps", "2", "--output-dir", str(folder)])
    return folder


GRPO_FLAGS = [("--max-steps", "0"), ("--prompts-per-step", "0"), ("--num-generations", "1"),
              ("--max-new-tokens", "-5"), ("--max-prompt-tokens", "0"), ("--temperature", "0"),
              ("--top-p", "1.5"), ("--top-p", "0"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"),
              ("--lr", "fast"), ("--beta1", "1"), ("--beta2", "-0.1"), ("--weight-decay", "-1"),
              ("--max-grad-norm", "0"), ("--clip-eps", "0"), ("--lora-r", "0"),
              ("--lora-alpha", "-2"), ("--lora-dropout", "1"), ("--save-every", "0"),
              ("--seed", "-1"), ("--variant-seed", "-1"), ("--rollout-batch-size", "0"),
              ("--micro-batch-tokens", "0"), ("--variant", "mismatched-wrogn")]


@pytest.mark.parametrize("flag,value", GRPO_FLAGS)
def test_grpo_refuses_impossible_flags(run_folder, flag, value):
    before = fingerprint(run_folder)            # the flag's own check, not the resume's
    assert f"argument {flag}: " in error(grpo, *TINY, "--output-dir", run_folder, "--resume",
                                         flag, value)
    assert fingerprint(run_folder) == before


EVALUATE_FLAGS = [("--limit", "0"), ("--samples", "0"), ("--temperature", "-1"), ("--top-p", "0"),
                  ("--max-new-tokens", "0"), ("--seed", "-1"), ("--batch-size", "0"),
                  ("--prompt", "chat")]
DRAFTS_FLAGS = [("generate", "--num-drafts", "0"), ("generate", "--max-new-tokens", "0"),
                ("generate", "--temperature", "-0.5"), ("generate", "--top-p", "2"),
                ("generate", "--limit", "0"), ("generate", "--batch-size", "0"),
                ("generate", "--seed", "-3"), ("generate", "--levels", "x"),
                ("stats", "--seed", "-1"), ("stats", "--max-prompt-tokens", "0")]
POOL_COMMANDS = ("stats", "import")         # python -m extras.pool


@pytest.mark.parametrize("flag,value", EVALUATE_FLAGS)
def test_evaluate_refuses_impossible_flags(tmp_path, flag, value):
    assert flag in error(evaluate, "--model", "tiny", "--output", tmp_path / "new" / "r.json",
                         flag, value)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command,flag,value", DRAFTS_FLAGS)
def test_drafts_refuses_impossible_flags(tmp_path, command, flag, value):
    out = tmp_path / "new" / "pool.jsonl"
    extra = ["--drafts", "pool.jsonl"] if command == "stats" else ["--out", out]
    script = extras.pool if command in POOL_COMMANDS else drafts
    assert flag in error(script, command, *extra, flag, value)
    assert not (tmp_path / "new").exists()


def test_the_issues_cases(tmp_path, run_folder):
    """--output-dir naming a file, --model naming a folder that does not exist, --k beyond
    --samples, an output that is a folder, --adapter that is not there: one line each, before a
    model loads."""
    (tmp_path / "afile").write_text("x")
    message = error(grpo, *TINY, "--output-dir", tmp_path / "afile")
    assert "--output-dir" in message
    assert "a file" in message
    before = fingerprint(run_folder)
    assert "already holds a run" in error(grpo, *TINY, "--max-steps", "3",
                                          "--output-dir", run_folder)
    for module, extra in ((grpo, TINY[2:] + ["--output-dir", tmp_path / "m"]),
                          (evaluate, ["--limit", "1", "--output", tmp_path / "m" / "r.json"]),
                          (drafts, ["--limit", "1", "--out", tmp_path / "m" / "pool.jsonl"])):
        model = tmp_path / "no" / "such" / "model"
        argv = ["generate"] * (module is drafts) + ["--model", model, *extra]
        assert f"--model {model}: not a folder" in error(module, *argv)
    assert "--k 1,8" in error(evaluate, "--model", "tiny", "--samples", "4", "--k", "1,8")
    assert "--k" in error(evaluate, "--model", "tiny", "--samples", "4", "--k", "1,two")
    assert "a folder, not a file" in error(evaluate, "--model", "tiny", "--output", tmp_path)
    assert "--adapter" in error(evaluate, "--model", "tiny", "--adapter", tmp_path / "none",
                                "--output", tmp_path / "r.json")
    assert "a folder, not a file" in error(drafts, "generate", "--model", "tiny", "--out", tmp_path)
    assert "is a file, not a folder" in error(drafts, "generate", "--model", "tiny",
                                              "--out", tmp_path / "afile" / "pool.jsonl")
    assert fingerprint(run_folder) == before and not (tmp_path / "m").exists()


def test_a_resume_with_other_flags_names_them(run_folder, monkeypatch):
    """A resume with other flags names them; it stops before the model loads, as a folder that
    holds a run without --resume does: both are read from the run's files, so a typo costs no
    7B load."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model loads before the run folder is checked")
    monkeypatch.setattr(grpo, "load_model", load_model)
    before = fingerprint(run_folder)
    message = error(grpo, *TINY, "--max-steps", "3", "--output-dir", run_folder, "--resume",
                    "--lr", "0.01", "--seed", "4")
    assert "--lr 0.05" in message and "--seed 0" in message and "same flags" in message
    assert "already holds a run" in error(grpo, *TINY, "--output-dir", run_folder)
    assert fingerprint(run_folder) == before


BAD_FILES = {                              # content -> what the error says besides the file's name
    "missing": (None, "no such file"),
    "not JSON": (b'{"id": 1, "problem": "p", "answer": "1"}\nthis is not json\n',
                 ":2: not valid JSON"),
    "not UTF-8": (b'{"id": 1, "problem": "\xff\xfe", "answer": "1"}\n', "not UTF-8"),
    "a field missing": (b'{"id": 1, "problem": "p"}\n', ":1: missing field(s) ['answer']"),
    "a field of the wrong type": (b'{"id": 1, "problem": 5, "answer": "1"}\n',
                                  ":1: field(s) ['problem'] must be"),
    "not an object": (b'[1, 2, 3]\n', ":1: missing field(s) ['(not an object)']"),
    "a torn last line": (b'{"id": 1, "problem": "p", "answer": "1"}\n{"id": 2, "prob',
                         ":2: not valid JSON"),
}


def bad_file(tmp_path, kind):
    path = tmp_path / f"{kind.replace(' ', '_')}.jsonl"
    if BAD_FILES[kind][0] is not None:
        path.write_bytes(BAD_FILES[kind][0])
    return path


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_problem_files_name_the_file_and_line(tmp_path, kind):
    """The problems files of the three scripts (grpo --data / --exclude, evaluate --data, drafts
    generate --data): missing, not JSON, not UTF-8, wrong fields, wrong types, not objects, torn.
    Nothing is created."""
    path, says = bad_file(tmp_path, kind), BAD_FILES[kind][1]
    out = tmp_path / "out"
    for module, argv in ((grpo, [*TINY, "--data", path, "--output-dir", out]),
                         (grpo, [*TINY, "--exclude", path, "--output-dir", out]),
                         (evaluate, ["--model", "tiny", "--data", path,
                                     "--output", out / "r.json"]),
                         (drafts, ["generate", "--model", "tiny", "--data", path,
                                   "--out", out / "pool.jsonl"])):
        message = error(module, *argv)
        assert str(path) in message and says in message, message
    assert not out.exists()


POOLS = {"drafts not a list": {"drafts": "x"}, "no drafts": {"drafts": []},
         "a draft not an object": {"drafts": ["text"]},
         "a draft without its labels": {"drafts": [{"text": "so 4"}]},
         "a draft whose text is not text": {"drafts": [{"text": 4, "correct_strict": 0,
                                                        "correct_quasi": 0}]}}


@pytest.mark.parametrize("kind", POOLS)
def test_bad_pools_name_the_line(tmp_path, kind):
    pool = tmp_path / "pool.jsonl"
    row = {"id": "a", "problem": "p", "answer": "1", "level": 3, **POOLS[kind]}
    pool.write_text(json.dumps(row) + "\n")
    for module, argv in ((grpo, ["--model", "tiny", "--drafts", pool, "--exclude", "",
                                 "--output-dir", tmp_path / "out"]),
                         (extras.pool, ["stats", "--drafts", pool])):
        assert f"{pool}:1: problem a" in error(module, *argv)
    assert not (tmp_path / "out").exists()


def test_empty_inputs_are_errors_not_empty_runs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "no training problems" in error(grpo, *TINY, "--data", empty,
                                           "--output-dir", tmp_path / "out")
    assert f"{empty}: no problems" in error(evaluate, "--model", "tiny", "--data", empty,
                                            "--output", tmp_path / "out" / "r.json")
    assert "no problems" in error(drafts, "generate", "--model", "tiny", "--data", empty,
                                  "--out", tmp_path / "out" / "pool.jsonl")
    assert "no training problems" in error(grpo, "--model", "tiny", "--drafts", empty,
                                           "--exclude", "", "--output-dir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damage_in_a_file_being_appended_to_is_an_error_that_loses_nothing(tmp_path, run_folder):
    """A torn last line is a crash and is dropped (tested with resume); a bad line before the last
    is damage: the error names it, and the file, records after it included, stays as it was."""
    records = tmp_path / "r.json.records.jsonl"
    lines = [json.dumps({"id": "x", "sample": s, "config": "c"}) for s in range(3)]
    records.write_text(lines[0] + "\n{garbage\n" + lines[2] + "\n")
    before = records.read_bytes()
    message = error(evaluate, "--model", "tiny", "--limit", "1", "--output", tmp_path / "r.json")
    assert f"{records}:2: not valid JSON: the file is damaged" in message
    assert records.read_bytes() == before
    copy = tmp_path / "run"
    os.system(f"cp -r {run_folder} {copy}")
    metrics = copy / "metrics.jsonl"
    metrics.write_text("{broken\n" + metrics.read_text())
    before = fingerprint(copy)
    assert f"{metrics}:1: not valid JSON" in error(grpo, *TINY, "--max-steps", "3",
                                                   "--output-dir", copy, "--resume")
    assert fingerprint(copy) == before


@pytest.mark.parametrize("content,says", [
    (None, "no such file"),
    (b"\xff", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b"[1, 2]", "not a result of evaluate.py"),
])
def test_compare_and_plot_name_a_bad_result_file(tmp_path, content, says):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_bytes(content)
    message = error(evaluate, "compare", f"a={path}")
    assert says in message
    assert str(path) in message
    assert "--smooth" in error(evaluate, "plot", "--metrics", tmp_path,
                               "--output", tmp_path / "f.png", "--smooth", "0")
    assert "metrics.jsonl: no such file" in error(evaluate, "plot", "--metrics", tmp_path,
                                                  "--output", tmp_path / "f.png")


GOOD_RECORD = ('{"unique_id": "a", "problem": "p", "answer": "1", "level": "Level 3", '
               '"split": "train", "samples": [{"text": "x", "correct_strict": 0, '
               '"correct_quasi": 0}]}')


@pytest.mark.parametrize("src,says", [
    (b"[]", "expected the author's"),
    (b'{"records": 3}', "expected the author's"),
    (b'{"records": [3]}', "record #0 lacks unique_id"),
    (('{"records": [' + GOOD_RECORD + ', {"problem": "q"}]}').encode(),
     "record #1 lacks unique_id"),
    (GOOD_RECORD.join(('{"records": [', ']}')).replace('"text": "x", ', "").encode(),
     "record #0 lacks samples[0].text"),
], ids=["a list", "records not a list", "a record not an object", "a record lacks its id",
        "a sample lacks its text"])
def test_import_checks_the_whole_pool_before_writing(tmp_path, src, says):
    (tmp_path / "src.json").write_bytes(src)
    (tmp_path / "pool.jsonl").write_text("kept\n")
    assert says in error(extras.pool, "import", "--src", tmp_path / "src.json",
                         "--out", tmp_path / "pool.jsonl")
    assert (tmp_path / "pool.jsonl").read_text() == "kept\n"


@pytest.mark.parametrize("script,argv", [
    ("grpo.py", ["--max-new-tokens", "-5"]),
    ("evaluate.py", ["--samples", "4", "--k", "1,8"]),
    ("drafts.py", ["generate", "--top-p", "2"]),
])
def test_the_scripts_print_one_line_and_exit_1(script, argv):
    run = subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
