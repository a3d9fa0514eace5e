"""A CUDA graph stand-in for the CPU, as strict as a GPU: capture(step, pool) records the aten ops
one decode step dispatches (a TorchDispatchMode) and leaves every tensor as it found it, as a CUDA
capture runs nothing; replay() re-runs exactly those ops on exactly the recorded tensors, writing
each result where the captured op wrote it. Shapes, Python branches and scalars are frozen at
capture, and a tensor made after it is never read. A host sync inside the captured region (.item(),
.tolist(), bool(t), an op whose output's shape depends on data) fails the capture, as CUDA's
"operation not permitted when stream is capturing" does."""
import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import extras.graphs

aten = torch.ops.aten
# ops whose result the host must wait for, or whose output's shape depends on data
SYNCS = {aten._local_scalar_dense, aten.item, aten.nonzero, aten.masked_select, aten.equal,
         aten.is_nonzero, aten._unique, aten._unique2, aten.unique_consecutive, aten.unique_dim}
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
              torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
              torch.Tensor.__index__}
CAPTURING = "operation not permitted when stream is capturing"


def syncs(func, args, kwargs):
    """Whether the op makes the host wait: a sync op, indexing by a bool mask (its shape is the
    mask's count), or repeat_interleave by a tensor without output_size."""
    if func.overloadpacket in SYNCS:
        return True
    if func.overloadpacket in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
        return any(i is not None and i.dtype == torch.bool for i in args[1])
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    return False


def written(func, args, kwargs):
    """The tensors the op writes in place (its schema's `!` arguments)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        if arg.alias_info is not None and arg.alias_info.is_write and value is not None:
            out += value if isinstance(value, (list, tuple)) else [value]
    return out


class HostReads(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise RuntimeError(f"{CAPTURING} (a host read: Tensor.{func.__name__})")
        return func(*args, **(kwargs or {}))


class Recorder(TorchDispatchMode):
    """The ops a step dispatches, with their tensors; each tensor an op writes is saved before its
    first write, so that restore() leaves memory as before the capture."""

    def __init__(self):
        super().__init__()
        self.ops, self.saved = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if syncs(func, args, kwargs):
            raise RuntimeError(f"{CAPTURING} (a host sync: {func})")
        for t in written(func, args, kwargs):
            self.saved.append((t, t.clone()))
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out

    def restore(self):
        for t, before in reversed(self.saved):     # the first save of a tensor holds its start
            t.copy_(before)


class Replay:
    """A recorded step, replayed: views are the recorded ones already; an op that writes in place
    runs again on its recorded tensors; any other op runs again, and its result is copied into
    the tensors it returned at capture (the graph's addresses)."""

    def __init__(self, ops):
        self.ops = ops
        self.replays = 0

    def replay(self):
        self.replays += 1
        for func, args, kwargs, out in self.ops:
            returns = [r.alias_info for r in func._schema.returns]
            if any(a is not None and not a.is_write for a in returns):
                continue                                         # a view: nothing to compute
            result = func(*args, **kwargs)
            if any(a is not None for a in returns):
                continue                                         # in place: done
            for recorded, new in zip(as_list(out), as_list(result)):
                if isinstance(recorded, torch.Tensor):
                    recorded.copy_(new)


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def capture(step, pool):
    """extras.graphs.capture on the CPU: step() recorded, not run (memory restored)."""
    recorder = Recorder()
    try:
        with HostReads(), recorder:
            step()
    finally:
        recorder.restore()
    return Replay(recorder.ops)


@contextlib.contextmanager
def cuda_graphs_on_the_cpu(monkeypatch):
    """extras.graphs.Graphs on the CPU, its captures the stand-in's; yields the list of the graphs
    captured."""
    captured = []

    def recording(step, pool):
        graph = capture(step, pool)
        captured.append(graph)
        return graph
    monkeypatch.setattr(extras.graphs, "capture", recording)
    monkeypatch.setattr(extras.graphs, "warm_up", lambda step: step())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    yield captured
