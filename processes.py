"""The three torchrun helpers the scripts need (distributed, gather, rounds),
and their entry point (run_main). Plain `python` is process 0 of 1 and skips all
of it."""
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

# how long a process may wait for the others (an AIME chunk: tens of minutes)
TIMEOUT = "DIST_TIMEOUT_MINUTES"


def distributed(flags=None):
    """(rank, world size); plain `python` is process 0 of 1. Under torchrun:
    joins its process group (NCCL on GPUs, gloo on CPU), takes GPU LOCAL_RANK,
    and stops every process if any was started with `flags` other than process
    0's. A process waits for the others at most $DIST_TIMEOUT_MINUTES (default
    180; NCCL's own default, 10 minutes, is shorter than one evaluation chunk at
    n = 2,048, and its watchdog would tear the run down)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        minutes = float(os.environ.get(TIMEOUT, 180))
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=minutes))
    ranks = gather(flags) if flags is not None else [{}]
    bad = [f"process {r}: --{k.replace('_', '-')}"
           for r, f in enumerate(ranks) for k in f if f[k] != ranks[0].get(k)]
    if bad:
        raise ValueError("processes were started with flags other than process 0's "
                         f"(the run's): {', '.join(bad)}")
    return int(os.environ.get("RANK", 0)), world


def gather(obj):
    """Every process's obj, in rank order, on every process ([obj] alone); also
    a barrier."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rounds(chunks, work, path, desc):
    """Deal chunks round-robin over the processes: each round, every process
    runs work(its chunk) -> a list of records, and process 0 appends them all to
    the JSONL file `path` in chunk order, the order one process would."""
    rank, world = distributed()
    firsts = range(0, len(chunks), world)                # each round's first chunk
    for first in tqdm(firsts, desc=desc, unit="round", disable=rank > 0):
        records = gather(work(chunks[first + rank]) if first + rank < len(chunks) else [])
        if rank == 0:
            # the folder, once a round is done
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(record, ensure_ascii=False) + "\n"
                             for part in records for record in part)


def run_main(main):
    """A script's entry: main(); a bad input (a missing or damaged file, an
    impossible flag, a model that does not load) -> one line `error: ...` and
    exit status 1. Under torchrun, after success, the processes wait for each
    other (every send has arrived), then tear the process group down; on gloo
    they exit skipping C++ teardown instead, where finished processes aborted in
    1-3 % of runs."""
    try:
        main()
    except (OSError, ValueError, KeyError, ImportError, FloatingPointError,
            RuntimeError) as e:
        # KeyError's str is a repr
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        line = (str(text).strip() or repr(e)).splitlines()[0]
        if isinstance(e, RuntimeError):
            # gloo's and NCCL's timeouts say "Timed out"; anything else is a bug
            if "imed out" not in line:
                raise
            line = (f"a process waited longer than ${TIMEOUT} minutes for the others "
                    f"({line})")
        sys.exit(f"error: {line}")
    if dist.is_initialized():
        gather(None)
        if dist.get_backend() != "gloo":
            return dist.destroy_process_group()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
