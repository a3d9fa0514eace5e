"""Model loading and batched sampling, shared by drafts.py, grpo.py and evaluate.py.

generate() prefills each prompt once and keeps its K/V once: the rows sampled from it cache only
their own tokens, and attention reads the prompt's K/V through shared_prompt_attention (one softmax
over [prompt; own]). A batch decodes with fixed shapes into preallocated buffers, so a CUDA graph
can replay a step; every CHECK_EVERY steps the host looks: EOS and stop strings end rows, and once
at most COMPACT_AT of them are still going, the batch shrinks to those. decode_forward is the
model's forward written out for Mistral, Llama and Qwen2 (any other model runs transformers'
forward). Sample s of prompt p draws from noise keyed by (seed, p's key, s, step): its tokens do
not depend on the batch or the process. The update holds each prompt once too (prompt_once,
completion_states). `--model tiny` (extras/tiny.py) builds a random Mistral-architecture model and
a BPE tokenizer on the spot, so the pipeline runs offline on a CPU. Under torchrun, distributed(),
gather() and rounds() are all that the three scripts need.
"""
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist
from tqdm import tqdm

import extras.tiny


# ----------------------------------------------------------------------------- models
def from_hub(auto, name, **kw):
    """auto.from_pretrained(name, **kw) for a local folder or a hub id; one that does not load is an
    error naming it."""
    try:
        return auto.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:
        why = "the folder does not load" if os.path.isdir(name) else \
            "not a folder, and it did not load from the hub"
        raise ValueError(f"--model {name}: {why} ({str(e).strip().splitlines()[0]})") from None


def load_tokenizer(name, trust_remote_code=False):
    """The tokenizer alone (a hub id, a local folder or 'tiny'), with a pad token for batching."""
    from transformers import AutoTokenizer
    if name == "tiny":
        tokenizer = extras.tiny.tokenizer()
    else:
        tokenizer = from_hub(AutoTokenizer, name, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(name, device=None, dtype=None, trust_remote_code=False):
    """(model, tokenizer) from a hub id or local directory, or 'tiny'. bf16 on CUDA, fp32 on CPU by
    default."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = load_tokenizer(name, trust_remote_code)
    if name == "tiny":
        model = extras.tiny.model(len(tokenizer)).to(device=device, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM
        model = from_hub(AutoModelForCausalLM, name, dtype=dtype,
                         trust_remote_code=trust_remote_code).to(device)
    return model.eval(), tokenizer


def cache_bytes(model, prompt_tokens, rows, new_tokens):
    """The most K/V bytes a rollout batch holds: each prompt's once, plus every row's own new
    tokens."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim
    return per_token * model.dtype.itemsize * (prompt_tokens + rows * new_tokens)


# ----------------------------------------------------------------------------- sampling
def mix(x):
    """A 32-bit integer hash of an int64 tensor (values < 2**32; constants < 2**31, so no product
    overflows)."""
    for c in (0x7FEB352D, 0x45D9F3B):
        x = ((x ^ (x >> 16)) * c) & 0xFFFFFFFF
    return x ^ (x >> 16)


def sample_next(logits, temperature, top_p, keys):
    """logits [R, V], keys [R] (one per row and step) -> next tokens [R]. temperature 0 = greedy;
    else nucleus (top_p) filtering, then argmax p / E with E ~ Exp(1) hashed from (key, token):
    exactly a draw from p, the row's own. (An inverse CDF needs one hash per row, not V, but float
    rounding of the logits moves a cumulative sum across a token boundary ~1,000x as often as it
    reorders the race's top two: batches and processes would disagree more.)"""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest nucleus
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    token = torch.arange(probs.shape[-1], device=probs.device)                              # [V]
    # 23 bits + 0.5 are exact in fp32: u in (0, 1), E > 0, 0/E = 0
    u = ((mix(keys[:, None] ^ token) >> 9) + 0.5) * 2 ** -23                            # [R, V]
    return (probs / -torch.log(u)).argmax(dim=-1)


def sample_keys(seed, jobs, device):
    """[R] int64: the root of each (prompt key, sample) job's noise under `seed`; step t's key is
    mix(root ^ t)."""
    key = torch.tensor([[seed & 0xFFFFFFFF, p, s] for p, s in jobs], device=device)  # [R, 3]
    return mix(mix(mix(key[:, 0]) ^ key[:, 1]) ^ key[:, 2])


# ---------------------------------------------------------------- attention: each prompt's K/V once
# the position given to a slot that holds no key (past a prompt's end): no query sees it
NO_KEY = 2 ** 40


@dataclasses.dataclass
class SharedPrompts:
    """What shared_prompt_attention reads beside a layer's own query, key and value. Rows are laid
    out prompt by prompt, G to a prompt (row b * G + g), so a prompt's rows reach its one copy of
    K/V through a reshape."""
    keys: list                  # per layer [B, Hkv, P, d]: each prompt's K/V, zero past its end
    values: list
    visible: torch.Tensor       # [B, 1, 1, T, P + S] bool: the prompt and own keys each query sees
    # decoding: per layer [K, V], each [B, Hkv, G, L, d]: the rows' own tokens so far
    cache: list = None
    slot: torch.Tensor = None   # decoding: [1], the cache slot of this step's token
    width: int = 0              # decoding: the own slots a step reads, the cache's first `width`


def visible(key_pos, query_pos, window=None):
    """key_pos [B, K], query_pos [B, T] -> [B, 1, 1, T, K] bool: a query sees the keys at or before
    its position (within the sliding window, if the model has one)."""
    back = query_pos[:, :, None] - key_pos[:, None, :]  # [B, T, K]
    return ((back >= 0) & (back < (window or NO_KEY)))[:, None, None]


def shared_prompt_attention(module, query, key, value, attention_mask=None, scaling=None,
                            dropout=0.0, shared=None, record=None, sliding_window=None, **kwargs):
    """Softmax attention of R rows over their prompt's K/V, held once for its G rows, and their own
    tokens' K/V; registered with transformers as "shared_prompts", so Mistral, Llama and Qwen2 run
    it unchanged. Its plain equivalent, for row r of prompt b: softmax(q [K_b; K_r]^T * scaling,
    masked by `visible`) [V_b; V_r]. query [R, H, T, d]; key, value [R, Hkv, S, d]: the rows' own
    (decoding: this step's, kept in shared.cache). Products in the model's dtype, softmax in fp32,
    as transformers' eager attention. record (a list): a prompt pass instead: causal SDPA over one
    prompt, whose K/V each layer appends to the list."""
    if record is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        record.append((key, value))
        pos = torch.arange(key.shape[2], device=key.device)[None]
        mask = visible(pos, pos, sliding_window)[:, 0] if sliding_window else None  # [1, 1, P, P]
        return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling)
    kp, vp = shared.keys[module.layer_idx], shared.values[module.layer_idx]  # [B, Hkv, P, d]
    (R, H, T, d), (B, Hkv, P, _) = query.shape, kp.shape
    G, M = R // B, H // Hkv * T  # GQA: query head h reads K/V head h // (H // Hkv)
    by_prompt = lambda x: x.view(B, G, Hkv, -1, d).transpose(1, 2)  # [B, Hkv, G, *, d]
    if shared.cache is None:
        key, value = by_prompt(key), by_prompt(value)
    else:  # decoding: this step's K/V into its slot, then all the slots so far
        kc, vc = shared.cache[module.layer_idx]  # [B, Hkv, G, L, d]
        key = kc.index_copy_(3, shared.slot, by_prompt(key))[..., :shared.width, :]
        value = vc.index_copy_(3, shared.slot, by_prompt(value))[..., :shared.width, :]
    S, N = key.shape[3], B * Hkv * G  # a batch of B*Hkv products per prompt, N per row
    q = (query * scaling).reshape(B, G, Hkv, M, d).transpose(1, 2).reshape(B * Hkv, G * M, d)
    scores = torch.cat([torch.bmm(q, kp.reshape(B * Hkv, P, d).transpose(1, 2)),  # a prompt's rows
                        torch.bmm(q.view(N, M, d), key.reshape(N, S, d).transpose(1, 2))  # each row
                        .view(B * Hkv, G * M, S)], -1)                     # [B * Hkv, G * M, P + S]
    scores = scores.view(B, Hkv, G * H // Hkv, T, P + S).where(shared.visible, float("-inf"))
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype)  # one softmax over both
    probs = probs.view(B * Hkv, G * M, P + S)
    out = torch.bmm(probs[..., :P], vp.reshape(B * Hkv, P, d)) + \
        torch.bmm(probs[..., P:].view(N, M, S), value.reshape(N, S, d)).view(B * Hkv, G * M, d)
    return out.view(B, Hkv, G, M, d).transpose(1, 2).reshape(R, H, T, d).transpose(1, 2), None


@contextlib.contextmanager
def sharing_prompts(model):
    """Within the block (backward passes included: checkpointed layers replay their forward there),
    attention layers run shared_prompt_attention, and transformers builds no mask (the function's
    `visible` is the mask)."""
    from transformers import AttentionInterface
    AttentionInterface.register("shared_prompts", shared_prompt_attention)
    old, model.config._attn_implementation = model.config._attn_implementation, "shared_prompts"
    try:
        yield
    finally:
        model.config._attn_implementation = old


def prompt_pass(model, ids):
    """One prompt (token ids) through the decoder alone: no padding, so no fully masked row for a
    fused kernel to return NaN on. Returns its hidden states [1, P, H] and each layer's (K, V), [1,
    Hkv, P, d] each."""
    record = []
    with sharing_prompts(model):
        hidden = model.get_decoder()(input_ids=torch.tensor([ids], device=model.device),
                                     use_cache=False, record=record).last_hidden_state
    return hidden, record


# ---------------------------------------------------------------------- the update: the prompt once
class Prompt(NamedTuple):
    # [1, 1, H]: the prompt's last hidden state (it predicts a completion's first token)
    last: torch.Tensor
    keys: list                  # per layer [1, Hkv, P, d]
    values: list


@contextlib.contextmanager
def prompt_once(model, ids):
    """The prompt's forward pass, once for all its completions: yields a Prompt whose tensors are
    leaves cut from the pass, which every micro-batch of completions attends to (completion_states);
    on leaving the block, their summed gradient flows back through the pass once. Attention layers
    share prompts within the block, backward included."""
    with sharing_prompts(model):
        hidden, kv = prompt_pass(model, ids)
        # last hidden, K0, V0, K1, V1, ...
        states = [hidden[:, -1:]] + [t for pair in kv for t in pair]
        leaves = [t.detach().requires_grad_() for t in states]
        yield Prompt(leaves[0], leaves[1::2], leaves[2::2])
        grads = [(s, leaf.grad) for s, leaf in zip(states, leaves) if leaf.grad is not None]
        torch.autograd.backward([s for s, _ in grads], [g for _, g in grads])


def completion_states(model, prompt, ids):
    """ids [n, T]: completions of `prompt` (padded at the end) -> hidden states [n, T, H], position
    t predicting token t: the prompt's last state, then each completion's own up to T - 1 (the
    next-token shift, in one place). Each row attends to the prompt's one copy of K/V (plainly: the
    decoder run over [prompt; completion])."""
    (n, T), P = ids.shape, prompt.keys[0].shape[2]
    pos = torch.arange(P + T, device=ids.device)[None]  # [1, P + T]
    window = getattr(model.config, "sliding_window", None)
    shared = SharedPrompts(prompt.keys, prompt.values, visible(pos, pos[:, P:], window))
    hidden = model.get_decoder()(input_ids=ids, position_ids=pos[:, P:].expand(n, -1),
                                 use_cache=False, shared=shared).last_hidden_state  # [n, T, H]
    return torch.cat([prompt.last.expand(n, -1, -1), hidden[:, :-1]], 1)


# ----------------------------------------------------------------------------- rollouts
# decode steps between two looks from the host: EOS and stop strings, the end, compaction
CHECK_EVERY = 16
# CUDA graphs: a step reads the own slots up to the next multiple of this (few shapes)
WIDTH_STEP = 128
COMPACT_AT = 0.5  # at a look, finished rows leave the batch once at most this share is still going
# decoders whose layers decode_forward knows: norm, q/k/v/o, RoPE, MLP
FAMILIES = ("mistral", "llama", "qwen2")


@dataclasses.dataclass
class Rows:
    """A batch being decoded: B prompts x G rows (row b * G + g); each field is indexed by prompt or
    by row."""
    shared: SharedPrompts       # the prompts' K/V (by prompt) and the rows' own caches (by row)
    length: torch.Tensor        # [B] prompt lengths
    # [B, P + L] the position of every prompt and own slot (NO_KEY past a prompt)
    key_pos: torch.Tensor
    start: torch.Tensor         # [R] the position of a row's first new token (its prompt's length)
    noise: torch.Tensor         # [R] the root of a row's noise
    line: torch.Tensor          # [R] a row's line in the batch's token table
    done: torch.Tensor  # [R] finished: EOS, a stop string, or a filler evening out the groups
    logits: torch.Tensor        # [R, V] the next token's


def decode_plan(model):
    """What decode_forward multiplies by, taken once per batch: per layer the seven projections'
    (weight transposed, bias), the LM head's, and constants as 0-d tensors (a Python float costs a
    tensor conversion per op). None where decode_forward cannot run: another family, or an adapter
    applied unmerged."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    linears = [[getattr(part, name) for part in (layer.self_attn, layer.mlp) for name in names
                if hasattr(part, name)] for layer in decoder.layers] + [[head]]
    unmerged = any(not getattr(m, "merged", True) for ms in linears for m in ms)
    if model.config.model_type not in FAMILIES or unmerged:
        return None
    base = lambda m: getattr(m, "base_layer", m)
    layers = [[(base(m).weight.t(), base(m).bias) for m in ms] for ms in linears]
    d, const = decoder.layers[0].self_attn.head_dim, lambda x: torch.tensor(x, dtype=torch.float32)
    ones = torch.ones(d, device=head.weight.device, dtype=head.weight.dtype)
    return dict(layers=layers[:-1], head=layers[-1][0],
                eps=const(decoder.norm.variance_epsilon), width=const(model.config.hidden_size),
                scaling=const(decoder.layers[0].self_attn.scaling),
                half=torch.arange(d, device=ones.device).roll(d // 2),  # rotate_half(x):
                sign=torch.cat([-ones[:d // 2], ones[d // 2:]]))        # x[half] * sign


def decode_forward(model, plan, ids, position, shared):
    """ids [R] (one new token per row), their positions [R] -> next-token logits [R, V]. With a plan
    (decode_plan), the model's forward by hand on its own weights, the same arithmetic in about half
    the ops of transformers' generic forward, which is the plain equivalent (run without a plan; the
    two give the same tokens, tested): hidden states stay [R, H], no masks or kwargs, and the
    constants are tensors."""
    if plan is None:
        return model(input_ids=ids[:, None], position_ids=position[:, None], use_cache=False,
                     shared=shared).logits[:, -1]
    decoder, R = model.get_decoder(), len(ids)
    linear = lambda x, wb: torch.mm(x, wb[0]) if wb[1] is None else torch.addmm(wb[1], x, wb[0])

    def rms_norm(x, norm):  # transformers' RMSNorm: in fp32, then the weight in the input dtype
        h = x.float()
        sum_sq = (h * h).sum(-1, keepdim=True)
        return norm.weight * (h * sum_sq.div_(plan["width"]).add_(plan["eps"]).rsqrt_()).to(x.dtype)
    x = decoder.embed_tokens(ids)  # [R, H]
    cos, sin = (t[:, None] for t in decoder.rotary_emb(x, position[:, None]))  # [R, 1, 1, d]
    sin = sin * plan["sign"]  # RoPE: x * cos + rotate_half(x) * sin, rotate_half by an index
    for layer, (wq, wk, wv, wo, wg, wu, wd) in zip(decoder.layers, plan["layers"]):
        h = rms_norm(x, layer.input_layernorm)
        q, k, v = (linear(h, w).view(R, -1, 1, cos.shape[-1]) for w in (wq, wk, wv))  # [R, *, 1, d]
        q, k = (t * cos + t.index_select(-1, plan["half"]) * sin for t in (q, k))
        attention = shared_prompt_attention(layer.self_attn, q, k, v, scaling=plan["scaling"],
                                            shared=shared)[0]
        x = x + linear(attention.reshape(R, -1), wo)
        h = rms_norm(x, layer.post_attention_layernorm)
        x = x + linear(layer.mlp.act_fn(linear(h, wg)) * linear(h, wu), wd)
    return linear(rms_norm(x, decoder.norm), plan["head"])  # [R, V]


def decode_step(model, plan, rows, tokens, sample, eos_token_id, pad_token_id):
    """One token for every row: the same shapes at every step of a width, and nothing asked of the
    host, so a CUDA graph can capture it. A finished row samples on, masked: its tokens go to the
    table as padding."""
    s = rows.shared
    nxt = sample(rows.logits, mix(rows.noise ^ s.slot)).masked_fill_(rows.done, pad_token_id)  # [R]
    tokens.index_put_((rows.line, s.slot), nxt)
    rows.done |= nxt == eos_token_id
    keys_read = rows.key_pos[:, :s.keys[0].shape[2] + s.width]                       # [B, P + W]
    query_pos = (rows.length + s.slot)[:, None]                                         # [B, 1]
    s.visible = visible(keys_read, query_pos, getattr(model.config, "sliding_window", None))
    rows.logits.copy_(decode_forward(model, plan, nxt, rows.start + s.slot, s))
    s.slot += 1


def compact(rows, alive):
    """The rows still going, each prompt's padded to a common G with its finished ones, in buffers
    of their size: later steps read and compute for them alone. alive: [R] bools, read at a look."""
    B, G = len(rows.length), len(alive) // len(rows.length)
    groups = [sorted(range(b * G, b * G + G), key=lambda r: not alive[r]) for b in range(B)]
    keep = [b for b in range(B) if alive[groups[b][0]]]        # prompts with a row going
    width = max(sum(alive[b * G:b * G + G]) for b in range(B))  # G': the most going in a group
    pick = torch.tensor([groups[b][:width] for b in keep], device=rows.done.device)  # [B', G']
    s, by_prompt, by_row = rows.shared, torch.tensor(keep, device=pick.device), pick.view(-1)
    s.keys, s.values = [k[by_prompt] for k in s.keys], [v[by_prompt] for v in s.values]
    for layer in s.cache:  # layer by layer: the old one freed at once
        for i, x in enumerate(layer):
            layer[i] = x.new_zeros(len(keep), x.shape[1], width, *x.shape[3:])  # [B',Hkv,G',L,d]
            layer[i][..., :s.width, :] = x[pick // G, :, pick % G, :s.width].transpose(1, 2)
    return Rows(s, rows.length[by_prompt], rows.key_pos[by_prompt],
                *(getattr(rows, f)[by_row] for f in ("start", "noise", "line", "done", "logits")))


def captured(graphs, key, step):
    """Run step() as a CUDA graph, one per shape: the first time a shape comes, step() runs eagerly
    (on a side stream: the capture's warm-up, and a real step), then is captured, not run; later
    steps replay the graph."""
    if key in graphs:
        return graphs[key].replay()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    pool = graphs.setdefault("pool", torch.cuda.graph_pool_handle())   # one pool for every shape
    graphs[key] = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graphs[key], pool=pool):
        step()


def decode(model, prompts, noise, max_new_tokens, sample, eos_token_id, pad_token_id, stop,
           cuda_graphs):
    """One batch: prompts (token-id lists) and per prompt its rows' noise roots -> each row's tokens
    (EOS kept)."""
    device, L, B, G = model.device, max_new_tokens, len(prompts), max(map(len, noise))
    hidden, passes = zip(*[prompt_pass(model, ids) for ids in prompts])  # each prompt's K/V, once
    pad = lambda ts: torch.nn.utils.rnn.pad_sequence([t[0].transpose(0, 1) for t in ts], True)
    keys, values = ([pad([kv[i][part] for kv in passes]).transpose(1, 2).contiguous()
                     for i in range(len(passes[0]))] for part in (0, 1))   # per layer [B,Hkv,P,d]
    length = torch.tensor(list(map(len, prompts)), device=device)                             # [B]
    slots = torch.arange(keys[0].shape[2], device=device)
    key_pos = torch.cat([torch.where(slots < length[:, None], slots, NO_KEY),
                         length[:, None] + torch.arange(L, device=device)], 1)        # [B, P + L]
    cache = [[k.new_zeros(B, k.shape[1], G, L, k.shape[3]) for _ in "kv"] for k in keys]
    logits = model.get_output_embeddings()(torch.cat([h[:, -1] for h in hidden]))        # [B, V]
    # G rows a prompt: one with fewer fills its group with copies of its last row, done at once
    real = [b * G + g for b, group in enumerate(noise) for g in range(len(group))]
    line = torch.arange(B * G, device=device)                                                # [R]
    filler = ~torch.isin(line, torch.tensor(real, device=device))
    noise = torch.stack([group[min(g, len(group) - 1)] for group in noise for g in range(G)])
    slot = torch.zeros(1, dtype=torch.long, device=device)
    rows = Rows(SharedPrompts(keys, values, None, cache, slot), length, key_pos,
                length.repeat_interleave(G), noise, line, filler, logits.repeat_interleave(G, 0))
    tokens = torch.full((B * G, L), pad_token_id, device=device)  # [R, L] the batch's table
    ends, graphs, going, plan = {}, {}, real, decode_plan(model)
    with sharing_prompts(model):
        for t in range(L):
            rows.shared.width = min(L, (t // WIDTH_STEP + 1) * WIDTH_STEP) if cuda_graphs else t + 1
            step = lambda: decode_step(model, plan, rows, tokens, sample, eos_token_id,
                                       pad_token_id)
            captured(graphs, (len(rows.noise), rows.shared.width), step) if cuda_graphs else step()
            if (t + 1) % CHECK_EVERY and t + 1 < L:
                continue
            # a look from the host: stop strings among the rows going, their last tokens
            for line, row in zip(going, tokens[going, :t + 1].tolist() if stop else []):
                hits = [u for u in range(max(0, t + 1 - CHECK_EVERY), t + 1)
                        if stop(row[max(0, u - 11):u + 1])]
                ends.update({line: hits[0] + 1} if hits else {})
            ended = torch.tensor(list(ends), dtype=torch.long, device=device)
            rows.done |= torch.isin(rows.line, ended)
            alive = (~rows.done).tolist()
            going = [line for line, a in zip(rows.line.tolist(), alive) if a]
            if not going:
                break
            if len(going) <= COMPACT_AT * len(alive):
                graphs.clear()                                     # new shapes: graphs recaptured
                rows = compact(rows, alive)

    def cut(row, end):  # at EOS (kept) or at the end of a stop string, whichever comes first
        return row[:min(end, row.index(eos_token_id) + 1 if eos_token_id in row else end)]
    return [cut(row, ends.get(r, L)) for r, row in enumerate(tokens.tolist()) if r in real]


@torch.no_grad()
def generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0,
             eos_token_id=None, pad_token_id=0, seed=0, keys=None, stop_strings=(), tokenizer=None,
             batch_size=64, cuda_graphs=False):
    """prompt_ids: token-id lists; n: samples per prompt, or per prompt a list of sample numbers.
    Returns, per prompt, its completions (token-id lists, EOS kept) in sample order. Sample s of
    prompt p draws from noise keyed by (seed, keys[p], s) (keys default to 0, 1, ...): the same
    tokens whichever rows share its batch or process, up to float rounding of the logits. Stops at
    EOS, max_new_tokens, or (with a tokenizer) a stop string in the tail. Each batch of rows decodes
    with fixed shapes into preallocated K/V (each prompt's once, B*P tokens, plus every row's own,
    R*L tokens), looking from the host every CHECK_EVERY steps; cuda_graphs replays each step's
    kernels."""
    samples = [range(n)] * len(prompt_ids) if isinstance(n, int) else n
    keys = range(len(prompt_ids)) if keys is None else keys
    stop = None
    if stop_strings and tokenizer:
        stop = lambda toks: any(s in tokenizer.decode(toks) for s in stop_strings)
    batches = []  # consecutive rows, B prompts x G rows (the most of any prompt) <= batch_size
    for job in ((p, s) for p in range(len(prompt_ids)) for s in samples[p]):
        counts = collections.Counter(p for p, _ in batches[-1] + [job]) if batches else {}
        if counts and len(counts) * max(counts.values()) <= batch_size:
            batches[-1].append(job)
        else:
            batches.append([job])
    results = [[] for _ in prompt_ids]
    for batch in batches:
        prompts = list(dict.fromkeys(p for p, _ in batch))
        noise = [sample_keys(seed, [(keys[p], s) for q, s in batch if q == p], model.device)
                 for p in prompts]
        rows = decode(model, [prompt_ids[p] for p in prompts], noise, max_new_tokens,
                      lambda logits, key: sample_next(logits, temperature, top_p, key),
                      -1 if eos_token_id is None else eos_token_id, pad_token_id, stop, cuda_graphs)
        for (p, _), tokens in zip(batch, rows):
            results[p].append(tokens)
    return results


# ----------------------------------------------------------------------------- processes (torchrun)
# how long a process may wait for the others (an AIME chunk: tens of minutes)
TIMEOUT = "DIST_TIMEOUT_MINUTES"


def distributed(flags=None):
    """(rank, world size); plain `python` is process 0 of 1. Under torchrun: joins its process group
    (NCCL on GPUs, gloo on CPU), takes GPU LOCAL_RANK, and stops every process if any was started
    with `flags` other than process 0's. A process waits for the others at most
    $DIST_TIMEOUT_MINUTES (default 180; NCCL's own default, 10 minutes, is shorter than one
    evaluation chunk at n = 2,048, and its watchdog would tear the run down)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        minutes = float(os.environ.get(TIMEOUT, 180))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(minutes=minutes))
    ranks = gather(flags) if flags is not None else [{}]
    bad = [f"process {r}: --{k.replace('_', '-')}"
           for r, f in enumerate(ranks) for k in f if f[k] != ranks[0].get(k)]
    if bad:
        raise ValueError("processes were started with flags other than process 0's (the run's): "
                         + ", ".join(bad))
    return int(os.environ.get("RANK", 0)), world


def gather(obj):
    """Every process's obj, in rank order, on every process ([obj] alone); also a barrier."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rounds(chunks, work, path, desc):
    """Deal chunks round-robin over the processes: each round, every process runs work(its chunk) ->
    a list of rows, and process 0 appends them all to the JSONL file `path` in chunk order, the
    order one process would."""
    rank, world = distributed()
    for first in tqdm(range(0, len(chunks), world), desc=desc, unit="round", disable=rank > 0):
        rows = gather(work(chunks[first + rank]) if first + rank < len(chunks) else [])
        if rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # once a row comes
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n"
                             for part in rows for row in part)


def run_main(main):
    """A script's entry: main(); a bad input (a missing or damaged file, an impossible flag, a model
    that does not load) -> one line `error: ...` and exit status 1. Under torchrun, after success,
    the processes wait for each other (every send has arrived), then tear the process group down;
    on gloo they exit skipping C++ teardown instead, where finished processes aborted in 1-3 % of
    runs."""
    try:
        main()
    except (OSError, ValueError, KeyError, ImportError, FloatingPointError, RuntimeError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str: a repr
        line = (str(text).strip() or repr(e)).splitlines()[0]
        if isinstance(e, RuntimeError):
            if "imed out" not in line:  # gloo's and NCCL's timeouts say "Timed out"; else a bug
                raise
            line = f"a process waited longer than ${TIMEOUT} minutes for the others ({line})"
        sys.exit(f"error: {line}")
    if dist.is_initialized():
        gather(None)
        if dist.get_backend() != "gloo":
            return dist.destroy_process_group()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
