"""Model loading and batched sampling, shared by drafts.py, grpo.py and evaluate.py.

generate() prefills each prompt once and copies its KV cache to its n samples, drops finished samples from the
batch (so a step costs what the live samples cost, and the loop ends with the longest one), and samples with a
seeded torch.Generator (same seed, same batch -> same tokens). decode="compiled" trades the shrinking batch for
fixed shapes (a preallocated cache, every row to the end) so that a GPU can replay each step as a CUDA graph.
`--model tiny` everywhere builds a random Mistral-architecture model and a BPE tokenizer on the spot, so the whole
pipeline runs offline on a CPU.
"""
import functools
import inspect
import itertools
import json
import os

import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
DECODE = ("dynamic", "static", "compiled")              # generate()'s KV-cache strategies


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


def _static_cache(model, cache, rows, length):
    """A preallocated KV cache of `length` slots holding `rows` of a prefilled DynamicCache: fixed tensor shapes and
    addresses, which a CUDA graph needs."""
    from transformers import StaticCache
    static = StaticCache(config=model.config, max_cache_len=length)
    for i, layer in enumerate(cache.layers):
        static.update(layer.keys[rows], layer.values[rows], i)
    return static


def _plan(num_prompts, n, batch_size):
    """Split (prompt, sample) work into batches of at most batch_size sequences: [[(prompt, count), ...], ...]."""
    jobs = [(p, min(batch_size, n - start)) for p in range(num_prompts) for start in range(0, n, batch_size)]
    batches, current, size = [], [], 0
    for job in jobs:
        if size + job[1] > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(job)
        size += job[1]
    return batches + ([current] if current else [])


@torch.no_grad()
def generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0, eos_token_id=None,
             pad_token_id=0, seed=0, stop_strings=(), tokenizer=None, batch_size=64, desc=None, decode="dynamic"):
    """prompt_ids: list of token-id lists. Returns, per prompt, n completions as token-id lists (EOS kept).

    Stops at EOS, at max_new_tokens, or (with a tokenizer) once the decoded tail contains a stop string.
    decode: "dynamic" (a growing KV cache; finished rows leave the batch), "static" (a preallocated cache of prompt +
    max_new_tokens slots; finished rows ride along, ignored) or "compiled" ("static" with the decode step under
    torch.compile(mode="reduce-overhead"): CUDA graphs on a GPU). All three sample the same tokens."""
    if decode not in DECODE:
        raise ValueError(f"decode must be one of {DECODE}, not {decode!r}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    results = [[] for _ in prompt_ids]
    bar = tqdm(total=len(prompt_ids) * n, desc=desc, disable=desc is None, unit="seq")
    for batch in _plan(len(prompt_ids), n, batch_size):
        ids, mask, positions = left_pad([prompt_ids[p] for p, _ in batch], pad_token_id, device)           # [J, P]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        expand = torch.repeat_interleave(torch.arange(len(batch), device=device),
                                         torch.tensor([c for _, c in batch], device=device))                # [R]
        cache = out.past_key_values                   # prefill once per prompt, then copy its KV cache to n rows
        logits, mask = out.logits[expand, -1], mask[expand]                                                # [R, V]
        position = mask.sum(-1, keepdim=True)                                                               # [R, 1]
        width, forward, kw = mask.shape[1], model, {}
        if decode == "dynamic":
            cache.batch_select_indices(expand)
        else:                                         # fixed shapes: a preallocated cache, every row to the end
            cache = _static_cache(model, cache, expand, width + max_new_tokens)
            mask = torch.cat([mask, mask.new_zeros(len(expand), max_new_tokens)], dim=1)                    # [R, M]
            slot = "cache_position" in inspect.signature(model.forward).parameters   # transformers that still take it
            if decode == "compiled":     # each step replays as a CUDA graph; dynamo compiles once per process
                forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        owner = [p for p, c in batch for _ in range(c)]
        tokens = [[] for _ in owner]
        live = torch.arange(len(owner), device=device)                                                     # [R]
        for t in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_p, generator)                                        # [R]
            keep = []
            for row, tok in zip(live.tolist(), nxt.tolist()):
                tokens[row].append(tok)
                done = tok == eos_token_id or (stop_strings and tokenizer is not None and any(
                    s in tokenizer.decode(tokens[row][-12:]) for s in stop_strings))
                keep.append(not done)
            if not any(keep):
                break
            if not all(keep):
                sel = torch.tensor(keep, device=device)
                live, nxt = live[sel], nxt[sel]
                if decode == "dynamic":                                        # drop finished rows from the batch
                    mask, position = mask[sel], position[sel]
                    cache.batch_select_indices(sel.nonzero().squeeze(-1))
            if decode == "dynamic":
                mask, ids, rows = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1), nxt[:, None], slice(None)
            else:                                     # finished rows decode padding, which is ignored
                mask[:, width + t] = 1
                ids = torch.full((len(owner), 1), pad_token_id, device=device).index_put_((live,), nxt[:, None])
                rows, kw = live, {"cache_position": torch.tensor([width + t], device=device)} if slot else {}
            logits = forward(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                             use_cache=True, **kw).logits[rows, -1]
            position = position + 1
        for row, p in enumerate(owner):
            results[p].append(tokens[row])
        bar.update(len(owner))
    bar.close()
    return results
