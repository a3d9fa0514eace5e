"""Experiment trackers for grpo.py and evaluate.py (--report-to wandb|tensorboard): optional extras,
each imported only when asked for, beside metrics.jsonl, which a run always writes."""
import importlib
import json
import os
from typing import NamedTuple


class Tracker(NamedTuple):
    log: object                 # log(record, step, table=None)
    close: object               # close(): everything written


def tracker(kind, folder, name, config, start=0):
    """A Tracker sending a record's numbers to wandb or TensorBoard (each imported only when asked
    for; None for "none"), and a table (rows of dicts) to wandb. A resumed run continues the same
    tracker run: wandb by the id kept in `folder` (steps it already holds are not sent again),
    TensorBoard by step (its events after `start` are dropped). wandb's project: $WANDB_PROJECT,
    else mismatched-wrong-drafts."""
    if kind == "none":
        return None
    try:
        module = importlib.import_module({"wandb": "wandb",
                                          "tensorboard": "torch.utils.tensorboard"}[kind])
    except ImportError:
        raise ImportError(f"--report-to {kind} needs the {kind} package: "
                          f"pip install {kind}") from None
    if kind == "tensorboard":
        writer = module.SummaryWriter(os.path.join(folder, "tensorboard"),
                                      purge_step=start + 1 if start else None)
        writer.add_text("config", json.dumps(config, default=str))

        def log(record, step, table=None):
            for key, value in numbers(record).items():
                writer.add_scalar(key, value, step)
            writer.flush()
        return Tracker(log, writer.close)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "wandb_id")
    run_id = open(path).read().strip() if os.path.exists(path) else os.urandom(6).hex()
    with open(path, "w") as f:
        f.write(run_id)
    run = module.init(project=os.environ.get("WANDB_PROJECT", "mismatched-wrong-drafts"), name=name,
                      id=run_id, resume="allow", config=config, dir=folder)

    def log(record, step, table=None):
        record = numbers(record)
        if table:   # completions.jsonl's rows, as a table
            record["completions"] = module.Table(columns=list(table[0]),
                                                 data=[list(row.values()) for row in table])
        run.log(record, step=step)
    return Tracker(log, run.finish)


# the tracker's names for our metrics: TRL's, where TRL has one
TRL_NAMES = {"completion_length": "completions/mean_length",
             "lr": "learning_rate",
             "clipped_ratio": "completions/clipped_ratio",
             "logp_diff_mean": "sampling/sampling_logp_difference/mean",
             "logp_diff_max": "sampling/sampling_logp_difference/max",
             "ratio_min": "sampling/importance_sampling_ratio/min",
             "ratio_mean": "sampling/importance_sampling_ratio/mean",
             "ratio_max": "sampling/importance_sampling_ratio/max"}


def numbers(record, prefix=""):
    """A record's numbers under the tracker's names (TRL's, where TRL has one), nested dicts
    flattened: {"strict": {"pass@1": x}} -> "strict/pass@1"."""
    flat = {}
    for key, value in record.items():
        name = prefix + TRL_NAMES.get(key, key)
        if isinstance(value, dict):
            flat.update(numbers(value, name + "/"))
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat
