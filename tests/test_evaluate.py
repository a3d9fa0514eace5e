import contextlib
import json
import os
from fractions import Fraction
from math import comb

import pytest
import torch

import evaluate
from bench import copied_generate
from evaluate import maj_at_k, pass_at_k, vote_clusters
from extras import plot, stats
from extras.stats import betainc, welch_t_test
from generation import generate


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize("n,c,k", [
    (10, 0, 1),
    (10, 10, 1),
    (10, 3, 10),
    (10, 8, 3),
    (10, 7, 3),
    (16, 1, 4),
    (256, 1, 128),
    (2048, 1, 1024),
    (2048, 5, 1024),
    (2048, 2047, 1),
    (2048, 0, 1024),
    (2048, 1000, 1024),
    (2048, 3, 1),
])
def test_pass_at_k_equals_the_exact_rational(n, c, k):
    assert abs(pass_at_k(n, c, k) - float(exact_pass_at_k(n, c, k))) < 1e-12


def test_welch_matches_reference_values():
    # references: scipy.stats.ttest_ind(a, b, equal_var=False)
    a = [71.2, 72.5, 71.9, 72.8, 71.4, 72.0, 72.3, 71.7, 72.6, 71.5]
    b = [70.1, 70.9, 70.4, 70.8, 69.9, 70.6, 70.2, 70.7, 70.3, 70.5]
    cases = [(a, b, 7.736044728618026, 1.5916747965535678e-06),
             ([1, 2, 3, 4], [2, 4, 6, 8, 10, 12], -2.713602101199873, 0.03182444378084147),
             ([0.5, 0.51, 0.49], [0.52, 0.53, 0.5, 0.55], -2.100420126042015, 0.0959962757042303)]
    for x, y, t_ref, p_ref in cases:
        t, p = welch_t_test(x, y)
        assert abs(t - t_ref) < 1e-6
        assert abs(p - p_ref) < 1e-6 * max(1, p_ref)
        assert abs(p - p_ref) / p_ref < 1e-6
    assert abs(betainc(2, 3, 0.4) - 0.5248) < 1e-12                  # I_0.4(2,3) = 0.5248 exactly


def test_majority_vote_groups_equivalent_answers():
    preds = ["\\frac12", "0.5", "1/2", "3", "3", "3", "3", None]
    clusters = vote_clusters(preds)
    assert clusters[0] == clusters[1] == clusters[2] != clusters[3] == clusters[4]
    assert clusters[7] == -1
    correct = [True, True, True, False, False, False, False, False]
    assert maj_at_k(clusters, correct, 8) == 0.0                      # 4 votes for 3 beat 3 for 1/2
    assert maj_at_k(clusters[:6], correct[:6], 6) == 1.0  # 3 vs 3: the earliest cluster wins
    # subsets of 2 of [1/2, 0.5, 1/2-as-slash, 3]: a {1/2, 3} pair ties 1-1 and the earlier sample
    # (a 1/2) wins
    assert maj_at_k(clusters[:4], correct[:4], 2, trials=500) == 1.0
    assert maj_at_k([0, 1, 1], [True, False, False], 3) == 0.0  # 2 wrong votes beat 1 right


def eval_args(tmp_path, *extra):
    return ["--model", "tiny", "--data", "data/aime2025.jsonl", "--limit", "3",
            "--max-new-tokens", "12", "--output", str(tmp_path / "r.json"), *extra]


def test_sampling_run_writes_records_and_resumes_exactly(tmp_path):
    tmp_path = tmp_path / "results"  # --output's folder does not exist yet
    summary = evaluate.main(eval_args(tmp_path, "--samples", "8", "--k", "1,2,4,8"))
    assert summary["samples_per_problem"] == 8
    assert set(summary["strict"]) == {f"pass@{k}" for k in (1, 2, 4, 8)}
    assert set(summary["maj"]) == {f"maj@{k}" for k in (1, 2, 4, 8)}
    assert summary["num_problems"] == 3
    records = tmp_path / "r.json.records.jsonl"
    full = records.read_text().splitlines()
    assert len(full) == 24
    assert len({(json.loads(line)["id"], json.loads(line)["sample"]) for line in full}) == 24
    records.write_text("\n".join(full[:11]) + '\n{"id": "torn')     # interrupted inside problem 2
    again = evaluate.main(eval_args(tmp_path, "--samples", "8", "--k", "1,2,4,8"))
    assert records.read_text().splitlines() == full  # nothing lost, nothing duplicated
    assert again == summary
    # nothing of the first run is lost
    with pytest.raises(ValueError, match="another configuration"):
        evaluate.main(eval_args(tmp_path, "--samples", "8", "--k", "1,2,4,8", "--seed", "1"))
    assert records.read_text().splitlines() == full


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
    part = generate(model, ids[::-1], n=[[0, 3], [4, 1]], keys=[1, 0], seed=7, batch_size=3, **kw)
    assert part == [[a[1][0], a[1][3]], [a[0][4], a[0][1]]]
    assert generate(model, ids, n=[[], []], seed=7, **kw) == [[], []]


def test_sampling_draws_from_the_distribution():
    """The keyed exponential race samples each token with its probability (top_p: renormalised over
    the nucleus)."""
    from generation import mix, sample_keys, sample_next
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    keys = mix(sample_keys(0, [(0, s) for s in range(20000)], "cpu") ^ 3)  # [R]
    logits = probs.log().expand(len(keys), -1)
    freq = torch.bincount(sample_next(logits, 1.0, 1.0, keys), minlength=4) / len(keys)
    assert torch.allclose(freq, probs, atol=0.012), freq
    # top_p 0.7: the nucleus {0.5, 0.3}
    nucleus = torch.bincount(sample_next(logits, 1.0, 0.7, keys), minlength=4) / len(keys)
    assert torch.allclose(nucleus, torch.tensor([0.625, 0.375, 0, 0]), atol=0.012), nucleus


def test_sampling_never_draws_a_token_of_probability_zero():
    """Every hash maps to u strictly inside (0, 1): a token with p = 0 scores 0 / E = 0 and never
    wins. (u = 1 gave E = -0 and 0 / -0 = NaN, which argmax picks: ~1 in 2^24 token draws, 12
    expected here.) With top_p, no token outside the nucleus wins either."""
    from generation import mix, sample_keys, sample_next
    rows, steps, vocab = 100, 1000, 2048
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(vocab, (rows,), generator=gen)                                   # [R]
    # all mass on one token
    logits = torch.full((rows, vocab), float("-inf")).scatter_(1, target[:, None], 0.0)
    keys = sample_keys(0, [(0, r) for r in range(rows)], "cpu")
    # [steps, R]
    drawn = torch.stack([sample_next(logits, 1.0, 1.0, mix(keys ^ t)) for t in range(steps)])
    assert drawn.numel() >= 10 ** 5 and torch.equal(drawn, target.expand(steps, -1))
    logits = torch.randn(rows, vocab, generator=gen) * 3
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    in_nucleus = sorted_probs.cumsum(-1) - sorted_probs <= 0.95
    nucleus = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, in_nucleus)  # [R, V]
    # [200, R]
    drawn = torch.stack([sample_next(logits, 1.0, 0.95, mix(keys ^ t)) for t in range(200)])
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
    alone = [generate(model, [x], keys=[i], **kw)[0] for i, x in enumerate(ids)]
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
    import generation
    model, tok = sharp
    calls, compact = [], generation.compact
    monkeypatch.setattr(generation, "compact",
                        lambda rows, alive: calls.append(sum(alive)) or compact(rows, alive))
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
    assert generate(model, ids, eos_token_id=eos, **kw) == copied and calls


def test_stop_strings_cut_each_row_where_its_text_first_holds_one(tiny, monkeypatch):
    """Stop strings are read from the host every few steps, for all rows at once; each row still
    ends at the token where the text of its last 12 tokens first holds a stop string, as if it were
    checked at every step."""
    import generation
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
    out = generate(model, ids, eos_token_id=eos, stop_strings=stops, tokenizer=tok, **kw)
    assert [row for group in out for row in group] == ended


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_decode_step_by_hand_samples_what_transformers_forward_samples(
        sharp, monkeypatch, dtype):
    """decode_forward with a plan (the model's forward written out on its own weights) against
    transformers' forward through the same attention (decode_forward without a plan): the same
    tokens, greedy and sampled, in fp32 and in bf16 (the GPU's dtype), where both round alike."""
    import copy

    import generation
    model, tok = copy.deepcopy(sharp[0]).to(dtype), sharp[1]
    ids = [tok("Problem: x")["input_ids"],
           tok("Problem: a much longer problem statement")["input_ids"]]
    for temperature in (0.0, 1.0):
        kw = dict(n=3, max_new_tokens=12, temperature=temperature, eos_token_id=-1,
                  pad_token_id=tok.pad_token_id)
        by_hand = generate(model, ids, **kw)
        with monkeypatch.context() as m:
            m.setattr(generation, "decode_plan", lambda model: None)
            assert generate(model, ids, **kw) == by_hand


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
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
        model.get_output_embeddings().weight.mul_(30)
    ids = [tiny[1]("Problem: x")["input_ids"],
           tiny[1]("Problem: a longer problem, $x^2$")["input_ids"]]
    kw = dict(n=4, max_new_tokens=10, temperature=1.0, top_p=1.0,
              pad_token_id=tiny[1].pad_token_id, seed=1)
    assert generate(model, ids, **kw) == copied_generate(model, ids, **kw)


@pytest.mark.parametrize("window", [None, 3, 6])
def test_shared_prompt_attention_equals_attention_over_the_concatenation(window):
    """One softmax over [the prompt's one copy of K/V; the row's own], against softmax attention
    over the concatenated keys row by row: values and gradients, GQA, 2 prompts x 2 rows, a prompt
    shorter than the buffer (zero past its end, not seen), several queries per row (the update's
    shape) and sliding windows (3: some queries see no prompt key at all)."""
    from generation import NO_KEY, SharedPrompts, shared_prompt_attention, visible
    torch.manual_seed(0)
    B, G, Hkv, H, P, T, d = 2, 2, 2, 4, 5, 3, 8
    length = torch.tensor([5, 2])
    past_two = torch.arange(P)[None, None, :, None] >= 2
    kp, vp = (torch.randn(B, Hkv, P, d).masked_fill(past_two, 0)
              .index_copy(0, torch.tensor([0]), torch.randn(1, Hkv, P, d)).requires_grad_()
              for _ in "kv")
    q, k, v = (torch.randn(B * G, h, T, d, requires_grad=True) for h in (H, Hkv, Hkv))
    slots = torch.arange(P)
    prompt_pos = torch.where(slots < length[:, None], slots, NO_KEY)
    key_pos = torch.cat([prompt_pos, length[:, None] + torch.arange(T)], 1)
    allowed = visible(key_pos, length[:, None] + torch.arange(T), window)  # [B, 1, 1, T, P + T]
    layer = type("Layer", (), {"layer_idx": 0})()
    out, _ = shared_prompt_attention(layer, q, k, v, scaling=d ** -0.5,
                                     shared=SharedPrompts([kp], [vp], allowed))  # [R, T, H, d]
    prompt = torch.arange(B).repeat_interleave(G)  # [R]
    keys = torch.cat([kp[prompt], k], 2).repeat_interleave(H // Hkv, 1)  # [R, H, P + T, d]
    values = torch.cat([vp[prompt], v], 2).repeat_interleave(H // Hkv, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, keys, values,
                                                           attn_mask=allowed[prompt, 0])
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, kp, vp))
    ref_grads = torch.autograd.grad(ref.transpose(1, 2).square().sum(), (q, k, v, kp, vp))
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)
    if window == 3:
        assert not allowed[..., :P].any(-1).all()  # some queries see no prompt key at all


def test_sliding_window_models_share_the_prompt_too(sharp, monkeypatch):
    """A sliding-window model (window 4, far shorter than prompt + completion) goes through
    shared_prompt_attention and samples the tokens of the copying path, whose window is
    transformers' own mask."""
    import copy

    import generation
    calls = []
    real = generation.shared_prompt_attention
    monkeypatch.setattr(generation, "shared_prompt_attention",
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
                       eos_token_id=tok.eos_token_id, stop_strings=(stop,), tokenizer=tok)[0][0]
    assert stopped == free[:len(stopped)] and len(stopped) < len(free)
    assert stop in tok.decode(stopped)


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate.main(["--model", "tiny", "--data", str(tmp_path / "nope.jsonl")])


def test_compare_reads_seed_files_and_prints_welch(tmp_path, capsys):
    a = [{"strict": {"pass@1": v}}
         for v in (0.712, 0.725, 0.719, 0.728, 0.714, 0.720, 0.723, 0.717, 0.726, 0.715)]
    b = [{"strict": {"pass@1": v}}
         for v in (0.701, 0.709, 0.704, 0.708, 0.699, 0.706, 0.702, 0.707, 0.703, 0.705)]
    for name, runs in (("a", a), ("b", b)):
        for i, r in enumerate(runs):
            (tmp_path / f"{name}{i}.json").write_text(json.dumps(r))
    files = lambda name: ",".join(str(tmp_path / f"{name}{i}.json") for i in range(10))
    groups = evaluate.main(["compare", f"matched-wrong={files('b')}",
                            f"mismatched-wrong={files('a')}"])
    assert [len(v) for _, v in groups] == [10, 10]
    out = capsys.readouterr().out
    assert "mismatched-wrong" in out and "+1.55" in out and "7.74" in out and "0.0000" in out


def test_compare_pools_a_repeated_label_as_the_shell_passes_brace_expansions(tmp_path, capsys):
    values = {"mw": (0.712, 0.725, 0.719, 0.728), "mtw": (0.701, 0.709, 0.704, 0.708)}
    for name, vs in values.items():
        for i, v in enumerate(vs):
            (tmp_path / f"{name}{i}.json").write_text(json.dumps({"strict": {"pass@1": v}}))
    path = lambda name, i: str(tmp_path / f"{name}{i}.json")
    # `mw=mw{0..3}.json`: 4 words
    braces = [f"{name}={path(name, i)}" for name in values for i in range(4)]
    commas = [f"{name}=" + ",".join(path(name, i) for i in range(4)) for name in values]
    assert evaluate.main(["compare", *braces]) == evaluate.main(["compare", *commas])
    by_braces, by_commas = capsys.readouterr().out.split("variant")[1:]
    assert by_braces == by_commas and [len(v) for _, v in stats.compare(commas)] == [4, 4]
    t, p = welch_t_test([100 * v for v in values["mtw"]], [100 * v for v in values["mw"]])
    assert f"{t:7.2f} {p:8.4f}" in by_braces  # one row with t and p
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        evaluate.main(["compare", f"x={tmp_path / 'bad.json'}"])
    with pytest.raises(KeyError, match="mw0.json: no 'lenient.pass@1'"):
        evaluate.main(["compare", "--metric", "lenient.pass@1", f"x={path('mw', 0)}"])


def fake_result(data, samples, curve, prompt="nodraft"):
    ks = [2 ** i for i in range(len(curve))]
    return {"data": f"data/{data}.jsonl", "prompt": prompt, "samples": samples,
            "strict": {f"pass@{k}": v for k, v in zip(ks, curve)}}


def colours(png):
    from matplotlib.image import imread
    pixels = imread(png)  # [H, W, 4] floats: it decodes
    return len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1]).tolist()})


def test_plot_results_draws_pass_at_k_and_greedy_panels(tmp_path):
    pytest.importorskip("matplotlib")
    files = {}
    for label, base in (("mw", 0.72), ("mtw", 0.70)):
        for s in range(3):
            files.setdefault(label, []).append(tmp_path / f"{label}-greedy{s}.json")
            files[label][-1].write_text(json.dumps(fake_result("math500", 1, [base + 0.004 * s])))
    for s in range(2):
        files["mw"].append(tmp_path / f"mw-aime{s}.json")
        curve = [0.1 + s / 50, 0.2, 0.3, 0.4, 0.5]
        files["mw"][-1].write_text(json.dumps(fake_result("aime2025", 16, curve)))
    baseline = fake_result("aime2025", 16, [0.05, 0.1, 0.2, 0.3, 0.35], "instruct")
    (tmp_path / "base.json").write_text(json.dumps(baseline))
    specs = [f"mw={f}" for f in files["mw"]] + ["mtw=" + ",".join(map(str, files["mtw"])),
                                                 f"base={tmp_path / 'base.json'}"]
    fig = plot.plot_results(specs, reference="mtw")
    passk, greedy = fig.axes
    assert passk.get_title() == "aime2025: pass@k" and passk.get_xscale() == "log"
    styles = [(line.get_label(), line.get_linestyle()) for line in passk.get_lines()]
    assert styles == [("mw (2 seeds, min-max)", "-"), ("base", "--")]  # baseline dashed
    assert list(passk.get_lines()[0].get_xdata()) == [1, 2, 4, 8, 16]
    assert passk.get_lines()[0].get_ydata()[0] == pytest.approx(100 * (0.1 + 0.01))  # mean of seeds
    assert greedy.get_title().startswith("math500: pass@1") and "vs mtw" in greedy.get_title()
    p = welch_t_test([72.0, 72.4, 72.8], [70.0, 70.4, 70.8])[1]
    assert [t.get_text() for t in greedy.texts] == [f"p = {p:.2g}"]  # mw against the reference
    assert [t.get_text() for t in greedy.get_xticklabels()] == ["mw", "mtw"]
    evaluate.main(["plot", *specs, "--reference", "mtw", "--output", str(tmp_path / "fig.png")])
    assert colours(tmp_path / "fig.png") > 50                                          # not blank
    with pytest.raises(ValueError, match="--reference 'nope'"):
        plot.plot_results(specs, reference="nope")


def test_plot_metrics_draws_training_curves(tmp_path):
    pytest.importorskip("matplotlib")
    for run, rate in (("mw-seed0", 0.1), ("nd-seed0", None)):
        os.makedirs(tmp_path / run)
        with open(tmp_path / run / "metrics.jsonl", "w") as f:
            for step in range(1, 41):
                row = {"step": step, "reward": step / 40, "completion_length": 100 - step,
                       "frac_reward_zero_std": 0.5, "entropy": 2 - step / 40,
                       "grad_norm": float("nan") if step == 7 else 0.1,
                       "draft_answer_rate": rate, "gold_answer_rate": rate and step / 40}
                f.write(json.dumps(row) + "\n")
    fig = plot.plot_metrics([str(tmp_path / "mw-seed0"), str(tmp_path / "nd-seed0") + "/"],
                            window=4)
    shown = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split()[0] for ax in shown] == ["reward", "completion_length",
                                                           "frac_reward_zero_std", "entropy",
                                                           "grad_norm", "draft_answer_rate",
                                                           "gold_answer_rate"]
    reward = shown[0].get_lines()[0]
    assert reward.get_label() == "mw-seed0"
    assert reward.get_ydata()[5] == pytest.approx((3 + 4 + 5 + 6) / 4 / 40)
    assert len(shown[4].get_lines()[0].get_xdata()) == 39  # the NaN step left out
    # no-draft: no draft curve
    assert [len(line.get_xdata()) for line in shown[5].get_lines()] == [40, 0]
    os.makedirs(tmp_path / "short")
    short = "".join(json.dumps({"step": s, "reward": s / 3}) + "\n" for s in (1, 2, 3))
    (tmp_path / "short" / "metrics.jsonl").write_text(short)
    fig = plot.plot_metrics([str(tmp_path / "short")])  # 3 steps: matplotlib would say 1.5
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    ticks = [float(text.replace("\u2212", "-")) for text in labels]
    assert ticks and all(t == int(t) for t in ticks)  # steps: integer ticks only
    evaluate.main(["plot", "--metrics", str(tmp_path / "mw-seed0"),
                   "--output", str(tmp_path / "curves.png")])
    assert colours(tmp_path / "curves.png") > 50


def test_plot_without_matplotlib_names_the_install_command(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install matplotlib"):
        evaluate.main(["plot", "--metrics", str(tmp_path), "--output", str(tmp_path / "x.png")])


def test_rollouts_hold_each_prompt_once(tiny):
    """The KV cache a rollout batch holds is at most B*P + B*G*L tokens (each prompt once, each row
    its own tokens); copying the prompt to each row holds B*G*(P + L). Counted on every decode
    step's cache, each tensor once."""
    import copy

    from bench import kv_bytes_held  # bench.py rollout's counter, on a copy
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    B, G, P, L = 3, 4, 40, 10
    ids = [torch.randint(4, 500, (P,)).tolist() for _ in range(B)]
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4
    for gen, bound in ((generate, B * P + B * G * L), (copied_generate, B * G * (P + L))):
        with kv_bytes_held(model) as peak:
            gen(model, ids, n=G, max_new_tokens=L, eos_token_id=-1, pad_token_id=tok.pad_token_id)
        # counted entering each step
        assert (bound - B * G) * per_token <= peak[0] <= bound * per_token, gen
