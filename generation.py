"""Model loading and the rollout engine shared by drafts.py, grpo.py and evaluate.py.

Read the engine as gpt-fast's generate.py: prefill, decode_one_token, decode_n_tokens, over a cache
whose update() writes a step's K/V. What a GRPO rollout adds:
- each prompt's K/V is held once for its G rows (RolloutCache), which attend to it and to their own
  tokens with one softmax (decode_attention);
- sample s of prompt p draws from noise hashed from (seed, p's number, s, step), so its tokens do
  not depend on the batch or the process;
- a step asks nothing of the host, so a CUDA graph can replay it; every CHECK_EVERY steps the host
  looks (EOS, stop strings) and finished rows leave the batch (compact).
Compaction and graph capture (extras/graphs.py, on CUDA) are layers on top of that loop, each
behind a name; each token comes with its log-probability and the entropy it was drawn with.

The update's attention is here too: each prompt runs forward once (prompt_once) and its
completions attend to its K/V (completion_states, update_attention).
"""
import contextlib
import dataclasses
import functools
import itertools
import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F


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
        import extras.tiny
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
        import extras.tiny
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


def noise_roots(seed, jobs, device):
    """[R] int64: the root of each (prompt number, sample) job's noise under `seed`; at step t a
    row's noise is mix(root ^ t)."""
    job = torch.tensor([[seed & 0xFFFFFFFF, p, s] for p, s in jobs], device=device)  # [R, 3]
    return mix(mix(mix(job[:, 0]) ^ job[:, 1]) ^ job[:, 2])


def sample(logits, noise, temperature=1.0, top_p=1.0):
    """logits [R, V], noise [R] (a row's at this step) -> (next tokens, their log-probabilities
    under the distribution they were drawn from, that distribution's entropy), each [R]. gpt-fast's
    multinomial_sample_one_no_sync (argmax p / E, E ~ Exp(1): exactly a draw from p) with E hashed
    from (noise, token) instead of drawn, so a row's draw is its own. temperature 0 = greedy (a
    point mass: log-probability and entropy 0); top_p keeps the smallest nucleus, renormalised."""
    if temperature == 0:
        zero = torch.zeros(len(logits), device=logits.device)
        return logits.argmax(dim=-1), zero, zero
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    token = torch.arange(probs.shape[-1], device=probs.device)                             # [V]
    # 23 random bits + 0.5, exact in fp32 whatever the default dtype: u in (0, 1), so E > 0
    u = ((mix(noise[:, None] ^ token) >> 9).float() + 0.5) * 2 ** -23                   # [R, V]
    token = (probs / -torch.log(u)).argmax(dim=-1)                                          # [R]
    probs = probs / probs.sum(dim=-1, keepdim=True)  # what the race drew from: the nucleus
    logprob = probs.gather(-1, token[:, None]).squeeze(-1).log()
    return token, logprob, torch.special.entr(probs).sum(dim=-1)


# ------------------------------------------------------------------ attention, one per purpose
# transformers calls the attention function its config names. Within attention_by_purpose every
# call names its own (`attention=` beside its data), so a checkpointed layer that runs its forward
# again in backward runs the same one.
@contextlib.contextmanager
def attention_by_purpose(model):
    """Within the block, the model's layers run the attention function each call passes as
    `attention=` (the prompt pass, the update, a decode step), and transformers builds no mask
    (each function makes its own). Models whose attention or head these do not reproduce stop here,
    before any forward."""
    from transformers import AttentionInterface
    odd = [a for a in ("attn_logit_softcapping", "final_logit_softcapping", "logit_scale",
                       "logits_scaling") if getattr(model.config, a, None) not in (None, 1.0)]
    if odd:
        raise ValueError(f"--model: {model.config.model_type} uses {', '.join(odd)}, which "
                         "generation.py's attention and the update's LM head do not apply")
    call = lambda module, q, k, v, mask, attention=None, **kw: attention(module, q, k, v, **kw)
    AttentionInterface.register("by_purpose", call)
    old, model.config._attn_implementation = model.config._attn_implementation, "by_purpose"
    try:
        yield
    finally:
        model.config._attn_implementation = old


def visible(key_pos, query_pos, window=None):
    """key_pos [..., K], query_pos [..., T] -> [..., T, K] bool: a query sees the keys at or before
    its position, within the sliding window if its layer has one (no [T, K] of positions made)."""
    k, q = key_pos[..., None, :], query_pos[..., :, None]
    return (k <= q) & (k > q - window) if window else k <= q


def attend(query, key, value, mask, scaling):
    """SDPA (a fused kernel where one applies: no [n, H, T, S] scores held) of query [n, H, T, d]
    over key, value [n, Hkv, S, d] where mask [T, S] allows -> [n, T, H, d]. GQA without copying
    K/V: the H / Hkv query heads that share a K/V head are folded into its query rows."""
    (n, H, T, d), Hkv = query.shape, key.shape[1]
    q = query.reshape(n, Hkv, H // Hkv * T, d)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask.repeat(H // Hkv, 1),
                                         scale=scaling)
    return out.view(n, H, T, d).transpose(1, 2)


def causal_attention(module, query, key, value, scaling=None, sliding_window=None, **_):
    """Causal attention of each sequence over its own keys, query, key, value [n, *, T, d]: SDPA's
    causal kernel (no mask made), the K/V heads repeated for it; with a sliding window, a mask."""
    if sliding_window:
        pos = torch.arange(key.shape[2], device=key.device)
        return attend(query, key, value, visible(pos, pos, sliding_window), scaling), None
    rep = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(query, key.repeat_interleave(rep, 1),
                                         value.repeat_interleave(rep, 1), is_causal=True,
                                         scale=scaling)
    return out.transpose(1, 2), None


def prompt_attention(module, query, key, value, kv=None, **kw):
    """The prompt pass: one prompt [1, P], causal; its K/V into `kv` by layer, once (a checkpointed
    layer whose forward runs again in backward must not add another pair)."""
    kv.setdefault(module.layer_idx, (key, value))
    return causal_attention(module, query, key, value, **kw)


def update_attention(module, query, key, value, scaling=None, sliding_window=None, prompt=None,
                     **_):
    """The update: n completions of one prompt, each over [the prompt's one K/V copy; its own
    tokens], causal. Plainly: the model's own attention over [prompt; completion], each row whole.
    query [n, H, T, d]; key, value [n, Hkv, T, d]."""
    kp, vp = prompt.kv[:, module.layer_idx]                                   # [1, Hkv, P, d]
    n, P, T = len(key), kp.shape[2], key.shape[2]
    keys = torch.cat([kp.expand(n, -1, -1, -1), key], 2)                    # [n, Hkv, P + T, d]
    values = torch.cat([vp.expand(n, -1, -1, -1), value], 2)
    pos = torch.arange(P + T, device=key.device)
    return attend(query, keys, values, visible(pos, pos[P:], sliding_window), scaling), None


def decode_attention(module, query, key, value, scaling=None, sliding_window=None, rollout=None,
                     width=None, **_):
    """A decode step: each row's one query over its prompt's K/V, held once for the prompt's G rows,
    and over its own tokens' K/V so far (this step's written first), one softmax over both.
    Plainly, for row r of prompt b: softmax(q [K_b; K_r]^T * scaling, where visible) [V_b; V_r].
    query [R, H, 1, d]; key, value [R, Hkv, 1, d]. Products in the model's dtype, the softmax in
    fp32, as transformers' eager attention."""
    kp, vp = rollout.prompt[:, module.layer_idx]                             # [B, Hkv, P, d]
    k, v = rollout.update(module.layer_idx, key, value, width)               # [B, Hkv, G, W, d]
    (B, Hkv, G, _, d), P, M = k.shape, kp.shape[2], query.shape[1] // k.shape[1]
    q = (query * scaling).view(B, G, Hkv, M, d).transpose(1, 2)              # [B, Hkv, G, M, d]
    scores = torch.cat([(q.reshape(B, Hkv, G * M, d) @ kp.transpose(2, 3)).view(B, Hkv, G, M, P),
                        q @ k.transpose(3, 4)], -1)                      # [B, Hkv, G, M, P + W]
    scores = scores.masked_fill(~rollout.visible(sliding_window, width), float("-inf"))
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype)
    out = (probs[..., :P].reshape(B, Hkv, G * M, P) @ vp).view(B, Hkv, G, M, d)
    out = out + probs[..., P:] @ v                                            # [B, Hkv, G, M, d]
    return out.transpose(1, 2).reshape(B * G, 1, Hkv * M, d), None


def prompt_pass(model, ids):
    """One prompt (token ids [1, P]) through the decoder alone: no padding, so no fully masked row
    for a fused kernel to return NaN on. -> hidden states [1, P, H], its K/V [2, layers, 1, Hkv, P,
    d]."""
    kv = {}
    hidden = model.get_decoder()(input_ids=ids, use_cache=False, attention=prompt_attention,
                                 kv=kv).last_hidden_state
    return hidden, torch.stack([torch.stack(kv[i]) for i in range(len(kv))], 1)


# ---------------------------------------------------------------------- the update: the prompt once
class Prompt(NamedTuple):
    """A prompt's forward pass, once for all its completions. last and kv are the pass's outputs cut
    from it (leaves): the completions read them, and their backward fills their .grad, which
    backward_through_prompt carries through the pass (`states`, the same tensors with its graph)."""
    last: torch.Tensor          # [1, 1, H]: the prompt's last hidden state (predicts token 0)
    kv: torch.Tensor            # [2, layers, 1, Hkv, P, d]
    states: tuple


def prompt_once(model, ids):
    """The prompt's forward pass (ids [1, P]) once, as a Prompt (within attention_by_purpose)."""
    hidden, kv = prompt_pass(model, ids)
    states = (hidden[:, -1:], kv)
    return Prompt(*(s.detach().requires_grad_(s.requires_grad) for s in states), states)


def completion_states(model, prompt, ids):
    """ids [n, T]: completions of `prompt` (padded at the end) -> hidden states [n, T, H], position
    t predicting token t: the prompt's last state, then each completion's own up to T - 1 (the
    next-token shift, here alone). Each row attends to the prompt's one copy of K/V."""
    (n, T), P = ids.shape, prompt.kv.shape[4]
    position = torch.arange(P, P + T, device=ids.device).expand(n, -1)
    hidden = model.get_decoder()(input_ids=ids, position_ids=position, use_cache=False,
                                 attention=update_attention, prompt=prompt).last_hidden_state
    return torch.cat([prompt.last.expand(n, -1, -1), hidden[:, :-1]], 1)


def backward_through_prompt(prompt):
    """The gradient the completions left on the prompt's last state and K/V, back through its
    forward pass, once."""
    grads = [(s, leaf.grad) for s, leaf in zip(prompt.states, prompt[:2]) if leaf.grad is not None]
    if grads:
        torch.autograd.backward(*zip(*grads))


# ----------------------------------------------------------------------------- rollouts
# decode steps between two looks from the host: EOS and stop strings, the end, compaction
CHECK_EVERY = 16
# a step reads its rows' own K/V up to the next multiple of WIDTH_STEP, and the prompts' K/V padded
# to one: few shapes, so each shape's CUDA graph is reused
WIDTH_STEP = 128
COMPACT_AT = 0.5  # at a look, finished rows leave once that shrinks the batch to this share


def bucket(n):
    return WIDTH_STEP * -(-n // WIDTH_STEP)


def buffer(graphs, name, shape, dtype, device):
    """A zeroed tensor of `shape`; with graphs, a view of a buffer kept for the run (Graphs.buffer),
    so that graphs captured in one batch replay on the same addresses in the next."""
    if graphs:
        return graphs.buffer(name, shape, dtype, device)
    return torch.zeros(shape, dtype=dtype, device=device)


@dataclasses.dataclass
class RolloutCache:
    """The K/V of a batch of B prompts x G rows (row b * G + g): each prompt's once, `prompt`
    [2, layers, B, Hkv, P, d] (P padded: slots past a prompt's length are not seen), and each row's
    own tokens, `own` [2, layers, B, Hkv, G, L, d], which update() writes at `slot`."""
    prompt: torch.Tensor
    own: torch.Tensor
    length: torch.Tensor        # [B] each prompt's length
    slot: torch.Tensor          # [1] this step's slot in the rows' own K/V

    def update(self, layer, key, value, width):
        """This step's K/V [R, Hkv, 1, d] into the slot; returns the own K/V of slots < width."""
        B, Hkv, G, L, d = self.own.shape[2:]
        new = torch.stack([key, value]).view(2, B, G, Hkv, 1, d).transpose(2, 3)
        own = self.own[:, layer].index_copy_(4, self.slot, new)
        return own[0, ..., :width, :], own[1, ..., :width, :]

    def visible(self, window, width):
        """[B, 1, 1, 1, P + width]: the prompt and own keys that this step's queries see."""
        P, device = self.prompt.shape[4], self.slot.device
        prompt_pos = torch.arange(P, device=device).expand(len(self.length), -1)        # [B, P]
        prompt_pos = prompt_pos.masked_fill(prompt_pos >= self.length[:, None], 2 ** 40)
        own_pos = self.length[:, None] + torch.arange(width, device=device)             # [B, W]
        query_pos = (self.length + self.slot)[:, None]                                  # [B, 1]
        return visible(torch.cat([prompt_pos, own_pos], 1), query_pos, window)[:, None, None]


@dataclasses.dataclass
class Rows:
    """The rows being decoded, in the cache's order (row b * G + g of prompt b)."""
    noise: torch.Tensor         # [R] the root of a row's noise
    line: torch.Tensor          # [R] its line in `tokens` (compaction moves rows, not lines)
    done: torch.Tensor          # [R] finished: EOS, a stop string, or a filler evening out groups
    logits: torch.Tensor        # [R, V] its next token's
    # by line: every row's new tokens, their log-probs and the entropies they were drawn with
    tokens: torch.Tensor        # [lines, L]
    logprobs: torch.Tensor      # [lines, L]
    entropies: torch.Tensor     # [lines, L]


def prefill(model, prompts, noise, max_new_tokens, graphs=None):
    """Each prompt (token-id lists) through the model alone, its K/V into the batch's buffers once.
    noise: per prompt its rows' noise roots, up to G; a prompt with fewer fills its group with done
    copies of its last row. -> (RolloutCache, Rows), ready for the first decode step."""
    c, device, B, G = model.config, model.device, len(prompts), max(map(len, noise))
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = (2, c.num_hidden_layers, B, c.num_key_value_heads)
    empty = lambda name, shape, dtype=model.dtype: buffer(graphs, name, shape, dtype, device)
    P = bucket(max(map(len, prompts)))
    cache = RolloutCache(empty("prompt", kv + (P, d)), empty("own", kv + (G, max_new_tokens, d)),
                         empty("length", (B,), torch.long), empty("slot", (1,), torch.long).zero_())
    rows = Rows(empty("noise", (B * G,), torch.long), empty("line", (B * G,), torch.long),
                empty("done", (B * G,), torch.bool), empty("logits", (B * G, c.vocab_size)),
                empty("tokens", (B * G, max_new_tokens), torch.long),
                *(empty(name, (B * G, max_new_tokens), torch.float32)
                  for name in ("logprobs", "entropies")))
    for b, (ids, roots) in enumerate(zip(prompts, noise)):
        hidden, kv = prompt_pass(model, torch.tensor([ids], device=device))
        cache.prompt[:, :, b, :, :len(ids)] = kv[:, :, 0]
        group = slice(b * G, b * G + G)
        rows.logits[group] = model.get_output_embeddings()(hidden[0, -1])
        rows.noise[group] = roots[torch.arange(G).clamp(max=len(roots) - 1)]
        rows.done[group] = torch.arange(G, device=device) >= len(roots)
        cache.length[b] = len(ids)
    rows.line.copy_(torch.arange(B * G))
    return cache, rows


def decode_one_token(model, cache, rows, width, sample, eos_token_id, pad_token_id):
    """Every row samples its next token, appends it, and the model runs one step on it: the same
    shapes at every step of a width and nothing asked of the host, so a CUDA graph can replay it.
    A finished row samples on, masked: its tokens are padding."""
    token, logprob, entropy = sample(rows.logits, mix(rows.noise ^ cache.slot))
    token = token.masked_fill(rows.done, pad_token_id)
    for table, new in ((rows.tokens, token), (rows.logprobs, logprob), (rows.entropies, entropy)):
        table.index_put_((rows.line, cache.slot), new)
    rows.done |= token == eos_token_id
    G = len(token) // len(cache.length)
    position = cache.length.repeat_interleave(G) + cache.slot                              # [R]
    logits = model(input_ids=token[:, None], position_ids=position[:, None], use_cache=False,
                   attention=decode_attention, rollout=cache, width=width).logits[:, -1]
    rows.logits.copy_(logits)
    cache.slot += 1


def decode_n_tokens(model, cache, rows, max_new_tokens, step, stop=None, graphs=None,
                    interrupt=None):
    """The loop: step (decode_one_token with its sampler) up to max_new_tokens times, replayed from
    a CUDA graph of its shape with graphs. Every CHECK_EVERY steps the host looks: EOS, and
    stop(line, tail, first) -> where a row's stop string ends in its tail, whose new tokens start
    at `first`; then finished rows leave the batch if that shrinks it. -> (rows, {line: end}), or
    None as soon as interrupt() says so at a look (a stop signal: the batch is dropped)."""
    ends, going = {}, rows.line[~rows.done].tolist()   # lines going at the last look
    for t in range(max_new_tokens):
        width = min(max_new_tokens, bucket(t + 1))
        run = functools.partial(step, model, cache, rows, width)
        graphs.replay(run, cache, width) if graphs else run()
        if (t + 1) % CHECK_EVERY and t + 1 < max_new_tokens:
            continue
        if interrupt and interrupt():
            return None
        if stop:  # the new tokens of the rows that were going, and the 11 before them
            first = t - t % CHECK_EVERY
            lo = max(0, first - 11)
            for line, tail in zip(going, rows.tokens[going, lo:t + 1].tolist()):
                end = stop(line, tail, first - lo)
                ends.update({line: lo + end} if end else {})
            rows.done |= torch.isin(rows.line, torch.tensor(list(ends), device=rows.line.device))
        alive = (~rows.done).tolist()
        going = [line for line, a in zip(rows.line.tolist(), alive) if a]
        if not going:
            break
        cache, rows = compact(cache, rows, alive, t + 1, graphs) or (cache, rows)
    return rows, ends


def compact(cache, rows, alive, written, graphs=None):
    """The rows still going, each prompt's padded with its finished ones to G' (a power of two), in
    buffers of their size, so later steps compute for them alone; None unless that shrinks the
    batch to COMPACT_AT of its rows. alive: [R] bools read at a look; written: own slots so far."""
    _, layers, B, Hkv, G, L, d = cache.own.shape
    going = [sum(alive[b * G:b * G + G]) for b in range(B)]
    keep = [b for b in range(B) if going[b]]
    G2 = min(G, 2 ** math.ceil(math.log2(max(going))))
    if len(keep) * G2 > COMPACT_AT * B * G:
        return None
    pick = torch.tensor([sorted(range(b * G, b * G + G), key=lambda r: not alive[r])[:G2]
                         for b in keep], device=rows.done.device)  # [B', G']: going rows first
    kept = torch.tensor(keep, device=pick.device)
    moved = lambda name, x, shape: buffer(graphs, name, shape, x.dtype, x.device)
    B2, P = len(keep), cache.prompt.shape[4]
    new = RolloutCache(moved("prompt", cache.prompt, (2, layers, B2, Hkv, P, d)),
                       moved("own", cache.own, (2, layers, B2, Hkv, G2, L, d)),
                       moved("length", cache.length, kept.shape).copy_(cache.length[kept]),
                       cache.slot)
    # With graphs a new buffer is the front of its old one: layer by layer in storage order, each
    # old layer is read before a smaller new one is written over it
    for part, layer in itertools.product(range(2), range(layers)):
        new.prompt[part, layer] = cache.prompt[part, layer, kept]
        own = cache.own[part, layer][pick // G, :, pick % G, :written]  # [B', G', Hkv, written, d]
        new.own[part, layer, ..., :written, :] = own.transpose(1, 2)
    tables = {name: getattr(rows, name) for name in ("tokens", "logprobs", "entropies")}
    kept_rows = {f.name: getattr(rows, f.name)[pick.view(-1)] for f in dataclasses.fields(Rows)
                 if f.name not in tables}
    return new, Rows(**{name: moved(name, x, x.shape).copy_(x) for name, x in kept_rows.items()},
                     **tables)


def cuda_graphs(enabled=True):
    """A run's CUDA graphs (extras/graphs.py: a speed layer over decode_one_token, imported only on
    CUDA); None: decode eagerly, as on the CPU."""
    if not (enabled and torch.cuda.is_available()):
        return None
    from extras.graphs import Graphs
    return Graphs()


# ----------------------------------------------------------------------------- generate
@torch.no_grad()
def generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0,
             eos_token_id=None, pad_token_id=0, seed=0, prompt_numbers=None, stop=None,
             batch_size=64, graphs=None, logprobs=False, interrupt=None):
    """prompt_ids: token-id lists; n: samples per prompt, or per prompt a list of sample numbers.
    Returns, per prompt, its completions (token-id lists, EOS kept) in sample order. Sample s of
    prompt p draws from noise hashed from (seed, prompt_numbers[p], s) (0, 1, ... by default): the
    same tokens whichever rows share its batch or process, up to float rounding of the logits.
    Stops at EOS, max_new_tokens, or where stop(line, tail, first) says (decode_n_tokens). Decodes
    B prompts x G rows <= batch_size at a time; with graphs (cuda_graphs()), each step replays a
    CUDA graph. logprobs: each completion is (tokens, their log-probabilities under the distribution
    each was drawn from, its entropy), three lists, read back with the tokens. Returns None if
    interrupt() says so at one of the host's looks (a stop signal)."""
    samples = [range(n)] * len(prompt_ids) if isinstance(n, int) else n
    numbers = range(len(prompt_ids)) if prompt_numbers is None else prompt_numbers
    eos = -1 if eos_token_id is None else eos_token_id
    step = functools.partial(decode_one_token, eos_token_id=eos, pad_token_id=pad_token_id,
                             sample=functools.partial(sample, temperature=temperature, top_p=top_p))
    # a batch: B prompts x G rows <= batch_size (a prompt with more samples is split)
    G = min(batch_size, max([1, *map(len, samples)]))
    jobs = [(p, list(s[i:i + G])) for p, s in enumerate(samples) for i in range(0, len(s), G)]
    batches = [jobs[i:i + batch_size // G] for i in range(0, len(jobs), batch_size // G)]
    results = [[] for _ in prompt_ids]
    with attention_by_purpose(model):
        for batch in batches:
            noise = [noise_roots(seed, [(numbers[p], s) for s in group], model.device)
                     for p, group in batch]
            if graphs and graphs.ok is None:
                graphs.check(model, prompt_ids[batch[0][0]], step)
            use = graphs if graphs and graphs.ok else None
            cache, rows = prefill(model, [prompt_ids[p] for p, _ in batch], noise, max_new_tokens,
                                  use)
            decoded = decode_n_tokens(model, cache, rows, max_new_tokens, step, stop, use,
                                      interrupt)
            if decoded is None:
                return None
            rows, ends = decoded
            G, tokens = len(rows.tokens) // len(batch), rows.tokens.tolist()
            drawn = list(zip(rows.logprobs.tolist(), rows.entropies.tolist())) if logprobs else []
            for b, (p, group) in enumerate(batch):
                for line in range(b * G, b * G + len(group)):
                    row = tokens[line][:ends.get(line, max_new_tokens)]
                    row = row[:row.index(eos) + 1] if eos in row else row
                    results[p].append((row, *(x[:len(row)] for x in drawn[line])) if drawn else row)
    return results
