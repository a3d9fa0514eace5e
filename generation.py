"""Model loading and batched sampling, shared by drafts.py, grpo.py and evaluate.py.

generate() prefills each prompt once and keeps its K/V once: its n samples' cache holds only their own tokens, and
their attention reads the prompt's K/V through shared_prompt_attention (all n queries in one product). Finished
samples leave the batch (a step costs what the live samples cost; the loop ends with the longest one). Sample s of
prompt p draws from noise keyed by (seed, p's key, s, step): its tokens do not depend on the batch or the process.
`--model tiny` builds a random Mistral-architecture model and a BPE tokenizer on the spot (the pipeline runs offline
on a CPU). Under torchrun, distributed(), gather() and rounds() are all that the three scripts need.
"""
import contextlib
import datetime
import functools
import itertools
import json
import os
import sys

import torch
import torch.distributed as dist
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
    return model.eval(), tokenizer



def cache_bytes(model, prompt_tokens, rows, new_tokens):
    """The most K/V bytes a rollout batch holds: each prompt's once, plus every row's own new tokens."""
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (getattr(c, "head_dim", None) or
                                                                   c.hidden_size // c.num_attention_heads)
    return per_token * model.dtype.itemsize * (prompt_tokens + rows * new_tokens)

# ----------------------------------------------------------------------------- sampling
def mix(x):
    """A 32-bit integer hash of an int64 tensor (values < 2**32; constants < 2**31, so no product overflows)."""
    for c in (0x7FEB352D, 0x45D9F3B):
        x = ((x ^ (x >> 16)) * c) & 0xFFFFFFFF
    return x ^ (x >> 16)


def sample_next(logits, temperature, top_p, keys):
    """logits [R, V], keys [R] (one per row and step) -> next tokens [R]. temperature 0 = greedy; else nucleus (top_p)
    filtering, then argmax p / E with E ~ Exp(1) hashed from (key, token): exactly a draw from p, the row's own."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p                      # keep the smallest nucleus
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    u = ((mix(keys[:, None] ^ torch.arange(probs.shape[-1], device=probs.device)) >> 9) + 0.5) * 2 ** -23  # [R, V]
    return (probs / -torch.log(u)).argmax(dim=-1)    # 23 bits + 0.5 are exact in fp32: u in (0, 1), E > 0, 0/E = 0


def sample_keys(seed, jobs, device):
    """[R] int64: the root of each (prompt key, sample) job's noise under `seed`; step t's key is mix(root ^ t)."""
    key = torch.tensor([[seed & 0xFFFFFFFF, p, s] for p, s in jobs], device=device)                          # [R, 3]
    return mix(mix(mix(key[:, 0]) ^ key[:, 1]) ^ key[:, 2])


def left_pad(seqs, pad_token_id, device):
    """Token-id lists -> (ids, attention mask, position ids), each [N, longest], padded on the left so that every
    sequence ends in the last column; each sequence's positions start at 0, pads sit at 0."""
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + list(s) for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def shared_prompt_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                            shared_prompts=None, record=None, sliding_window=None, **kwargs):
    """Attention of n rows over their prompt's K/V, held once per prompt, and over their own tokens' K/V, the two
    parts merged exactly (online softmax); registered with transformers as "shared_prompts", so Mistral, Llama and
    Qwen2 run it unchanged. query [n, H, T, d]; key/value [n, Hkv, S, d]: the rows' own tokens, the last T the
    queries'. shared_prompts = (keys, values, mask, prompt, slot, G): per layer [B, Hkv, P, d]; mask [B, P] (False on
    left padding); row -> its prompt and its place among that prompt's <= G rows. The prompt part masks padding, the
    own part is causal, both the sliding window. Products in the model's dtype, softmax in fp32 (as eager attention).
    record (a dict): a prompt pass, plain SDPA that keeps each layer's K/V (grpo's rows then attend to them)."""
    if record is not None:
        record[module.layer_idx] = (key, value)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    keys, values, mask, prompt, slot, G = shared_prompts
    kp, vp = keys[module.layer_idx], values[module.layer_idx]                                 # [B, Hkv, P, d]
    (n, H, T, d), (B, Hkv, P, _), S = query.shape, kp.shape, key.shape[2]
    W = sliding_window or 2 ** 62                               # a key W or more positions back is out of the window
    q = query.reshape(n, Hkv, H // Hkv * T, d) * scaling        # GQA: head h reads K/V head h // (H // Hkv)
    qg = q.new_zeros(B, G, Hkv, H // Hkv * T, d).index_put_((prompt, slot), q)               # [B, G, Hkv, M, d]
    qg = qg.transpose(1, 2).reshape(B, Hkv, -1, d)           # all G rows' queries of a prompt in one product
    pad = torch.zeros(B, 1, 1, P, device=q.device).masked_fill_(~mask[:, None, None, :], float("-inf"))   # [B, 1, 1, P]
    s1 = (qg @ kp.transpose(-1, -2)).float().add_(pad)      # left padding at -inf
    if sliding_window:          # query t sits at position len + S - T + t, prompt key j at j - (left padding)
        back = (mask.sum(-1, keepdim=True) + S - T + torch.arange(T, device=q.device))[:, :, None] \
            - (mask.cumsum(-1) - 1)[:, None, :]                                               # [B, T, P]
        s1.view(B, Hkv, -1, T, P).masked_fill_((back >= W)[:, None, None], float("-inf"))
    m1 = s1.detach().amax(-1, keepdim=True).clamp_(min=-1e30)   # any constant per query is exact; the max is stable
    e1 = s1.sub_(m1).exp_()                                  # in place: scores are the big tensors [B, Hkv, G*M, P]
    u1, z1 = e1.to(vp.dtype) @ vp, e1.sum(-1, keepdim=True)      # unnormalised output [B, Hkv, G*M, d] and sum
    u1, z1, m1 = (x.unflatten(2, (G, -1)).transpose(1, 2)[prompt, slot] for x in (u1, z1, m1))  # [n, Hkv, M, *]
    s2 = (q @ key.transpose(-1, -2)).float()                                                  # [n, Hkv, M, S]
    j, i = torch.arange(S, device=q.device), torch.arange(S - T, S, device=q.device)[:, None]  # own key, query
    hide = (j > i) | (i - j >= W)                               # own tokens: causal (row padding sits at the end)
    s2 = s2.masked_fill_(hide.repeat(H // Hkv, 1), float("-inf"))                             # [T, S] per head
    m2 = s2.detach().amax(-1, keepdim=True)
    e2 = s2.sub_(m2).exp_()                                                                   # [n, Hkv, M, S]
    u2, z2 = e2.to(value.dtype) @ value, e2.sum(-1, keepdim=True)
    m = torch.maximum(m1, m2)                                   # the merge: one softmax over prompt + own tokens
    a1, a2 = (m1 - m).exp(), (m2 - m).exp()                                                   # [n, Hkv, M, 1]
    out = (u1 * a1 + u2 * a2) / (z1 * a1 + z2 * a2)                                           # [n, Hkv, M, d]
    return out.reshape(n, H, T, d).transpose(1, 2).to(query.dtype), None                     # [n, T, H, d]


@contextlib.contextmanager
def sharing_prompts(model):
    """Within the block (backward passes included), attention layers run shared_prompt_attention, with SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    AttentionInterface.register("shared_prompts", shared_prompt_attention)
    AttentionMaskInterface.register("shared_prompts", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    old, model.config._attn_implementation = model.config._attn_implementation, "shared_prompts"
    try:
        yield
    finally:
        model.config._attn_implementation = old


@torch.no_grad()
def generate(model, prompt_ids, n=1, max_new_tokens=4096, temperature=1.0, top_p=1.0, eos_token_id=None,
             pad_token_id=0, seed=0, keys=None, stop_strings=(), tokenizer=None, batch_size=64):
    """prompt_ids: token-id lists; n: samples per prompt, or per prompt a list of sample numbers. Returns, per prompt,
    its completions (token-id lists, EOS kept) in sample order. Sample s of prompt p draws from noise keyed by
    (seed, keys[p], s) (keys default to 0, 1, ...): the same tokens whichever rows share its batch or process, up to
    float rounding of the logits. Stops at EOS, max_new_tokens, or (with a tokenizer) a stop string in the tail."""
    samples = [range(n)] * len(prompt_ids) if isinstance(n, int) else n
    keys = range(len(prompt_ids)) if keys is None else keys
    jobs = [(p, s) for p in range(len(prompt_ids)) for s in samples[p]]
    device, results = next(model.parameters()).device, [[] for _ in prompt_ids]
    for start in range(0, len(jobs), batch_size):                      # consecutive rows; a prompt may straddle two
        owner = [p for p, _ in jobs[start:start + batch_size]]
        firsts = sorted(set(owner))                                                                         # [J]
        # Each prompt is prefilled alone: no padding, so no fully masked row for a fused kernel to return NaN on;
        # the K/V are then left-padded with zeros, which the attention masks.
        outs = [model(input_ids=torch.tensor([prompt_ids[p]], device=device), past_key_values=DynamicCache(),
                      use_cache=True, logits_to_keep=1) for p in firsts]  # a plain cache keeps a windowed prompt
        mask = left_pad([prompt_ids[p] for p in firsts], pad_token_id, device)[1]                          # [J, P]
        P = mask.shape[1]
        kv = [[torch.cat([torch.nn.functional.pad(getattr(o.past_key_values.layers[i], part), (0, 0, P - len(
            prompt_ids[p]), 0)) for o, p in zip(outs, firsts)]) for i in range(len(outs[0].past_key_values.layers))]
            for part in ("keys", "values")]                                                    # [J, Hkv, P, d]
        prompt = torch.tensor([firsts.index(p) for p in owner], device=device)                              # [R]
        slot = torch.tensor([r - owner.index(p) for r, p in enumerate(owner)], device=device)               # [R]
        prompts = (kv[0], kv[1], mask.bool(), prompt, slot, max(slot.tolist()) + 1)
        logits = torch.cat([o.logits[:, -1] for o in outs])[prompt]                                         # [R, V]
        position = mask.sum(-1, keepdim=True)[prompt]                                                      # [R, 1]
        key = sample_keys(seed, [(keys[p], s) for p, s in jobs[start:start + batch_size]], device)          # [R]
        tokens, live, cache = [[] for _ in owner], torch.arange(len(owner), device=device), DynamicCache()
        with sharing_prompts(model):                                       # the rows' cache holds their own tokens
            for t in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_p, mix(key ^ t))                                 # [R]
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
                    live, nxt, position, key = live[sel], nxt[sel], position[sel], key[sel]
                    cache.batch_select_indices(sel.nonzero().squeeze(-1))
                    prompts = prompts[:3] + (prompts[3][sel], prompts[4][sel], prompts[5])
                logits = model(input_ids=nxt[:, None], position_ids=position, past_key_values=cache, use_cache=True,
                               shared_prompts=prompts).logits[:, -1]
                position = position + 1
        for row, p in enumerate(owner):
            results[p].append(tokens[row])
    return results


# ----------------------------------------------------------------------------- processes (torchrun)
TIMEOUT = "DIST_TIMEOUT_MINUTES"     # how long a process may wait for the others (an AIME chunk: tens of minutes)


def distributed(flags=None):
    """(rank, world size); plain `python` is process 0 of 1. Under torchrun: joins its process group (NCCL on GPUs, gloo
    on CPU), takes GPU LOCAL_RANK, and stops every process if any was started with `flags` other than process 0's.
    A process waits for the others at most $DIST_TIMEOUT_MINUTES (default 180; NCCL's own default, 10 minutes, is
    shorter than one evaluation chunk at n = 2,048, and its watchdog would tear the run down)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(minutes=float(os.environ.get(TIMEOUT, 180))))
    ranks = gather(flags) if flags is not None else [{}]
    bad = [f"process {r}: --{k.replace('_', '-')}" for r, f in enumerate(ranks) for k in f if f[k] != ranks[0].get(k)]
    if bad:
        raise ValueError(f"processes were started with flags other than process 0's (the run's): {', '.join(bad)}")
    return int(os.environ.get("RANK", 0)), world


def gather(obj):
    """Every process's obj, in rank order, on every process ([obj] alone); also a barrier."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rounds(chunks, work, path, desc):
    """Deal chunks round-robin over the processes: each round, every process runs work(its chunk) -> a list of rows,
    and process 0 appends them all to the JSONL file `path` in chunk order, the order one process would."""
    rank, world = distributed()
    for first in tqdm(range(0, len(chunks), world), desc=desc, unit="round", disable=rank > 0):
        rows = gather(work(chunks[first + rank]) if first + rank < len(chunks) else [])
        if rank == 0:
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for part in rows for row in part)


def run_main(main, errors):
    """A script's entry: main(); one of `errors` -> "error: ..." and exit status 1. Under torchrun, after success,
    the processes wait for each other (every send has arrived), then tear the process group down; on gloo they exit
    skipping C++ teardown instead, where finished processes aborted in 1-3 % of runs."""
    try:
        main()
    except errors as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:                  # gloo's and NCCL's timeouts say "Timed out"
        if "imed out" not in str(e):
            raise
        sys.exit(f"error: a process waited longer than ${TIMEOUT} minutes for the others ({str(e).splitlines()[0]})")
    if dist.is_initialized():
        gather(None)
        if dist.get_backend() != "gloo":
            return dist.destroy_process_group()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
