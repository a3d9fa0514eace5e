"""CUDA graphs of generation.py's decode steps: a speed layer, on by default on CUDA (imported only
there; --no-cuda-graphs: eager). A decode step has fixed shapes and asks nothing of the host
(generation.decode_one_token), so its kernels can be captured once per shape and replayed: one
launch a step instead of thousands. The graphs read buffers kept for the run, so a graph captured
in one batch serves every later batch and step of its shape. Before its first use, Graphs.check
decodes some steps both ways; on a mismatch, one warning line, and the run decodes eagerly."""
import collections
import math
import sys

import torch

import generation


def capture(step, pool):
    """step() once eagerly (the capture's warm-up, and a real step), then captured as a CUDA graph,
    not run: the graph's replay() runs its kernels again, on the same buffers."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    return graph


class Graphs:
    """Decode steps replayed from CUDA graphs, one per shape (prompts, rows a prompt, padded prompt
    length, new tokens, width): each captured once per run and replayed in every later batch and
    step of its shape, on buffers kept for the run (`store`). One per model and sampling settings.
    check() first decodes some steps both ways; on a mismatch, one warning, and eager decoding."""

    def __init__(self):
        self.store, self.captured, self.pool, self.ok = {}, {}, None, None

    def buffer(self, name, shape, dtype, device):
        """A view of the front of the run's buffer `name` (zeroed when made); one that must grow
        drops the graphs captured on it, and doubles at least (few growths, few recaptures)."""
        size, held = math.prod(shape), self.store.get(name, torch.empty(0)).numel()
        if held < size:
            self.captured.clear()
            self.store[name] = torch.zeros(max(size, 2 * held), dtype=dtype, device=device)
        return self.store[name][:size].view(shape)

    def replay(self, step, cache, width):
        _, _, B, _, G, L, _ = cache.own.shape
        key = (B, G, cache.prompt.shape[4], L, width)
        if key in self.captured:
            return self.captured[key].replay()
        self.pool = self.pool or torch.cuda.graph_pool_handle()  # one memory pool for all shapes
        self.captured[key] = capture(step, self.pool)

    def check(self, model, prompt, step):
        """4 rows of one prompt for WIDTH_STEP + 2 * CHECK_EVERY steps, across a width change and a
        compaction (rows 1 and 3 end at the look after half the steps), eagerly and from graphs:
        the same tokens and logits, else eager decoding from now on."""
        every = generation.CHECK_EVERY
        steps, looks = generation.WIDTH_STEP + 2 * every, collections.Counter()

        def halfway(line, tail, first):  # one call per row going at each look
            looks[line] += 1
            return first if line % 2 and looks[line] * every >= steps // 2 else None
        noise = [generation.noise_roots(0, [(0, s) for s in range(4)], model.device)]
        try:
            runs = []
            for graphs in (None, self):
                looks.clear()
                cache, rows = generation.prefill(model, [prompt], noise, steps, graphs)
                runs.append(generation.decode_n_tokens(model, cache, rows, steps, step, halfway,
                                                       graphs)[0])
            eager, graphed = runs
            diff = (eager.logits - graphed.logits).abs().max().item()
            self.ok = torch.equal(eager.tokens, graphed.tokens) and diff <= 1e-2 * (
                1 + eager.logits.abs().max().item())
            why = "decode differently from eager decoding here"
        except Exception as e:  # a capture that fails on this machine is as good as a wrong one
            self.ok, why = False, f"fail here ({str(e).strip().splitlines()[0][:200]})"
        if self.ok:
            print(f"CUDA graphs: {steps} decode steps replayed as eager ones ran them (the same "
                  f"tokens, logits within {diff:.1e}); one graph per shape")
        else:
            print(f"warning: CUDA graphs {why} (extras.graphs.Graphs.check): decoding eagerly "
                  "for the rest of the run", file=sys.stderr)
