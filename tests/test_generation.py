"""The rollout engine (generation.py): sampling keyed by (seed, prompt, sample), each prompt's K/V
held once, fixed-shape decode steps with looks from the host, compaction, CUDA graphs (their capture
emulated on the CPU), stop strings, and the attention functions against the plain computation."""
import contextlib
import copy
import math

import pytest
import torch

import extras.graphs
import generation
from bench.rollout import copied_generate
from evaluate import stop_finder
from generation import generate


@pytest.mark.parametrize("which", ["tiny", "sharp"])
def test_greedy_is_token_identical_to_hf_generate(which, request):
    model, tok = request.getfixturevalue(which)
    prompts = ["Problem: What is 1+1?",
               "Problem: a longer prompt about \\frac{1}{2} and $x^2$ and more words"]
    ids = [tok(p)["input_ids"] for p in prompts]
    ours = generate(model, ids, n=1, max_new_tokens=24, temperature=0,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for i, x in enumerate(ids):
        mask = torch.ones(1, len(x), dtype=torch.long)
        hf = model.generate(torch.tensor([x]), attention_mask=mask, max_new_tokens=24,
                            do_sample=False, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
        assert hf[0, len(x):].tolist() == ours[i][0]


def test_sampling_is_keyed_by_seed_prompt_and_sample_not_by_batch(tiny):
    """A sample's tokens are a function of (seed, prompt key, sample number): the same in any batch
    size, asked for alone, or under another prompt order, which is what lets processes split the
    work; another seed, other tokens."""
    model, tok = tiny
    ids = [tok("Problem: x")["input_ids"],
           tok("Problem: a much longer problem statement")["input_ids"]]
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id)
    a = generate(model, ids, n=5, seed=7, **kw)
    assert a == generate(model, ids, n=5, seed=7, **kw)
    assert a != generate(model, ids, n=5, seed=8, **kw)
    assert [len(x) for x in a] == [5, 5] and len({tuple(s) for s in a[0]}) > 1
    # batches that split and mix prompts
    assert generate(model, ids, n=5, seed=7, batch_size=3, **kw) == a
    part = generate(model, ids[::-1], n=[[0, 3], [4, 1]], prompt_numbers=[1, 0], seed=7,
                    batch_size=3, **kw)
    assert part == [[a[1][0], a[1][3]], [a[0][4], a[0][1]]]
    assert generate(model, ids, n=[[], []], seed=7, **kw) == [[], []]


def test_sampling_draws_from_the_distribution():
    """The keyed exponential race samples each token with its probability (top_p: renormalised over
    the nucleus)."""
    from generation import mix, noise_roots, sample
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    keys = mix(noise_roots(0, [(0, s) for s in range(20000)], "cpu") ^ 3)  # [R]
    logits = probs.log().expand(len(keys), -1)
    freq = torch.bincount(sample(logits, keys, 1.0, 1.0)[0], minlength=4) / len(keys)
    assert torch.allclose(freq, probs, atol=0.012), freq
    # top_p 0.7: the nucleus {0.5, 0.3}
    nucleus = torch.bincount(sample(logits, keys, 1.0, 0.7)[0], minlength=4) / len(keys)
    assert torch.allclose(nucleus, torch.tensor([0.625, 0.375, 0, 0]), atol=0.012), nucleus


def test_sampling_never_draws_a_token_of_probability_zero():
    """Every hash maps to u strictly inside (0, 1): a token with p = 0 scores 0 / E = 0 and never
    wins. (u = 1 gave E = -0 and 0 / -0 = NaN, which argmax picks: ~1 in 2^24 token draws, 12
    expected here.) With top_p, no token outside the nucleus wins either."""
    from generation import mix, noise_roots, sample
    rows, steps, vocab = 100, 1000, 2048
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(vocab, (rows,), generator=gen)                                   # [R]
    # all mass on one token
    logits = torch.full((rows, vocab), float("-inf")).scatter_(1, target[:, None], 0.0)
    keys = noise_roots(0, [(0, r) for r in range(rows)], "cpu")
    # [steps, R]
    drawn = torch.stack([sample(logits, mix(keys ^ t), 1.0, 1.0)[0] for t in range(steps)])
    assert drawn.numel() >= 10 ** 5 and torch.equal(drawn, target.expand(steps, -1))
    logits = torch.randn(rows, vocab, generator=gen) * 3
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    in_nucleus = sorted_probs.cumsum(-1) - sorted_probs <= 0.95
    nucleus = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, in_nucleus)  # [R, V]
    # [200, R]
    drawn = torch.stack([sample(logits, mix(keys ^ t), 1.0, 0.95)[0] for t in range(200)])
    assert nucleus.gather(1, drawn.T).all()


@contextlib.contextmanager
def fused_kernels_that_return_nan_on_padding(model):
    """What fused CUDA SDPA kernels have done with padded batches (torch 2.13, transformers 5.x): a
    fully masked query row comes back NaN. On top of that, NaN in every padded position's hidden
    state, and so in its K/V at every layer: a prompt path that is robust by construction never
    reads either."""
    sdpa, masks = torch.nn.functional.scaled_dot_product_attention, []

    def nan_sdpa(query, key, value, attn_mask=None, **kw):
        out = sdpa(query, key, value, attn_mask=attn_mask, **kw)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # fully masked rows
            out = out.masked_fill(~attn_mask.any(-1, keepdim=True), float("nan"))
        return out

    def remember_mask(module, args, kwargs):
        masks.append(kwargs.get("attention_mask"))

    def poison_pads(module, args, out):
        mask = masks[-1]
        return out if mask is None else out.masked_fill(mask[..., None] == 0, float("nan"))
    hooks = [model.model.register_forward_pre_hook(remember_mask, with_kwargs=True),
             model.model.embed_tokens.register_forward_hook(poison_pads)]
    torch.nn.functional.scaled_dot_product_attention = nan_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompts_of_different_lengths_survive_kernels_that_return_nan_on_padding(
        sharp, temperature):
    """Prompts of 5, 37 and 90 tokens sampled together, under kernels that return NaN for padded
    rows, give the tokens each gives alone on clean kernels (before: 8 of 12 rows differed, greedy
    and sampled)."""
    model, tok = sharp
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, len(tok), (n,), generator=gen).tolist() for n in (5, 37, 90)]
    kw = dict(n=4, max_new_tokens=8, temperature=temperature, eos_token_id=-1,
              pad_token_id=tok.pad_token_id, seed=1)
    alone = [generate(model, [x], prompt_numbers=[i], **kw)[0] for i, x in enumerate(ids)]
    with fused_kernels_that_return_nan_on_padding(model):
        together = generate(model, ids, **kw)
    assert together == alone


def _rows_ending_apart(model, tok, ids, **kw):
    """An EOS that some rows sample early and others never: rows finish at different steps."""
    free = copied_generate(model, ids, eos_token_id=-1, **kw)
    return free[0][0][2]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("n,batch_size", [(4, 64), (4, 3), (1, 64), (7, 5)])
def test_shared_prompts_sample_what_copied_prompts_sample(sharp, temperature, n, batch_size):
    """Holding each prompt's K/V once (shared_prompt_attention) must give the tokens of copying it
    to every row: greedy and sampled, prompts of different lengths, one that contains the pad id,
    rows finishing at different steps, n = 1, and batches that split a prompt's samples or mix
    prompts."""
    model, tok = sharp
    long = tok("Problem: a much longer problem statement with $x^2$")["input_ids"]
    ids = [tok("Problem: x")["input_ids"], long[:6] + [tok.pad_token_id] + long[6:],
           tok("Problem: y = 2")["input_ids"]]
    kw = dict(n=n, max_new_tokens=12, temperature=temperature, top_p=0.95,
              pad_token_id=tok.pad_token_id, seed=3, batch_size=batch_size)
    eos = _rows_ending_apart(model, tok, ids, **kw)
    copied = copied_generate(model, ids, eos_token_id=eos, **kw)
    assert len({len(s) for group in copied for s in group}) > 1  # rows do finish at different steps
    assert generate(model, ids, eos_token_id=eos, **kw) == copied


@pytest.mark.parametrize("n,batch_size", [(4, 64), (7, 5)])
def test_finished_rows_leave_the_batch_without_changing_a_token(sharp, monkeypatch, n, batch_size):
    """Looks from the host every 3 steps, reads in widths of 3 slots, and rows leaving the batch
    (compaction) once at most 3/4 are going: still the copying path's tokens, for rows ending at EOS
    at many different steps."""
    model, tok = sharp
    calls, compact = [], generation.compact

    def recording(cache, *a):           # whether each look's compaction shrank the batch
        out = compact(cache, *a)
        calls.append(out[0] is not cache)
        return out
    monkeypatch.setattr(generation, "compact", recording)
    for name, value in (("CHECK_EVERY", 3), ("WIDTH_STEP", 3), ("COMPACT_AT", 0.75)):
        monkeypatch.setattr(generation, name, value)
    ids = [tok("Problem: x")["input_ids"],
           tok("Problem: a much longer problem statement")["input_ids"]]
    kw = dict(n=n, max_new_tokens=30, temperature=1.0, pad_token_id=tok.pad_token_id, seed=5,
              batch_size=batch_size)
    free = copied_generate(model, ids, eos_token_id=-1, **kw)
    rows = [row for group in free for row in group]
    eos = max({t for row in rows for t in row},
              key=lambda t: len({row.index(t) for row in rows if t in row}))
    copied = copied_generate(model, ids, eos_token_id=eos, **kw)
    assert len({len(s) for group in copied for s in group}) > 2 and calls == []
    assert generate(model, ids, eos_token_id=eos, **kw) == copied and any(calls)


def test_stop_strings_cut_each_row_where_its_text_first_holds_one(tiny, monkeypatch):
    """Stop strings are read from the host every few steps, for all rows at once; each row still
    ends at the token where the text of its last 12 tokens first holds a stop string, as if it were
    checked at every step."""
    monkeypatch.setattr(generation, "CHECK_EVERY", 5)
    model, tok = tiny
    ids = [tok("Problem: x")["input_ids"], tok("Problem: y = 2")["input_ids"]]
    kw = dict(n=6, max_new_tokens=40, temperature=1.0, seed=2)
    free = [row for group in generate(model, ids, eos_token_id=-1, **kw) for row in group]
    stops = ("ea", "ab")
    hit = lambda row: next((u + 1 for u in range(len(row))
                            if any(s in tok.decode(row[max(0, u - 11):u + 1]) for s in stops)),
                           len(row))
    eos = max({t for row in free for t in row},
              key=lambda t: sum(t in row[hit(row):hit(row) + 4] for row in free))
    # a stop string first (then, soon after, the EOS) ... or the EOS first
    ended = [row[:hit(row)] for row in free]
    ended = [row[:row.index(eos) + 1] if eos in row else row for row in ended]
    assert len({len(row) for row in ended}) > 2
    assert any(eos in row[hit(row):hit(row) + 4] for row in free)
    out = generate(model, ids, eos_token_id=eos, stop=stop_finder(tok, stops), **kw)
    assert [row for group in out for row in group] == ended


def sharpened(model_cls, config):
    """A random model of `config`, its attention and next-token distributions sharpened as the
    `sharp` fixture's (a slip in positions or masks changes its tokens)."""
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
        model.get_output_embeddings().weight.mul_(30)
    return model


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_shared_prompts_work_for_qwen2_and_llama(tiny, family):
    """The attention seam is transformers', not a forked model file: Qwen2 (q/k/v biases, tied
    embeddings) and Llama (GQA) give the copied path's tokens; their sharpened attention makes a
    slip change the tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    if family == "qwen2":
        config_cls, model_cls = Qwen2Config, Qwen2ForCausalLM
    else:
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    config = config_cls(vocab_size=len(tiny[1]), hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        tie_word_embeddings=family == "qwen2")
    model = sharpened(model_cls, config)
    ids = [tiny[1]("Problem: x")["input_ids"],
           tiny[1]("Problem: a longer problem, $x^2$")["input_ids"]]
    kw = dict(n=4, max_new_tokens=10, temperature=1.0, top_p=1.0,
              pad_token_id=tiny[1].pad_token_id, seed=1)
    assert generate(model, ids, **kw) == copied_generate(model, ids, **kw)


@pytest.mark.parametrize("window", [None, 3, 6])
def test_decode_attention_equals_attention_over_the_concatenation(window):
    """A decode step's one softmax over [the prompt's one copy of K/V; the row's own], against
    softmax attention over the concatenated keys, row by row: GQA, 2 prompts x 2 rows, a prompt
    shorter than its buffer (slots past its end unseen), own slots past this step unseen, and
    sliding windows (3: this step sees no prompt key at all)."""
    torch.manual_seed(0)
    B, G, Hkv, H, P, L, d, t = 2, 2, 2, 4, 5, 8, 8, 3          # this step writes own slot t
    length = torch.tensor([5, 2])
    cache = generation.RolloutCache(torch.randn(2, 1, B, Hkv, P, d),
                                    torch.randn(2, 1, B, Hkv, G, L, d), length, torch.tensor([t]))
    q, k, v = (torch.randn(B * G, h, 1, d) for h in (H, Hkv, Hkv))
    layer = type("Layer", (), {"layer_idx": 0})()
    unseen = ~cache.visible(L)                  # made once a step, for every layer
    out, _ = generation.decode_attention(layer, q, k, v, scaling=d ** -0.5, sliding_window=window,
                                         rollout=cache, width=L, unseen=unseen)   # [R, 1, H, d]
    assert torch.equal(cache.own[:, 0, :, :, :, t], torch.stack([k, v]).view(2, B, G, Hkv, d)
                       .transpose(2, 3))                          # this step's K/V, in slot t
    for r in range(B * G):
        b, g, n = r // G, r % G, int(length[r // G])
        keys, values = (torch.cat([cache.prompt[i, 0, b, :, :n], cache.own[i, 0, b, :, g, :t + 1]],
                                  1).repeat_interleave(H // Hkv, 0) for i in (0, 1))
        back = n + t - torch.cat([torch.arange(n), n + torch.arange(t + 1)])  # query - key position
        seen = back < (window or 100)
        ref = torch.nn.functional.scaled_dot_product_attention(q[r], keys, values, attn_mask=seen)
        assert torch.allclose(out[r, 0], ref[:, 0], atol=1e-6)
    if window == 3:
        assert not (back[:n] < 3).any()                  # a query that sees no prompt key at all


@pytest.mark.parametrize("window", [None, 3])
def test_update_attention_equals_attention_over_the_concatenation(window):
    """The update's attention of n completions over [their prompt's one K/V copy; their own keys],
    against causal softmax attention over [prompt; completion] row by row: values and gradients
    (the prompt's K/V are shared: their gradient sums the rows')."""
    torch.manual_seed(0)
    n, Hkv, H, P, T, d = 2, 2, 4, 5, 3, 8
    kv = torch.randn(2, 1, 1, Hkv, P, d, requires_grad=True)
    q, k, v = (torch.randn(n, h, T, d, requires_grad=True) for h in (H, Hkv, Hkv))
    layer = type("Layer", (), {"layer_idx": 0})()
    prompt = generation.Prompt(None, kv, None)
    out, _ = generation.update_attention(layer, q, k, v, scaling=d ** -0.5, sliding_window=window,
                                         prompt=prompt)                        # [n, T, H, d]
    keys, values = (torch.cat([kv[i, 0].expand(n, -1, -1, -1), x], 2).repeat_interleave(H // Hkv, 1)
                    for i, x in ((0, k), (1, v)))                        # [n, H, P + T, d]
    back = (P + torch.arange(T))[:, None] - torch.arange(P + T)[None]
    seen = (back >= 0) & (back < (window or 100))
    ref = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=seen)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, kv))
    ref_grads = torch.autograd.grad(ref.transpose(1, 2).square().sum(), (q, k, v, kv))
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_sliding_window_models_share_the_prompt_too(sharp, monkeypatch):
    """A sliding-window model (window 4, far shorter than prompt + completion) goes through
    decode_attention and samples the tokens of the copying path, whose window is
    transformers' own mask."""
    calls = []
    real = generation.decode_attention
    monkeypatch.setattr(generation, "decode_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    windowed, tok = copy.deepcopy(sharp[0]), sharp[1]
    windowed.config.sliding_window = 4
    ids = [tok("Problem: x")["input_ids"],
           tok("Problem: a much longer problem statement")["input_ids"]]
    kw = dict(n=3, max_new_tokens=10, temperature=1.0, pad_token_id=tok.pad_token_id, seed=2)
    assert generate(windowed, ids, **kw) == copied_generate(windowed, ids, **kw) and calls
    # the window does change the tokens
    assert generate(windowed, ids, **kw) != generate(sharp[0], ids, **kw)


def test_stop_strings_end_generation(tiny):
    model, tok = tiny
    ids = [tok("Problem: x")["input_ids"]]
    free = generate(model, ids, n=1, max_new_tokens=40, temperature=0,
                    eos_token_id=tok.eos_token_id)[0][0]
    text = tok.decode(free)
    stop = text[len(tok.decode(free[:5])):][:3]  # a string the greedy text reaches
    stopped = generate(model, ids, n=1, max_new_tokens=40, temperature=0,
                       eos_token_id=tok.eos_token_id, stop=stop_finder(tok, (stop,)))[0][0]
    assert stopped == free[:len(stopped)] and len(stopped) < len(free)
    assert stop in tok.decode(stopped)


def test_rollouts_hold_each_prompt_once(tiny):
    """The KV cache a rollout batch holds is at most B*P + B*G*L tokens (each prompt once, P padded
    to a multiple of 128; each row its own tokens); copying the prompt to each row holds
    B*G*(P + L). Counted on every decode
    step's cache, each tensor once."""
    from bench.rollout import kv_bytes_held  # bench.py rollout's counter, on a copy
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    B, G, P, L = 3, 4, 40, 10
    ids = [torch.randint(4, 500, (P,)).tolist() for _ in range(B)]
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4
    P_held = generation.bucket(P)  # the prompts' K/V buffer: each padded to a multiple of 128
    for gen, bound in ((generate, B * P_held + B * G * L), (copied_generate, B * G * (P + L))):
        with kv_bytes_held(model) as peak:
            gen(model, ids, n=G, max_new_tokens=L, eos_token_id=-1, pad_token_id=tok.pad_token_id)
        # counted entering each step
        assert (bound - B * G) * per_token <= peak[0] <= bound * per_token, gen


def test_compaction_happens_only_when_it_shrinks_the_batch(tiny):
    """Rows leave the batch at a look only if the new shape (prompts with a row going x the most
    going in a group, rounded up to a power of two) is at most COMPACT_AT of the rows: one group
    with 16 going and three with 1 stays at 64 rows (copying the whole cache for nothing, as
    before, at every look); groups with 3, 1, 1 and 0 going become 3 x 4 rows, the going rows
    first, in their order."""
    B, G = 4, 16
    with generation.passing_attention(tiny[0]), torch.no_grad():
        cache, rows = generation.prefill(tiny[0], [[1, 5, 6]] * B, [torch.arange(G)] * B, 8)
    going = [True] * G + ([True] + [False] * (G - 1)) * 3
    assert generation.compact(cache, rows, going, 1) == (cache, rows)
    going = [g < 3 for g in range(G)] + [g == 5 for g in range(G)] * 2 + [False] * G
    rows.done.copy_(~torch.tensor(going))
    cache, rows = generation.compact(cache, rows, going, 1)
    assert cache.own.shape[2] == 3 and cache.own.shape[4] == 4
    assert rows.job == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 5), (1, 0), (1, 1), (1, 2), (2, 5),
                        (2, 0), (2, 1), (2, 2)]
    assert rows.done.tolist() == [False] * 3 + [True] + [False, True, True, True] * 2


def uneven_prompts(tok):
    """5 prompts of 3 padded lengths (WIDTH_STEP 4): batches of 12 rows split them 3 + 2."""
    words = ["x", "a longer one than x", "y y y", "zz", "what is 2 + 2 and then 3 + 3"]
    return [tok(f"Problem: {w}")["input_ids"] for w in words]


def ending_apart(model, tok, ids, **kw):
    """A token that rows sample at many different steps: an EOS that ends them apart."""
    free = [row for group in generate(model, ids, eos_token_id=-1, **kw) for row in group]
    return max({t for row in free for t in row},
               key=lambda t: len({row.index(t) for row in free if t in row}))


def test_replayed_graphs_decode_what_eager_steps_decode(sharp, monkeypatch, standin, capsys):
    """CUDA graphs under the stand-in (a replay re-runs only the ops its capture recorded, on the
    tensors it recorded): the run first checks them against eager decoding (one line says so),
    then decodes from replayed graphs the tokens eager decoding draws, across batches of uneven
    sizes within a step (5 prompts x 4 rows in batches of 12: 3 prompts, then 2), steps with
    other seeds, prompts whose lengths change the padded length, rows ending at EOS at different
    steps (compaction at different times), and torchrun's shares (each process some samples of
    a prompt). A key seen before is replayed, not captured again."""
    model, tok = sharp
    for name, value in (("CHECK_EVERY", 3), ("WIDTH_STEP", 4)):
        monkeypatch.setattr(generation, name, value)
    ids = uneven_prompts(tok)
    kw = dict(n=4, max_new_tokens=24, temperature=1.0, pad_token_id=tok.pad_token_id,
              batch_size=12)
    eos = ending_apart(model, tok, ids, seed=1, **kw)
    graphs = extras.graphs.Graphs()
    for seed in (1, 2, 3):
        eager = generate(model, ids, eos_token_id=eos, seed=seed, **kw)
        assert generate(model, ids, eos_token_id=eos, seed=seed, graphs=graphs, **kw) == eager
        assert len({len(row) for group in eager for row in group}) > 2
    assert graphs.ok and "CUDA graphs" in capsys.readouterr().out
    assert sum(graph.replays for graph in standin) > 5 * len(standin)    # replayed, mostly
    shares = [[[0, 3], [1]], [[1, 2], [0, 2, 3]]]                 # two processes' samples
    for share in shares:
        n = dict(kw, n=share + [range(4)] * 3)
        assert generate(model, ids, eos_token_id=eos, seed=4, graphs=graphs, **n) == \
            generate(model, ids, eos_token_id=eos, seed=4, **n)
    captured = len(standin)
    generate(model, ids, eos_token_id=eos, seed=1, graphs=graphs, **kw)
    assert len(standin) == captured                              # every key seen: replayed


def test_a_lora_change_between_steps_reaches_replayed_graphs(sharp, monkeypatch, standin):
    """Rollouts run with the LoRA merged into the base weights in place: after a training step
    moves B, the graphs captured before replay the new weights (eager decoding's tokens, not the
    first step's)."""
    from lora import apply_lora, lora_modules, merged
    model, tok = copy.deepcopy(sharp[0]), sharp[1]
    apply_lora(model, r=4, alpha=8)
    monkeypatch.setattr(generation, "WIDTH_STEP", 4)
    ids = uneven_prompts(tok)[:2]
    kw = dict(n=4, max_new_tokens=12, temperature=1.0, eos_token_id=-1, seed=1)
    graphs = extras.graphs.Graphs()
    with merged(model):
        first = generate(model, ids, graphs=graphs, **kw)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.normal_(std=0.5)
    with merged(model):
        assert generate(model, ids, graphs=graphs, **kw) == generate(model, ids, **kw) != first


def test_the_stand_in_catches_a_stale_address_and_a_host_sync(sharp, monkeypatch, standin,
                                                              capsys):
    """The stand-in is as strict as a GPU. A weight replaced by a new tensor, not updated in
    place, is not seen by a replayed graph (it reads the old one): other tokens. A host sync in
    a decode step fails its capture, as on CUDA: one warning line, and the run goes on eagerly
    with eager decoding's tokens."""
    model, tok = copy.deepcopy(sharp[0]), sharp[1]
    monkeypatch.setattr(generation, "WIDTH_STEP", 4)
    ids = uneven_prompts(tok)[:2]
    kw = dict(n=4, max_new_tokens=12, temperature=1.0, eos_token_id=-1, seed=1)
    graphs = extras.graphs.Graphs()
    generate(model, ids, graphs=graphs, **kw)
    layer = model.model.layers[0].mlp.down_proj
    layer.weight = torch.nn.Parameter(layer.weight * 3)            # a new tensor
    assert generate(model, ids, graphs=graphs, **kw) != generate(model, ids, **kw)
    real = generation.decode_one_token

    def syncing(model, cache, rows, *args):
        real(model, cache, rows, *args)
        if rows.done.all():                                          # bool(): the host waits
            pass
    monkeypatch.setattr(generation, "decode_one_token", syncing)
    capsys.readouterr()
    graphs = extras.graphs.Graphs()
    assert generate(model, ids, graphs=graphs, **kw) == generate(model, ids, **kw)
    lines = capsys.readouterr().err.strip().splitlines()
    assert graphs.ok is False and len(lines) == 1 and "Tensor.__bool__" in lines[0]


@pytest.mark.parametrize("fault", ["otherwise", "check fails", "mid-run"])
def test_a_graph_that_fails_or_decodes_otherwise_leaves_the_run_decoding_eagerly(
        sharp, monkeypatch, standin, capsys, fault):
    """A replayed graph that computes something else than eager (a capture bug, a kernel that
    differs under capture) is caught by the first batch's check; a capture that fails, in the
    check or later at a new key (an OOM), is caught where it happens. Each time: one warning
    line, graphs off in stats(), and the run decodes eagerly from there: eager decoding's
    tokens."""
    model, tok = sharp
    monkeypatch.setattr(generation, "WIDTH_STEP", 4)
    ids = uneven_prompts(tok)[:2]
    kw = dict(n=4, max_new_tokens=12, temperature=1.0, eos_token_id=-1, seed=1)
    capture, keys = extras.graphs.capture, []

    def faulty(step, pool):
        graph = capture(step, pool)
        keys.append(1)
        if fault == "otherwise":                        # replays, then flips the logits
            replay = graph.replay
            graph.replay = lambda: replay() or step.args[2].logits.neg_()
        if fault == "check fails" or (fault == "mid-run" and len(keys) > 12):
            raise RuntimeError("CUDA out of memory")
        return graph
    monkeypatch.setattr(extras.graphs, "capture", faulty)
    graphs = extras.graphs.Graphs()
    many = dict(kw, max_new_tokens=40)                  # new widths after the check's
    assert generate(model, ids, graphs=graphs, **many) == generate(model, ids, **many)
    lines = capsys.readouterr().err.strip().splitlines()
    assert graphs.ok is False and graphs.stats()["cuda_graphs"] is False and len(lines) == 1
    assert lines[0].startswith("warning: CUDA graphs")
    assert ("out of memory" in lines[0]) == (fault != "otherwise")


def test_graphs_are_bounded_and_counted(sharp, monkeypatch, standin):
    """At most MAX_GRAPHS graphs are kept (the least recently replayed is dropped); stats() counts
    the kept ones and every capture; the tokens stay eager decoding's."""
    model, tok = sharp
    monkeypatch.setattr(generation, "WIDTH_STEP", 4)
    monkeypatch.setattr(extras.graphs, "MAX_GRAPHS", 3)
    ids = uneven_prompts(tok)[:2]
    kw = dict(n=4, max_new_tokens=24, temperature=1.0, eos_token_id=-1, seed=1)
    graphs = extras.graphs.Graphs()
    assert generate(model, ids, graphs=graphs, **kw) == generate(model, ids, **kw)
    stats = graphs.stats()
    assert stats["graphs"] == 3 < stats["graph_captures"] == len(standin)
    assert stats["cuda_graphs"] is True


def test_the_samplers_uniforms_are_fp32_whatever_the_default_dtype():
    """u = (23 hashed bits + 0.5) * 2^-23 in fp32 even under a bf16 default dtype (a bf16 u rounds
    to 1, E = -log u = 0, and p / E puts a p = 0 token first): all mass on one token is all the
    draws; a spread distribution keeps its frequencies."""
    from generation import mix, noise_roots, sample
    rows, vocab = 64, 512
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(vocab, (rows,), generator=gen)
    logits = torch.full((rows, vocab), float("-inf")).scatter_(1, target[:, None], 0.0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    noise = noise_roots(0, [(0, r) for r in range(rows)], "cpu")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        drawn = torch.stack([sample(logits, mix(noise ^ t))[0] for t in range(50)])     # [50, R]
        spread = torch.cat([sample(probs.log().expand(rows, -1), mix(noise ^ t))[0]
                            for t in range(200)])
    finally:
        torch.set_default_dtype(old)
    assert torch.equal(drawn, target.expand(50, -1))
    assert torch.allclose(torch.bincount(spread, minlength=4) / len(spread), probs, atol=0.02)


def test_per_layer_sliding_windows_decode_what_transformers_decodes(tiny):
    """Qwen2 with a sliding window on its first layer only (layer_types): each layer attends with
    its own window, as transformers' forward does (before: every layer got the window, and 9.7 %
    of greedy tokens matched)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = tiny[1]
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         use_sliding_window=True, sliding_window=3, max_window_layers=1,
                         layer_types=["sliding_attention", "full_attention"])
    model = sharpened(Qwen2ForCausalLM, config)
    ids = tok("Problem: a longer problem about $x^2$ and more")["input_ids"]
    ours = generate(model, [ids], n=1, max_new_tokens=16, temperature=0, eos_token_id=-1,
                    pad_token_id=tok.pad_token_id)[0][0]
    hf = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                        pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    assert ours == hf
    windowed = copy.deepcopy(model)
    windowed.config.layer_types = ["sliding_attention"] * 2
    for layer in windowed.model.layers:
        layer.self_attn.sliding_window = 3
    assert generate(windowed, [ids], n=1, max_new_tokens=16, temperature=0, eos_token_id=-1,
                    pad_token_id=tok.pad_token_id)[0][0] != ours   # the windows do matter here


def test_a_model_with_softcapped_attention_stops_before_decoding(tiny):
    """Gemma 2 caps its attention scores and logits (tanh), which the engine's attention and the
    update's LM head do not: one clear error, before any forward pass."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    config = Gemma2Config(vocab_size=len(tiny[1]), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16)
    model = Gemma2ForCausalLM(config).eval()
    model.forward = model.model.forward = None       # any forward pass would fail otherwise
    with pytest.raises(ValueError, match="gemma2 uses attn_logit_softcapping, "
                                         "final_logit_softcapping"):
        generate(model, [[1, 5, 6]], n=2, max_new_tokens=4)


def test_the_prompt_pass_keeps_one_kv_pair_per_layer_through_backward(monkeypatch):
    """Under activation checkpointing each layer's forward runs again in backward; the prompt
    pass's K/V must stay one pair per layer (before, each rerun appended another, holding its
    autograd graph: ~4 GB at 3,072 prompt tokens on a 7B)."""
    from extras.tiny import model as tiny_model
    from grpo import enable_checkpointing
    from lora import apply_lora
    model = apply_lora(tiny_model(500))
    enable_checkpointing(model)
    model.train()
    sizes, real = [], generation.prompt_attention

    def recording(module, q, k, v, prompt_kv=None, **kw):
        out = real(module, q, k, v, prompt_kv=prompt_kv, **kw)
        sizes.append(len(prompt_kv.layers))
        return out
    monkeypatch.setattr(generation, "prompt_attention", recording)
    with generation.passing_attention(model):
        prompt = generation.prompt_once(model, torch.tensor([[1, 5, 6, 7, 8]]))
        (prompt.kv.square().sum() + prompt.last.sum()).backward()
        generation.backward_through_prompt(prompt)
    layers = model.config.num_hidden_layers
    assert sizes == list(range(1, layers + 1)) + [layers] * layers     # forward, then the reruns
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if "lora_B" in n)  # the pass was reached


def test_stop_strings_are_decoded_only_where_one_can_end(tiny, monkeypatch):
    """A stop string can only be completed by a token whose text holds its last character (a letter
    that fewer than 5 % of the vocabulary's tokens hold, here): only those are decoded at a look,
    with the 11 tokens before them, and the rows still end where a decode of every token's window
    ends them."""
    model, tok = tiny
    monkeypatch.setattr(generation, "CHECK_EVERY", 5)
    ids = [tok("Problem: x")["input_ids"], tok("Problem: y = 2")["input_ids"]]
    kw = dict(n=8, max_new_tokens=48, temperature=1.0, seed=2, eos_token_id=-1)
    free = [row for group in generate(model, ids, **kw) for row in group]
    vocab = tok.batch_decode([[i] for i in range(len(tok))])
    rare = lambda c: sum(c in text for text in vocab)
    hit = lambda row, stops: next((u + 1 for u in range(len(row)) if any(
        s in tok.decode(row[max(0, u - 11):u + 1]) for s in stops)), len(row))
    letters = {c for row in free for c in tok.decode(row) if c.isalpha()}
    letters = {c for c in letters if rare(c) < len(vocab) / 20}
    stops = (max(sorted(letters), key=lambda c: len({hit(row, (c,)) for row in free})),)
    assert len({hit(row, stops) for row in free}) > 2      # rows end at different steps
    stop_finder(tok, stops)                                  # the vocabulary's texts, once
    decodes, real = [], tok.decode
    monkeypatch.setattr(tok, "decode", lambda *a, **k: decodes.append(1) or real(*a, **k))
    out = [row for group in generate(model, ids, stop=stop_finder(tok, stops), **kw)
           for row in group]
    assert 0 < len(decodes) < sum(map(len, out)) / 4       # not one decode per token
    assert out == [row[:hit(row, stops)] for row in free]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8), (2.0, 0.5), (0.0, 1.0)])
def test_the_sampler_gives_each_tokens_log_prob_and_the_entropy_it_was_drawn_with(temperature,
                                                                                  top_p):
    """With each token, its log-probability under the distribution it was drawn from (after the
    temperature and the nucleus, renormalised) and that distribution's entropy, computed here row
    by row from the logits; greedy: a point mass, 0 and 0."""
    from generation import noise_roots, sample
    torch.manual_seed(0)
    logits = torch.randn(8, 50) * 3
    token, logprob, entropy = sample(logits, noise_roots(0, [(0, r) for r in range(8)], "cpu"),
                                     temperature, top_p)
    for r in range(8):
        if temperature == 0:
            assert token[r] == logits[r].argmax() and logprob[r] == 0 == entropy[r]
            continue
        p = torch.softmax(logits[r].double() / temperature, -1)
        kept, mass = [], 0.0
        for i in p.argsort(descending=True).tolist():  # the smallest nucleus holding top_p
            if mass < top_p:
                kept.append(i)
                mass += p[i].item()
        q = {i: p[i].item() / mass for i in kept}
        assert token[r].item() in q
        assert logprob[r].item() == pytest.approx(math.log(q[token[r].item()]), abs=1e-5)
        assert entropy[r].item() == pytest.approx(-sum(x * math.log(x) for x in q.values()),
                                                  abs=1e-5)


def test_a_stop_string_begun_before_a_look_ends_its_row_where_it_ends(tiny, monkeypatch):
    """A stop string whose first tokens were drawn before the host's last look and whose last
    token after it still ends the row just after that token."""
    monkeypatch.setattr(generation, "CHECK_EVERY", 5)
    model, tok = tiny
    ids = [tok("Problem: x")["input_ids"]]
    kw = dict(n=1, max_new_tokens=20, temperature=1.0, seed=2, eos_token_id=-1)
    free = generate(model, ids, **kw)[0][0]
    stop = tok.decode(free[4:6])  # tokens 5 and 6: across the look after 5 tokens
    holds = [stop in tok.decode(free[:u]) for u in range(len(free) + 1)]
    assert holds.index(True) == 6  # nowhere sooner
    out = generate(model, ids, stop=stop_finder(tok, (stop,)), **kw)[0][0]
    assert out == free[:6]
