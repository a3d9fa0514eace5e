"""CUDA graphs of generation.py's decode steps: a speed layer, on by default on CUDA
(--no-cuda-graphs: eager); the scripts import it when they decode, and it imports the core,
never the other way round. A decode step has fixed shapes and asks
nothing of the host (generation.decode_one_token), so its kernels can be captured once per
shape and replayed: one launch a step instead of thousands. Graphs is called as
decode_one_token is (gpt-fast rebinds decode_one_token to a compiled one; generate passes
this one instead). Its graphs read buffers kept for the run (Graphs.buffer), so a graph
captured in one batch serves every later batch and step of its key. Before its first use,
Graphs.check decodes some steps both ways; on a mismatch, or a failure at any later point,
one warning line, and the run decodes eagerly from there."""
import collections
import dataclasses
import functools
import math
import sys

import torch

import generation

MAX_GRAPHS = 256  # graphs kept; past it the one replayed least recently is dropped


def warm_up(step):
    """step() once eagerly on a side stream, as capture wants before it: a real step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)


def capture(step, pool):
    """step() captured as a CUDA graph, not run: its replay() runs the kernels again, on
    the same tensors."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    return graph


def graph_key(cache, rows, width, sampling):
    """What a step's graph is valid for: every tensor the step reads and writes (its
    address, shape, strides and dtype; the model's weights change in place only), and the
    host values it was captured with."""
    fields = [getattr(cache, f.name) for f in dataclasses.fields(cache)]
    fields += [getattr(rows, name) for name in generation.TENSORS]
    tensors = tuple((t.data_ptr(), t.shape, t.stride(), t.dtype) for t in fields)
    return tensors + (width, sampling)


def free_memory():
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


class Graphs:
    """decode_one_token, replayed from CUDA graphs: one per key (graph_key), captured at
    the first step of its key and replayed at every later one; at most MAX_GRAPHS kept.
    ok: None until check() has run, then whether graphs are in use."""

    def __init__(self):
        self.store, self.graphs, self.pool, self.ok = {}, collections.OrderedDict(), None, None
        self.captures = 0  # graphs captured in the run, the dropped ones included
        self.taken = {}  # device memory each kept graph took when captured (CUDA)

    def buffer(self, name, shape, dtype, device):
        """A view of the front of the run's buffer `name` (zeroed when made); one that
        must grow drops every graph (their tensors are gone), and doubles at least (few
        growths)."""
        size = math.prod(shape)
        held = self.store.get(name, torch.empty(0)).numel()
        if held < size:
            self.drop()
            self.store[name] = torch.zeros(max(size, 2 * held), dtype=dtype, device=device)
        return self.store[name][:size].view(shape)

    def __call__(self, model, cache, rows, width, sampling):
        """One decode step (decode_one_token's arguments): replayed if its key has a
        graph, else run eagerly and captured for the next ones. A failure: one warning
        line, and this step and every later one eagerly."""
        step = functools.partial(generation.decode_one_token, model, cache, rows, width,
                                 sampling)
        if self.ok is False:
            return step()
        key = graph_key(cache, rows, width, sampling)
        stepped = False
        try:
            if key in self.graphs:
                self.graphs.move_to_end(key)
                return self.graphs[key].replay()
            warm_up(step)
            stepped = True
            self.keep(key, step)
        except Exception as e:  # an OOM at a new shape, a kernel that cannot be captured
            self.give_up(f"failed ({str(e).strip().splitlines()[0][:200]})")
            if not stepped:
                step()

    def keep(self, key, step):
        """Capture step's graph under key; past MAX_GRAPHS drop the least recently
        replayed."""
        self.pool = self.pool or torch.cuda.graph_pool_handle()  # one pool for every graph
        before = free_memory()
        self.graphs[key] = capture(step, self.pool)
        self.taken[key] = max(0, before - free_memory())
        self.captures += 1
        if len(self.graphs) > MAX_GRAPHS:
            old, _ = self.graphs.popitem(last=False)
            del self.taken[old]

    def drop(self):
        self.graphs.clear()
        self.taken.clear()

    def give_up(self, why):
        print(f"warning: CUDA graphs {why}: decoding eagerly for the rest of the run "
              "(extras.graphs.Graphs)", file=sys.stderr)
        self.ok = False
        self.drop()

    def stats(self):
        """For metrics.jsonl: whether decode steps replay graphs, how many are kept,
        captured so far, and the device memory the kept ones took when captured."""
        return {"cuda_graphs": bool(self.ok), "graphs": len(self.graphs),
                "graph_captures": self.captures, "graph_mb": sum(self.taken.values()) / 2 ** 20}

    def check(self, model, prompt, sampling):
        """4 rows of one prompt for WIDTH_STEP + 2 * CHECK_EVERY steps, across a width
        change and a compaction (rows 1 and 3 end at the look after half the steps),
        eagerly and from graphs: the same tokens, log-probs within 1e-2, else eager
        decoding from now on."""
        every = generation.CHECK_EVERY
        steps, looks = generation.WIDTH_STEP + 2 * every, collections.Counter()

        def halfway(job, tail, first):  # one call per row going at each look
            looks[job] += 1
            return first if job[1] % 2 and looks[job] * every >= steps // 2 else None
        noise = [generation.noise_roots(0, [(0, s) for s in range(4)], model.device)]
        runs = []
        for decode, new in ((generation.decode_one_token, generation.zeros),
                            (self, self.buffer)):
            looks.clear()
            cache, rows = generation.prefill(model, [prompt], noise, steps, new)
            runs.append(generation.decode_n_tokens(model, cache, rows, steps, sampling, decode,
                                                   halfway, None, new))
        if self.ok is False:  # a capture or replay failed: said so already
            return
        eager, graphed = runs
        same = eager.keys() == graphed.keys() and all(
            eager[j].tokens == graphed[j].tokens for j in eager)
        diff = max(abs(a - b) for j in eager for a, b in zip(eager[j].logprobs,
                                                             graphed[j].logprobs))
        if not (same and diff <= 1e-2):
            return self.give_up("decode differently from eager decoding here (check)")
        self.ok = True
        print(f"CUDA graphs: {steps} decode steps replayed as eager ones ran them (the same "
              f"tokens, log-probs within {diff:.1e}); one graph per key, at most {MAX_GRAPHS}")


def cuda_graphs(enabled=True):
    """A run's CUDA graphs (a Graphs, to pass to generation.generate); None: decode eagerly, as
    on the CPU."""
    if not (enabled and torch.cuda.is_available()):
        return None
    return Graphs()
