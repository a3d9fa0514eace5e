"""Model loading and the rollout engine shared by drafts.py, grpo.py and evaluate.py.

Read the engine as gpt-fast's generate.py: prefill, decode_one_token, decode_n_tokens,
over a cache whose update() writes a step's K/V. What a GRPO rollout adds:
- each prompt's K/V is held once for its G rows (RolloutCache), which attend to it and to
  their own tokens with one softmax (decode_attention);
- sample s of prompt p draws from noise hashed from (seed, p's number, s, step), so its
  tokens do not depend on the batch or the process;
- a step asks nothing of the host, so a CUDA graph can replay it (extras/graphs.py wraps
  decode_one_token, on CUDA); every CHECK_EVERY steps the host looks (look_from_host):
  EOS, stop strings, finished rows read out, and the rows still going move to smaller
  buffers (compact). Each token comes with its log-probability and the entropy of the
  distribution it was drawn from.

The update's attention is here too: each prompt runs forward once (prompt_once) and its
completions attend to its K/V (completion_states, update_attention)."""
import contextlib
import dataclasses
import itertools
import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface


# ----------------------------------------------------------------------------- models
def from_hub(auto, name, **kw):
    """auto.from_pretrained(name, **kw) for a local folder or a hub id; one that does not
    load is an error naming it."""
    try:
        return auto.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:
        where = "the folder does not load"
        if not os.path.isdir(name):
            where = "not a folder, and it did not load from the hub"
        lines = str(e).strip().splitlines()
        raise ValueError(f"--model {name}: {where} ({lines[0]})") from None


def load_tokenizer(name, trust_remote_code=False):
    """The tokenizer alone (a hub id, a local folder or 'tiny'), with a pad token for
    batching."""
    from transformers import AutoTokenizer
    if name == "tiny":
        import extras.tiny
        tokenizer = extras.tiny.tokenizer()
    else:
        tokenizer = from_hub(AutoTokenizer, name, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(name, device=None, dtype=None,
               trust_remote_code=False):
    """(model, tokenizer) from a hub id or local directory, or 'tiny'. bf16 on CUDA, fp32
    on CPU by default."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if on_cuda else torch.float32)
    tokenizer = load_tokenizer(name, trust_remote_code)
    if name == "tiny":
        import extras.tiny
        model = extras.tiny.model(len(tokenizer))
    else:
        from transformers import AutoModelForCausalLM
        model = from_hub(AutoModelForCausalLM, name, dtype=dtype,
                         trust_remote_code=trust_remote_code)
    model = model.to(device=device, dtype=dtype)
    return model.eval(), tokenizer


def kv_shape(model):
    """(layers, K/V heads, head size) of the model's attention."""
    c = model.config
    head_dim = getattr(c, "head_dim", None)
    head_dim = head_dim or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers, c.num_key_value_heads, head_dim


def cache_bytes(model, prompt_tokens, sequences, new_tokens):
    """The most K/V bytes a rollout batch holds: each prompt's once, plus every sequence's
    own new tokens."""
    layers, Hkv, d = kv_shape(model)
    per_token = 2 * layers * Hkv * d * model.dtype.itemsize  # K and V
    tokens = prompt_tokens + sequences * new_tokens
    return per_token * tokens


# ----------------------------------------------------------------------------- sampling
class Sampling(NamedTuple):
    temperature: float  # 0: greedy
    top_p: float
    eos_token_id: int  # -1: none
    pad_token_id: int  # what a finished row writes


class Draw(NamedTuple):
    token: torch.Tensor  # [R] the next tokens
    logprob: torch.Tensor  # [R] each one's log-prob under the distribution it was drawn from
    entropy: torch.Tensor  # [R] that distribution's entropy


def mix(x):
    """A 32-bit integer hash of an int64 tensor (values < 2**32; constants < 2**31, so no
    product overflows)."""
    for c in (0x7FEB352D, 0x45D9F3B):
        x = ((x ^ (x >> 16)) * c) & 0xFFFFFFFF
    return x ^ (x >> 16)


def noise_roots(seed, jobs, device):
    """[R] int64: the root of each (prompt number, sample) job's noise under `seed`; at
    step t a row's noise is mix(root ^ t)."""
    job = torch.tensor(jobs, device=device)  # [R, 2]
    root = mix(torch.tensor(seed & 0xFFFFFFFF, device=device))  # the seed
    root = mix(root ^ job[:, 0])  # the prompt
    return mix(root ^ job[:, 1])  # the sample


def sample(logits, noise, temperature=1.0, top_p=1.0):
    """logits [R, V], noise [R] (a row's at this step) -> a Draw. gpt-fast's
    multinomial_sample_one_no_sync (argmax p / E, E ~ Exp(1): exactly a draw from p) with
    E hashed from (noise, token) instead of drawn, so a row's draw is its own. temperature
    0 = greedy (a point mass: log-probability and entropy 0); top_p keeps the smallest
    nucleus, renormalised."""
    if temperature == 0:
        zero = torch.zeros(len(logits), device=logits.device)
        greedy = logits.argmax(dim=-1)
        return Draw(greedy, zero, zero)
    logits = logits.float() / temperature
    probs = torch.softmax(logits, dim=-1)  # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # the mass ahead of each token
        outside = before > top_p
        nucleus = sorted_probs.masked_fill(outside, 0.0)
        probs = probs.scatter(-1, order, nucleus)
    V = probs.shape[-1]
    vocab = torch.arange(V, device=probs.device)  # [V]
    # 23 random bits + 0.5, exact in fp32 whatever the default dtype: u in (0, 1), so E >
    # 0
    bits = mix(noise[:, None] ^ vocab) >> 9  # [R, V]
    u = (bits.float() + 0.5) * 2 ** -23
    E = -torch.log(u)  # [R, V], Exp(1)
    token = (probs / E).argmax(dim=-1)  # [R]
    probs = probs / probs.sum(dim=-1, keepdim=True)  # what the race drew from: the nucleus
    chosen = probs.gather(-1, token[:, None])  # [R, 1]
    entropy = torch.special.entr(probs).sum(dim=-1)  # [R]
    logprob = chosen[:, 0].log()  # [R]
    return Draw(token, logprob, entropy)


# ----------------------------------------------------------------- attention, one per pass
# transformers calls the attention function its config names; ours, "passed", runs the one
# each forward call passes (`attention=`), beside the data it needs (transformers hands
# every extra keyword of a forward call to the attention function). A checkpointed layer
# that runs its forward again in backward gets the same keywords, so the same attention.
def passed_attention(module, query, key, value, mask,
                     attention, **kw):
    """transformers' hook: the attention the forward call passed. transformers builds no
    mask for it: each of ours makes its own."""
    return attention(module, query, key, value, **kw)


AttentionInterface.register("passed", passed_attention)
UNSUPPORTED = ("attn_logit_softcapping", "final_logit_softcapping", "logit_scale",
               "logits_scaling")


@contextlib.contextmanager
def passing_attention(model):
    """Within the block the model runs the attention each forward call passes. Models
    whose attention or head ours do not reproduce stop here, before any forward."""
    odd = [a for a in UNSUPPORTED
           if getattr(model.config, a, None) not in (None, 1.0)]
    if odd:
        raise ValueError(f"--model: {model.config.model_type} uses {', '.join(odd)}, which "
                         "generation.py's attention and the update's LM head do not apply")
    own = model.config._attn_implementation
    model.set_attn_implementation("passed")
    try:
        yield
    finally:
        model.set_attn_implementation(own)


def visible(key_pos, query_pos, window):
    """key_pos [..., K], query_pos [..., T] -> [..., T, K] bool: a query sees the keys at
    or before its position, within the sliding window if its layer has one."""
    k = key_pos[..., None, :]
    q = query_pos[..., :, None]
    seen = k <= q
    return seen & (k > q - window) if window else seen


def attend(query, key, value, mask, scaling):
    """SDPA (a fused kernel where one applies) of query [n, H, T, d] over key, value [n,
    Hkv, S, d] where mask [T, S] allows -> [n, T, H, d]. GQA without copying K/V: the H /
    Hkv query heads that share a K/V head are folded into its query rows."""
    n, H, T, d = query.shape
    M = H // key.shape[1]  # query heads a K/V head
    q = query.reshape(n, -1, M * T, d)  # [n, Hkv, M * T, d]
    mask = mask.repeat(M, 1)  # [M * T, S]
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask,
                                         scale=scaling)
    out = out.view(n, H, T, d)
    return out.transpose(1, 2)


def causal_attention(module, query, key, value,
                     scaling=None, sliding_window=None, **_):
    """Causal attention of each sequence over its own keys, query, key, value [n, *, T,
    d]: SDPA's causal kernel (no mask made); with a sliding window, a mask."""
    if sliding_window:
        T = key.shape[2]
        pos = torch.arange(T, device=key.device)
        mask = visible(pos, pos, sliding_window)  # [T, T]
        return attend(query, key, value, mask, scaling), None
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2), None


class PromptKV:
    """One prompt pass's K/V, by layer. update() keeps a layer's first pair: a
    checkpointed layer that runs its forward again in backward must not add another."""

    def __init__(self):
        self.layers = {}

    def update(self, layer, key, value):
        self.layers.setdefault(layer, (key, value))

    def stacked(self):
        """[2, layers, 1, Hkv, P, d]"""
        layers = sorted(self.layers)
        pairs = [self.layers[i] for i in layers]
        pairs = [torch.stack(pair) for pair in pairs]  # [2, 1, Hkv, P, d] each
        return torch.stack(pairs, 1)


def prompt_attention(module, query, key, value,
                     prompt_kv, **kw):
    """The prompt pass: one prompt [1, P], causal; its K/V into the prompt's cache."""
    prompt_kv.update(module.layer_idx, key, value)
    return causal_attention(module, query, key, value, **kw)


def update_attention(module, query, key, value, prompt,
                     scaling=None, sliding_window=None, **_):
    """The update: n completions of one prompt, each over [the prompt's one K/V copy; its
    own tokens], causal. Plainly: the model's own attention over [prompt; completion],
    each row whole. query [n, H, T, d]; key, value [n, Hkv, T, d]. Lower-right causal,
    SDPA's flash kernel on CUDA (the K/V heads shared, no mask); with a sliding window, a
    mask."""
    kp, vp = prompt.kv[:, module.layer_idx]  # [1, Hkv, P, d]
    n, _, T, _ = key.shape
    P = kp.shape[2]
    kp = kp.expand(n, -1, -1, -1)  # [n, Hkv, P, d], a view
    vp = vp.expand(n, -1, -1, -1)
    keys = torch.cat([kp, key], 2)  # [n, Hkv, P + T, d]
    values = torch.cat([vp, value], 2)
    if sliding_window:
        pos = torch.arange(P + T, device=key.device)
        mask = visible(pos, pos[P:], sliding_window)  # [T, P + T]
        return attend(query, keys, values, mask, scaling), None
    causal = causal_lower_right(T, P + T)  # token t sees the prompt and tokens <= t
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=causal,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2), None


def decode_attention(module, query, key, value,
                     rollout, width, unseen,
                     scaling=None, sliding_window=None, **_):
    """A decode step: each row's one query over its prompt's K/V, held once for the
    prompt's G rows, and over its own tokens' K/V so far (this step's written first), one
    softmax over both. Plainly, for row r of prompt b: softmax(q [K_b; K_r]^T * scaling,
    where visible) [V_b; V_r]. query [R, H, 1, d]; key, value [R, Hkv, 1, d]; unseen: the
    keys no query sees this step (made once a step). Products in the model's dtype, the
    softmax accumulated in fp32."""
    layer = module.layer_idx
    kp, vp = rollout.prompt[:, layer]  # [B, Hkv, P, d]
    k, v = rollout.update(layer, key, value, width)  # [B, Hkv, G, W, d]
    B, Hkv, G, _, d = k.shape
    P = kp.shape[2]
    M = query.shape[1] // Hkv  # query heads a K/V head
    q = query * scaling  # [R, H, 1, d]
    q = q.view(B, G, Hkv, M, d)
    q = q.transpose(1, 2)  # [B, Hkv, G, M, d]
    rows = q.reshape(B, Hkv, G * M, d)  # a prompt's G rows x M heads, one matmul
    to_prompt = rows @ kp.transpose(2, 3)  # [B, Hkv, G*M, P]
    to_prompt = to_prompt.view(B, Hkv, G, M, P)
    to_own = q @ k.transpose(3, 4)  # [B, Hkv, G, M, W]
    scores = torch.cat([to_prompt, to_own], -1)  # [..., P + W]
    if sliding_window:
        unseen = ~rollout.visible(width, sliding_window)
    scores = scores.masked_fill_(unseen, float("-inf"))
    probs = torch.softmax(scores, -1)
    to_prompt = probs[..., :P]
    to_prompt = to_prompt.reshape(B, Hkv, G * M, P)
    from_prompt = to_prompt @ vp  # [B, Hkv, G*M, d]
    from_own = probs[..., P:] @ v  # [B, Hkv, G, M, d]
    out = from_prompt.view(B, Hkv, G, M, d) + from_own
    out = out.transpose(1, 2)  # [B, G, Hkv, M, d]
    return out.reshape(B * G, 1, Hkv * M, d), None  # [R, 1, H, d]


def prompt_pass(model, ids):
    """One prompt (token ids [1, P]) through the decoder alone: no padding, so no fully
    masked row for a fused kernel to return NaN on. -> hidden states [1, P, H], and its
    K/V [2, layers, 1, Hkv, P, d]."""
    kv = PromptKV()
    decoder = model.get_decoder()
    out = decoder(input_ids=ids,
                  use_cache=False,
                  attention=prompt_attention,
                  prompt_kv=kv)
    return out.last_hidden_state, kv.stacked()


# ---------------------------------------------------------------------- the update: the prompt once
class Prompt(NamedTuple):
    """A prompt's forward pass, once for all its completions. last and kv are the pass's
    outputs cut from it (leaves): the completions read them, and their backward fills
    their .grad, which backward_through_prompt carries through the pass (`states`: the
    same tensors, with its graph)."""
    last: torch.Tensor  # [1, 1, H]: the prompt's last hidden state (predicts token 0)
    kv: torch.Tensor  # [2, layers, 1, Hkv, P, d]
    states: tuple


def prompt_once(model, ids):
    """The prompt's forward pass (ids [1, P]) once, as a Prompt (within
    passing_attention)."""
    hidden, kv = prompt_pass(model, ids)
    states = (hidden[:, -1:], kv)
    leaves = [s.detach().requires_grad_(s.requires_grad) for s in states]  # cut from the pass
    return Prompt(*leaves, states)


def completion_states(model, prompt, ids):
    """ids [n, T]: completions of `prompt` (padded at the end) -> hidden states [n, T, H],
    position t predicting token t: the prompt's last state, then each completion's own up
    to T - 1 (the next-token shift, here alone). Each row attends to the prompt's one copy
    of K/V (update_attention)."""
    n, T = ids.shape
    P = prompt.kv.shape[4]
    position = torch.arange(P, P + T, device=ids.device)  # [T]
    decoder = model.get_decoder()
    out = decoder(input_ids=ids,
                  position_ids=position.expand(n, -1),
                  use_cache=False,
                  attention=update_attention,
                  prompt=prompt)
    first = prompt.last.expand(n, -1, -1)  # [n, 1, H]: predicts token 0
    own = out.last_hidden_state[:, :-1]  # [n, T - 1, H]: tokens 1...
    return torch.cat([first, own], 1)


def backward_through_prompt(prompt):
    """The gradient the completions left on the prompt's last state and K/V, back through
    its forward pass, once."""
    leaves = prompt.last, prompt.kv
    pairs = zip(prompt.states, leaves)
    grads = [(state, leaf.grad) for state, leaf in pairs
             if leaf.grad is not None]
    if grads:
        states, gradients = zip(*grads)
        torch.autograd.backward(states, gradients)


# ----------------------------------------------------------------------------- rollouts
CHECK_EVERY = 16  # decode steps between two looks from the host
# a step reads its rows' own K/V up to the next multiple of WIDTH_STEP, and the prompts'
# K/V padded to one: few shapes, so each shape's CUDA graph is reused
WIDTH_STEP = 128
COMPACT_AT = 0.5  # at a look, finished rows leave once that shrinks the batch to this share
STOP_LOOKBACK = 11  # a stop string (<= 11 characters) may begin this many tokens back


def bucket(n):
    return WIDTH_STEP * -(-n // WIDTH_STEP)


def zeros(name, shape, dtype, device):
    """A rollout buffer; extras.graphs.Graphs.buffer gives ones kept for the run instead."""
    return torch.zeros(shape, dtype=dtype, device=device)


@dataclasses.dataclass
class RolloutCache:
    """The K/V of a batch of B prompts x G rows (row b * G + g): each prompt's once,
    `prompt` [2, layers, B, Hkv, P, d] (P padded: slots past a prompt's length are not
    seen), and each row's own tokens, `own` [2, layers, B, Hkv, G, L, d], which update()
    writes at `slot`."""
    prompt: torch.Tensor
    own: torch.Tensor
    length: torch.Tensor  # [B] each prompt's length
    slot: torch.Tensor  # [1] this step's slot in the rows' own K/V

    def update(self, layer, key, value, width):
        """This step's K/V [R, Hkv, 1, d] into the slot; returns the own K/V of slots <
        width."""
        B, Hkv, G, _, d = self.own.shape[2:]
        new = torch.stack([key, value])  # [2, R, Hkv, 1, d]
        new = new.view(2, B, G, Hkv, 1, d)
        new = new.transpose(2, 3)  # [2, B, Hkv, G, 1, d]
        own = self.own[:, layer]  # [2, B, Hkv, G, L, d]
        own.index_copy_(4, self.slot, new)
        return own[..., :width, :]  # K and V: [B, Hkv, G, W, d] each

    def visible(self, width, window=None):
        """[B, 1, 1, 1, P + width]: the prompt and own keys that this step's queries see."""
        P = self.prompt.shape[4]
        device = self.slot.device
        length = self.length[:, None]  # [B, 1]
        prompt_pos = torch.arange(P, device=device)  # [P]
        prompt_pos = prompt_pos.masked_fill(prompt_pos >= length, 2 ** 40)  # padding: unseen
        own_pos = length + torch.arange(width, device=device)  # [B, W]
        query_pos = length + self.slot  # [B, 1]
        key_pos = torch.cat([prompt_pos, own_pos], 1)  # [B, P + W]
        seen = visible(key_pos, query_pos, window)  # [B, 1, P + W]
        return seen[:, None, None]


@dataclasses.dataclass
class Rows:
    """The rows being decoded, in the cache's order (row b * G + g of prompt b), and what
    each has drawn so far."""
    noise: torch.Tensor  # [R] the root of a row's noise
    done: torch.Tensor  # [R] finished: EOS, a stop string, or a filler evening out groups
    logits: torch.Tensor  # [R, V] its next token's
    tokens: torch.Tensor  # [R, L] its new tokens
    logprobs: torch.Tensor  # [R, L] their log-probs where drawn
    entropies: torch.Tensor  # [R, L] that distribution's entropy
    job: list  # [R] on the host: (prompt in the batch, sample), None: a filler


TENSORS = ["noise", "done", "logits", "tokens", "logprobs", "entropies"]  # Rows' on the device


class Drawn(NamedTuple):
    """A finished row, read out to the host."""
    tokens: list  # its new tokens, EOS kept
    logprobs: list
    entropies: list


def prefill(model, prompts, noise, max_new_tokens, new=zeros):
    """Each prompt (token-id lists) through the model alone, its K/V into the batch's
    buffers once. noise: per prompt its rows' noise roots, up to G; a prompt with fewer
    fills its group with done copies of its last row. new(name, shape, dtype, device)
    makes each buffer. -> (RolloutCache, Rows), ready for the first decode step."""
    B, L = len(prompts), max_new_tokens
    G = max(map(len, noise))
    R, device = B * G, model.device
    dtype = model.dtype
    def empty(name, shape, dtype=dtype):
        return new(name, shape, dtype, device)
    long, fp32 = torch.long, torch.float32
    layers, Hkv, d = kv_shape(model)
    P = bucket(max(map(len, prompts)))
    V = model.config.vocab_size
    kv = (2, layers, B, Hkv)  # K and V, by layer and prompt
    cache = RolloutCache(empty("prompt", kv + (P, d)),  # each buffer named as its field
                         empty("own", kv + (G, L, d)),
                         empty("length", (B,), long),
                         empty("slot", (1,), long).zero_())
    rows = Rows(empty("noise", (R,), long),
                empty("done", (R,), torch.bool),
                empty("logits", (R, V)),
                empty("tokens", (R, L), long),
                empty("logprobs", (R, L), fp32),
                empty("entropies", (R, L), fp32),
                job=[])
    head = model.get_output_embeddings()
    for b, ids in enumerate(prompts):
        roots = noise[b]
        ids = torch.tensor([ids], device=device)  # [1, n]
        hidden, kv = prompt_pass(model, ids)
        n = ids.shape[1]
        kv = kv[:, :, 0]  # [2, layers, Hkv, n, d]
        cache.prompt[:, :, b, :, :n] = kv
        cache.length[b] = n
        group = slice(b * G, b * G + G)
        rows.logits[group] = head(hidden[0, -1])
        k = len(roots)  # samples; the rest of the group: fillers
        g = torch.arange(G, device=device)
        filled = g.clamp(max=k - 1)  # a filler repeats the last row
        rows.noise[group] = roots[filled]
        rows.done[group] = g >= k
        rows.job += [(b, g) for g in range(k)]
        rows.job += [None] * (G - k)
    return cache, rows


def decode_one_token(model, cache, rows, width, sampling):
    """Every row draws its next token, appends it, and the model runs one step on it: the
    same shapes at every step of a width and nothing asked of the host, so a CUDA graph
    can replay it. A finished row draws on, masked: its tokens are padding."""
    noise = mix(rows.noise ^ cache.slot)  # [R]
    draw = sample(rows.logits, noise, sampling.temperature, sampling.top_p)
    token = draw.token.masked_fill(rows.done, sampling.pad_token_id)  # [R]
    rows.tokens.index_copy_(1, cache.slot, token[:, None])  # into column `slot`
    rows.logprobs.index_copy_(1, cache.slot, draw.logprob[:, None])
    rows.entropies.index_copy_(1, cache.slot, draw.entropy[:, None])
    rows.done |= token == sampling.eos_token_id
    G = len(token) // len(cache.length)
    position = cache.length.repeat_interleave(G) + cache.slot  # [R]
    unseen = ~cache.visible(width)  # the keys no query sees, once a step
    out = model(input_ids=token[:, None],
                position_ids=position[:, None],
                use_cache=False,
                attention=decode_attention,
                rollout=cache,
                width=width,
                unseen=unseen)
    rows.logits.copy_(out.logits[:, -1])
    cache.slot += 1


def decode_n_tokens(model, cache, rows, max_new_tokens, sampling,
                    decode, stop, interrupt, new):
    """Up to max_new_tokens steps of `decode` (decode_one_token, or a CUDA graph's replay
    of it); every CHECK_EVERY steps, and at the end, the host looks (look_from_host) and
    the rows still going may move to smaller buffers (compact). -> {job: Drawn} for every
    row but the fillers, or None as soon as interrupt() says so at a look (a stop signal)."""
    drawn = {}
    for written in range(1, max_new_tokens + 1):  # steps so far, this one's included
        width = min(max_new_tokens, bucket(written))
        decode(model, cache, rows, width, sampling)
        if written % CHECK_EVERY and written < max_new_tokens:
            continue
        if interrupt and interrupt():
            return None
        going = look_from_host(rows, written, stop, drawn)
        if not any(going):
            break
        cache, rows = compact(cache, rows, going, written, new)
    return drawn


def look_from_host(rows, written, stop, drawn):
    """After `written` steps: a row not read out yet whose new tokens hold a stop string
    (stop(job, tail, first) -> where it ends in the tail, whose new tokens start at
    `first`) ends there; every row that has ended, and every row once its table is full,
    is read out into drawn[job]. -> [R] bools: the rows still going."""
    done = rows.done.tolist()
    unread = [r for r, job in enumerate(rows.job)
              if job is not None and job not in drawn]
    ends = {}  # row -> where its stop string ends
    if stop:
        start = (written - 1) // CHECK_EVERY * CHECK_EVERY  # the last look's
        lo = max(0, start - STOP_LOOKBACK)
        tails = rows.tokens[unread, lo:written].tolist()
        for r, tail in zip(unread, tails):
            end = stop(rows.job[r], tail, start - lo)
            if end:
                ends[r] = lo + end
                done[r] = True
        rows.done[list(ends)] = True
    full = written == rows.tokens.shape[1]
    for r in unread:
        if done[r] or full:
            end = ends.get(r, written)
            drawn[rows.job[r]] = read_out(rows, r, end)
    return [not (d or full) for d in done]


def read_out(rows, r, end):
    """Row r's draws up to `end`, to the host: Rows' tables named as Drawn's fields."""
    return Drawn(*(getattr(rows, name)[r, :end].tolist() for name in Drawn._fields))


def compact(cache, rows, going, written, new=zeros):
    """The rows still going, each prompt's padded with its finished ones to G' (a power of
    two), in buffers of their size, so later steps compute for them alone; the same cache
    and rows unless that shrinks the batch to COMPACT_AT of its rows. going: [R] bools
    read at a look; written: own slots so far."""
    _, layers, B, Hkv, G, L, d = cache.own.shape
    groups = [range(b * G, b * G + G)  # prompt b's rows
              for b in range(B)]
    counts = [sum(going[r] for r in group) for group in groups]  # rows going a prompt
    keep = [b for b in range(B) if counts[b]]
    most = max(counts)
    G2 = 2 ** math.ceil(math.log2(most))  # rows a prompt from now on
    G2 = min(G, G2)
    if len(keep) * G2 > COMPACT_AT * B * G:
        return cache, rows
    first = lambda r: not going[r]  # going rows first, in their order
    picked = [sorted(groups[b], key=first)[:G2] for b in keep]
    device = rows.done.device
    pick = torch.tensor(picked, device=device)  # [B', G']
    kept = torch.tensor(keep, device=device)  # [B']
    P = cache.prompt.shape[4]
    def like(name, x, shape):
        return new(name, shape, x.dtype, device)
    def buffered(name, x):  # x, a copy read out first, into the buffer `name`
        return like(name, x, x.shape).copy_(x)
    kv = (2, layers, len(keep), Hkv)
    prompt = like("prompt", cache.prompt, kv + (P, d))
    own = like("own", cache.own, kv + (G2, L, d))
    # With graphs a new buffer is the front of its old one: layer by layer in storage
    # order, each old layer is read before a smaller new one is written over it
    parts_and_layers = itertools.product(range(2), range(layers))
    for part, layer in parts_and_layers:
        prompt[part, layer] = cache.prompt[part, layer, kept]
        old = cache.own[part, layer]  # [B, Hkv, G, L, d]
        moved = old[pick // G, :, pick % G, :written]  # [B', G', Hkv, n, d]
        moved = moved.transpose(1, 2)  # [B', Hkv, G', n, d]
        own[part, layer, ..., :written, :] = moved
    length = buffered("length", cache.length[kept])
    order = pick.view(-1)  # [R']
    tables = {name: buffered(name, getattr(rows, name)[order]) for name in TENSORS}
    jobs = [rows.job[r] for r in order.tolist()]
    return RolloutCache(prompt, own, length, cache.slot), Rows(**tables, job=jobs)


# ----------------------------------------------------------------------------- generate
@torch.no_grad()
def generate(model, prompt_ids, n=1, max_new_tokens=4096,
             temperature=1.0, top_p=1.0, eos_token_id=None, pad_token_id=0,
             seed=0, prompt_numbers=None, stop=None, batch_size=64,
             graphs=None, logprobs=False, interrupt=None):
    """prompt_ids: token-id lists; n: samples per prompt, or per prompt a list of sample
    numbers. Returns, per prompt, its completions (token-id lists, EOS kept) in sample
    order. Sample s of prompt p draws from noise hashed from (seed, prompt_numbers[p], s)
    (0, 1, ... by default): the same tokens whichever rows share its batch or process, up
    to float rounding of the logits. Stops at EOS, max_new_tokens, or where stop(job,
    tail, first) says (look_from_host). Decodes B prompts x G rows <= batch_size at a
    time; with graphs (extras.graphs.cuda_graphs()), each step replays a CUDA graph. logprobs: each
    completion is a Drawn (tokens, their log-probabilities under the distribution each was
    drawn from, its entropies). Returns None if interrupt() says so at one of the host's
    looks (a stop signal)."""
    samples = n
    if isinstance(n, int):
        samples = [range(n)] * len(prompt_ids)
    numbers = prompt_numbers or range(len(prompt_ids))
    eos = -1 if eos_token_id is None else eos_token_id
    sampling = Sampling(temperature, top_p, eos, pad_token_id)
    # a batch: B prompts x G rows <= batch_size (a prompt with more samples is split)
    most = max([1, *map(len, samples)])
    G = min(batch_size, most)
    jobs = []  # (prompt, its samples): G at most
    for p, s in enumerate(samples):
        starts = range(0, len(s), G)
        jobs += [(p, list(s[i:i + G])) for i in starts]
    per_batch = batch_size // G
    starts = range(0, len(jobs), per_batch)
    batches = [jobs[i:i + per_batch] for i in starts]
    results = [[] for _ in prompt_ids]
    with passing_attention(model):
        if graphs and graphs.ok is None and batches:
            first = prompt_ids[batches[0][0][0]]
            graphs.check(model, first, sampling)
        use = graphs if graphs and graphs.ok else None
        decode = use or decode_one_token  # a CUDA graph's replay, or the step itself
        new = use.buffer if use else zeros  # with graphs, buffers kept for the run
        for batch in batches:
            keys = [[(numbers[p], s) for s in group]
                    for p, group in batch]
            noise = [noise_roots(seed, k, model.device) for k in keys]
            prompts = [prompt_ids[p] for p, _ in batch]
            cache, rows = prefill(model, prompts, noise, max_new_tokens, new)
            drawn = decode_n_tokens(model, cache, rows, max_new_tokens, sampling,
                                    decode, stop, interrupt, new)
            if drawn is None:
                return None
            for b, (p, group) in enumerate(batch):
                for g in range(len(group)):
                    row = cut_at_eos(drawn[b, g], eos)
                    results[p].append(row if logprobs else row.tokens)
    return results


def cut_at_eos(drawn, eos):
    """A row's draws up to its first EOS, kept."""
    tokens = drawn.tokens
    end = len(tokens)
    if eos in tokens:
        end = tokens.index(eos) + 1
    return Drawn(*(x[:end] for x in drawn))
