"""Watching a run: wandb (offline) and TensorBoard get every step's record, a resumed run continues
the same tracker run, completions.jsonl holds every rollout of every N-th step beside the shown
draft's answer, and evaluate.py's summary reaches the tracker too. No network."""
import glob
import json

import pytest

import evaluate
import grpo
from extras import trackers

TINY = ["--model", "tiny", "--variant", "no-draft", "--data", "tests/data/tiny_problems.jsonl",
        "--exclude", "", "--prompts-per-step", "2", "--num-generations", "3",
        "--max-new-tokens", "6", "--lr", "0.05", "--save-every", "2"]
TRACKED = ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
           "completions/clipped_ratio", "loss", "grad_norm", "entropy", "learning_rate", "epoch",
           "skipped_steps", "sampling/sampling_logp_difference/mean",
           "sampling/sampling_logp_difference/max", "sampling/importance_sampling_ratio/min",
           "sampling/importance_sampling_ratio/mean", "sampling/importance_sampling_ratio/max"]
# TRL's names; the sampling/ ones are logged at steps whose update ran


class Crash(Exception):
    pass


def rewards(crash_at=None):
    """A 0/1 reward from the text's length (groups get variance), raising at call `crash_at`: a
    crash mid-step."""
    calls = iter(range(10 ** 6))

    def reward(text, gold, strict=False):
        if next(calls) == crash_at:
            raise Crash()
        return float(len(text) % 2)
    return reward


def test_tensorboard_holds_every_scalar_for_every_step_and_a_resume_continues_it(
        tmp_path, monkeypatch):
    """Steps 1-3 logged, a crash in step 4, --resume from step 2: the events after step 2 are
    dropped (purge) and logged again, so every scalar has steps 1-5 once each."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    run = ["--report-to", "tensorboard", "--max-steps", "5", "--output-dir", str(tmp_path)]
    monkeypatch.setattr(grpo, "reward", rewards(crash_at=3 * 6 + 1))
    with pytest.raises(Crash):
        grpo.main([*TINY, *run])
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*TINY, *run, "--resume"])
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(TRACKED) <= set(events.Tags()["scalars"])
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    updated = [m["step"] for m in metrics if m["frac_reward_zero_std"] < 1]
    for tag in TRACKED:
        steps = updated if tag.startswith("sampling/") else [1, 2, 3, 4, 5]
        assert [e.step for e in events.Scalars(tag)] == steps, tag
    logged = [e.value for e in events.Scalars("reward")]
    assert logged == pytest.approx([m["reward"] for m in metrics])


def test_wandb_offline_writes_the_keys_and_the_completions_table_and_resumes_by_id(
        tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(grpo, "reward", rewards())
    run = ["--report-to", "wandb", "--log-completions", "2", "--output-dir", str(tmp_path),
           "--run-name", "t"]
    grpo.main([*TINY, *run, "--max-steps", "2"])
    run_id = (tmp_path / "wandb_id").read_text()
    grpo.main([*TINY, *run, "--max-steps", "4", "--resume"])
    assert (tmp_path / "wandb_id").read_text() == run_id  # the same tracker run, continued
    # a folder per process start, named by time and id (-1 when both starts fall in one second)
    folders = sorted(glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}*")))
    assert folders and len(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))) == len(folders)
    history = b"".join(open(f"{folder}/run-{run_id}.wandb", "rb").read() for folder in folders)
    assert all(key.encode() in history for key in TRACKED)
    tables = [json.load(open(f)) for folder in folders
              for f in glob.glob(f"{folder}/files/media/table/completions_*.table.json")]
    # steps 2 and 4: every rollout
    assert len(tables) == 2 and all(len(t["data"]) == 6 for t in tables)
    assert tables[0]["columns"] == ["step", "id", "variant", "draft_source", "draft_answer",
                                    "completion", "reward", "answer", "logprob", "entropy"]


def test_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path, monkeypatch):
    def missing(name):
        raise ImportError(name)
    monkeypatch.setattr(trackers.importlib, "import_module", missing)
    says = "--report-to wandb needs the wandb package: pip install wandb"
    with pytest.raises(ImportError, match=says):
        trackers.tracker("wandb", str(tmp_path), "run", {})
    assert trackers.tracker("none", str(tmp_path), "run", {}) is None


def test_completions_show_the_drafts_answer_beside_each_rollout_and_resume_trims_them(
        tmp_path, monkeypatch):
    """A mismatched-wrong run: every rollout of every 2nd step, with its problem, the shown draft's
    answer (another problem's, wrong), its text, reward and extracted answer; a resume drops the
    lines after its checkpoint."""
    from test_drafts import synthetic_pool
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(p) + "\n" for p in synthetic_pool(6)))
    run = ["--model", "tiny", "--variant", "mismatched-wrong", "--drafts", str(pool),
           "--exclude", "", "--prompts-per-step", "2", "--num-generations", "3",
           "--max-new-tokens", "6", "--save-every", "2", "--log-completions", "2",
           "--output-dir", str(tmp_path / "run")]
    monkeypatch.setattr(grpo, "reward", rewards(crash_at=3 * 6 + 1))
    with pytest.raises(Crash):
        grpo.main([*run, "--max-steps", "4"])
    steps = {json.loads(line)["step"] for line in open(tmp_path / "run" / "completions.jsonl")}
    assert steps == {2}
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*run, "--max-steps", "4", "--resume"])
    lines = [json.loads(line) for line in open(tmp_path / "run" / "completions.jsonl")]
    assert [line["step"] for line in lines] == [2] * 6 + [4] * 6
    rows = {r["id"]: r for r in grpo.load_problems(grpo.parse_args(run))}
    for line in lines:
        assert set(line) == {"step", "id", "variant", "draft_source", "draft_answer",
                             "completion", "reward", "answer", "logprob", "entropy"}
        assert line["variant"] == "mismatched-wrong"
        assert line["draft_source"] == rows[line["id"]]["draft_source"] != line["id"]
        assert line["draft_answer"] == rows[line["id"]]["draft_pred"]
        assert line["logprob"] < 0 < line["entropy"]
        assert line["draft_answer"] != rows[line["id"]]["answer"]  # a wrong draft's answer
    monkeypatch.setattr(grpo, "reward", rewards())
    grpo.main([*run, "--max-steps", "2", "--log-completions", "0",
               "--output-dir", str(tmp_path / "off")])
    assert not (tmp_path / "off" / "completions.jsonl").exists()


def test_evaluate_sends_its_summary_to_the_tracker(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    summary = evaluate.main(["--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "2",
                             "--samples", "2", "--k", "1,2", "--max-new-tokens", "4",
                             "--output", str(tmp_path / "r.json"), "--report-to", "tensorboard"])
    events = event_accumulator.EventAccumulator(str(tmp_path / "r.json.tracker" / "tensorboard"))
    events.Reload()
    logged = {"strict/pass@1", "strict/pass@2", "maj/maj@2", "avg@n", "num_problems"}
    assert logged <= set(events.Tags()["scalars"])
    assert events.Scalars("strict/pass@2")[0].value == pytest.approx(summary["strict"]["pass@2"])
