"""Model loading and batched sampling, shared by drafts.py, grpo.py and evaluate.py.

generate() prefills each prompt once and keeps its K/V once: its n samples' cache holds only their own tokens, and
their attention reads the prompt's K/V through shared_prompt_attention (all n queries in one product). Finished
samples leave the batch (a step costs what the live samples cost; the loop ends with the longest one), and sampling
uses a seeded torch.Generator (same seed, same batch -> same tokens).
`--model tiny` everywhere builds a random Mistral-architecture model and a BPE tokenizer on the spot, so the whole
pipeline runs offline on a CPU.
"""
import contextlib
import functools
import itertools
import json
import os

import torch
from tqdm import tqdm
from transformers import DynamicCache

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- models
@functools.lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size=2000, corpus=os.path.join(HERE, "data", "math_train.jsonl"), lines=2000):
    """A byte-level BPE tokenizer trained on MATH problems in a second (deterministic), BOS prepended like Mistral."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    with open(corpus, encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, lines)]
    texts = [text for row in rows for text in (row["problem"], row.get("solution", ""))]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def tiny_model(vocab_size, seed=0, hidden=64, layers=2, heads=4, kv_heads=2):
    """Random MistralForCausalLM with Mathstral's layout (GQA, SwiGLU, RoPE) at a few hundred thousand params."""
    from transformers import MistralConfig, MistralForCausalLM
    config = MistralConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           max_position_embeddings=16384, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                           sliding_window=None, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MistralForCausalLM(config)
    model.name_or_path = "tiny"
    return model


def load_tokenizer(name, trust_remote_code=False):
    """The tokenizer alone (a hub id, a local directory or 'tiny'), with a pad token for batching."""
    from transformers import AutoTokenizer
    tokenizer = tiny_tokenizer() if name == "tiny" else AutoTokenizer.from_pretrained(
        name, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(name, device=None, dtype=None, trust_remote_code=False):
    """(model, tokenizer) from a hub id or local directory, or 'tiny'. bf16 on CUDA, fp32 on CPU by default."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = load_tokenizer(name, trust_remote_code)
    if name == "tiny":
        model = tiny_model(len(tokenizer)).to(device=device, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code).to(device)
        model.name_or_path = name
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- sampling
def sample_next(logits, temperature, top_p, generator):
    """logits [R, V] -> next tokens [R]. temperature 0 = greedy; nucleus (top_p) filtering before sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p                      # keep the smallest nucleus
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(seqs, pad_token_id, device):
    """Token-id lists -> (ids, attention mask, position ids), each [N, longest], padded on the left so that every
    sequence ends in the last column (and slot distances equal position distances, which sliding-window attention
    counts); each sequence's positions start at 0, pads sit at 0."""
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + list(s) for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def shares_prompts(model):
    """Whether generate() and grpo's update can hold each prompt's K/V once: not with sliding-window attention,
    whose mask our attention does not implement (those models copy the prompt to every row, as before)."""
    return getattr(model.config, "sliding_window", None) is None


def shared_prompt_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                            shared_prompts=None, **kwargs):
    """Attention of n rows over their prompt's K/V, held once per prompt, and over their own tokens' K/V, the two
    parts merged exactly (online softmax). Registered with transformers as "shared_prompts" (its attention-function
    seam), so Mistral, Llama and Qwen2 run it unchanged. query [n, H, T, d]; key/value [n, Hkv, S, d]: the rows' own
    tokens, the last T of them the queries'. shared_prompts = (keys, values, mask, prompt, slot, G): per layer
    [B, Hkv, P, d]; mask [B, P] (False on left padding); row -> its prompt and its place among that prompt's <= G
    rows. attention_mask is not used: the prompt part masks padding, the own part is causal. Like transformers'
    eager attention: products in the model's dtype, softmax in fp32; no dropout (the recipe has none)."""
    keys, values, mask, prompt, slot, G = shared_prompts
    kp, vp = keys[module.layer_idx], values[module.layer_idx]                                 # [B, Hkv, P, d]
    (n, H, T, d), (B, Hkv, P, _) = query.shape, kp.shape
    q = query.reshape(n, Hkv, H // Hkv * T, d) * scaling        # GQA: head h reads K/V head h // (H // Hkv)
    qg = q.new_zeros(B, G, Hkv, H // Hkv * T, d).index_put_((prompt, slot), q)               # [B, G, Hkv, M, d]
    qg = qg.transpose(1, 2).reshape(B, Hkv, -1, d)           # all G rows' queries of a prompt in one product
    pad = torch.zeros(B, 1, 1, P, device=q.device).masked_fill_(~mask[:, None, None, :], float("-inf"))   # [B, 1, 1, P]
    s1 = (qg @ kp.transpose(-1, -2)).float().add_(pad)      # left padding at -inf
    m1 = s1.detach().amax(-1, keepdim=True)                 # any constant per query is exact; the max is stable
    e1 = s1.sub_(m1).exp_()                                  # in place: scores are the big tensors [B, Hkv, G*M, P]
    u1, z1 = e1.to(vp.dtype) @ vp, e1.sum(-1, keepdim=True)      # unnormalised output [B, Hkv, G*M, d] and sum
    u1, z1, m1 = (x.unflatten(2, (G, -1)).transpose(1, 2)[prompt, slot] for x in (u1, z1, m1))  # [n, Hkv, M, *]
    s2 = (q @ key.transpose(-1, -2)).float()                                                  # [n, Hkv, M, S]
    if T > 1:                                                   # own tokens: causal (row padding sits at the end)
        S = key.shape[2]
        future = torch.arange(S, device=q.device) > torch.arange(S - T, S, device=q.device)[:, None]   # [T, S]
        s2 = s2.masked_fill_(future.repeat(H // Hkv, 1), float("-inf"))
    m2 = s2.detach().amax(-1, keepdim=True)
    e2 = s2.sub_(m2).exp_()                                                                   # [n, Hkv, M, S]
    u2, z2 = e2.to(value.dtype) @ value, e2.sum(-1, keepdim=True)
    m = torch.maximum(m1, m2)                                   # the merge: one softmax over prompt + own tokens
    a1, a2 = (m1 - m).exp(), (m2 - m).exp()                                                   # [n, Hkv, M, 1]
    out = (u1 * a1 + u2 * a2) / (z1 * a1 + z2 * a2)                                           # [n, Hkv, M, d]
    return out.reshape(n, H, T, d).transpose(1, 2).to(query.dtype), None                     # [n, T, H, d]


@contextlib.contextmanager
def sharing_prompts(model, share=True):
    """Within the block (backward passes included), the model's attention layers run shared_prompt_attention."""
    from transformers import AttentionInterface
    AttentionInterface.register("shared_prompts", shared_prompt_attention)
    old = model.config._attn_implementation
    model.config._attn_implementation = "shared_prompts" if share else old
    try:
        yield
    finally:
        model.config._attn_implementation = old


def _plan(num_prompts, n, batch_size):
    """Split (prompt, sample) work into batches of at most batch_size sequences: [[(prompt, count), ...], ...]."""
    batches = [[]]
    for job in ((p, min(batch_size, n - start)) for p in range(num_prompts) for start in range(0, n, batch_size)):
        if sum(c for _, c in batches[-1]) + job[1] > batch_size:
            batches.append([])
        batches[-1].append(job)
    return [b for b in batches if b]


@torch.no_grad()
def generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0, eos_token_id=None,
             pad_token_id=0, seed=0, stop_strings=(), tokenizer=None, batch_size=64, desc=None, share=None):
    """prompt_ids: list of token-id lists. Returns, per prompt, n completions as token-id lists (EOS kept).

    Stops at EOS, at max_new_tokens, or (with a tokenizer) once the decoded tail contains a stop string.
    share (default: shares_prompts(model)): each prompt's K/V is held once, and its rows' cache holds only their own
    tokens (shared_prompt_attention); False copies the prompt's K/V to each of its n rows (sliding-window models,
    and bench.py's baseline). Both sample the same tokens, up to float rounding."""
    share = shares_prompts(model) if share is None else share
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    results = [[] for _ in prompt_ids]
    bar = tqdm(total=len(prompt_ids) * n, desc=desc, disable=desc is None, unit="seq")
    for batch in _plan(len(prompt_ids), n, batch_size):
        ids, mask, positions = left_pad([prompt_ids[p] for p, _ in batch], pad_token_id, device)           # [J, P]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        counts = torch.tensor([c for _, c in batch], device=device)                                         # [J]
        prompt = torch.repeat_interleave(torch.arange(len(batch), device=device), counts)                   # [R]
        logits, position = out.logits[prompt, -1], mask.sum(-1, keepdim=True)[prompt]                      # [R, V]
        cache, kw = out.past_key_values, {}                                    # prefilled once per prompt
        if share:                                        # the prompts' K/V stay as they are; rows get a new cache
            slot = torch.arange(len(prompt), device=device) - (torch.cumsum(counts, 0) - counts)[prompt]   # [R]
            prompts = ([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], mask.bool(),
                       prompt, slot, max(counts.tolist()))
            cache, kw = DynamicCache(), {"shared_prompts": prompts}
        else:
            cache.batch_select_indices(prompt)                                 # copy each prompt's K/V to its rows
        mask = mask[prompt]                                             # [R, P]; read by the copying path only
        owner = [p for p, c in batch for _ in range(c)]
        tokens = [[] for _ in owner]
        live = torch.arange(len(owner), device=device)                                                     # [R]
        with sharing_prompts(model, share):
            for _ in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_p, generator)                                    # [R]
                keep = []
                for row, tok in zip(live.tolist(), nxt.tolist()):
                    tokens[row].append(tok)
                    done = tok == eos_token_id or (stop_strings and tokenizer is not None and any(
                        s in tokenizer.decode(tokens[row][-12:]) for s in stop_strings))
                    keep.append(not done)
                if not any(keep):
                    break
                if not all(keep):                                              # drop finished rows from the batch
                    sel = torch.tensor(keep, device=device)
                    live, nxt, position, mask = live[sel], nxt[sel], position[sel], mask[sel]
                    cache.batch_select_indices(sel.nonzero().squeeze(-1))
                    if share:
                        kw["shared_prompts"] = prompts[:3] + (prompts[3][live], prompts[4][live], prompts[5])
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
                logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position,
                               past_key_values=cache, use_cache=True, **kw).logits[:, -1]
                position = position + 1
        for row, p in enumerate(owner):
            results[p].append(tokens[row])
        bar.update(len(owner))
    bar.close()
    return results
