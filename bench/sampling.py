"""Host and sampler work a decode step, on the CPU: bench.py stops (evaluate's stop
strings at the host's looks: stop_finder against decoding every new token's window,
old_stop_look) and bench.py sampler (keyed sampling against torch.multinomial on one
shared generator, multinomial_next); each baseline kept as it was, with a check that
both agree."""
import os
import time

import torch

from bench.common import HERE, cpu_name, save, timed
from drafts import load_jsonl
from evaluate import STOP_STRINGS, stop_finder
from extras.tiny import tokenizer as tiny_tokenizer
from generation import mix, noise_roots, sample


def old_stop_look(tokenizer, stop_strings, row, first):
    """The look before stop_finder, as the baseline: every new token's window of 12
    decoded."""
    return next((u + 1 for u in range(first, len(row))
                 if any(s in tokenizer.decode(row[max(0, u - 11):u + 1]) for s in stop_strings)),
                None)


def bench_stops(args):
    """Stop strings at the host's looks (evaluate.py's "\\n\\nProblem:",
    "\\nProblem:"): host time a look over 64 rows of 16 new tokens each, along
    4,096-token rows of MATH solutions (the tiny BPE tokenizer), with
    evaluate.stop_finder (only tokens that hold a stop string's last character are
    decoded) against decoding every new token's window (old_stop_look); both must end
    every row at the same token."""
    tok = tiny_tokenizer()
    text = " ".join(r["solution"] for r in load_jsonl(
        os.path.join(HERE, "data", "math_train.jsonl"), required=("id", "problem", "answer")))
    ids = tok(text[:2_000_000], add_special_tokens=False)["input_ids"]
    rows = [ids[i * 4096:(i + 1) * 4096] for i in range(64)]
    finder = stop_finder(tok, STOP_STRINGS)
    result = {"device": cpu_name(), "rows": 64, "tokens": 4096}
    for label, look in (("stop_finder", lambda row, first: finder(0, row, first)),
                        ("every_window", lambda row, first: old_stop_look(tok, STOP_STRINGS, row,
                                                                          first))):
        t, ends = time.perf_counter(), []
        for first in range(0, 4096, 16):            # 256 looks, each at the 16 new tokens
            lo = max(0, first - 11)
            ends.append([look(row[lo:first + 16], first - lo) for row in rows])
        result[f"{label}_ms_per_look"] = 1e3 * (time.perf_counter() - t) / 256
        result[f"{label}_ends"] = ends
    result["same_ends"] = result.pop("stop_finder_ends") == result.pop("every_window_ends")
    result["speedup"] = result["every_window_ms_per_look"] / result["stop_finder_ms_per_look"]
    print(f"stop strings, a look at 64 rows x 16 new tokens: stop_finder "
          f"{result['stop_finder_ms_per_look']:.2f} ms, every window decoded "
          f"{result['every_window_ms_per_look']:.2f} ms ({result['speedup']:.0f}x); the same ends: "
          f"{result['same_ends']}")
    save("stops", result, args.out)


def multinomial_next(logits, temperature, top_p, generator):
    """The sampler before keyed noise, as the baseline: nucleus filtering, then
    torch.multinomial on one generator shared by the batch (so a row's tokens depended
    on its batch and process)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)                        # [R, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def bench_sampler(args, device="cpu", vocab=32768, rows=64, steps=200):
    """What keying every sample costs: generation.sample (hashed noise per row and
    step) vs multinomial_next, per decode step of 64 rows at Mathstral's vocabulary
    (top_p 1, as in training), and that both draw the same distribution: every row
    shares one set of logits, and the rows x steps draws' frequencies of the 20
    likeliest tokens are compared with their probabilities."""
    torch.manual_seed(0)
    logits = (torch.randn(1, vocab, device=device) * 3).expand(rows, -1)  # [R, V], rows alike
    keys = noise_roots(0, [(0, r) for r in range(rows)], device)
    gen = torch.Generator(device=device).manual_seed(0)
    probs = torch.softmax(logits[0].float(), -1)
    top = probs.topk(20).indices
    out = {"rows": rows, "vocab": vocab, "steps": steps, "top_p": 1.0, "device": device,
           "top_token_prob": probs.max().item()}
    for label, fn in (("keyed", lambda t: sample(logits, mix(keys ^ t), 1.0, 1.0)[0]),
                      ("multinomial", lambda t: multinomial_next(logits, 1.0, 1.0, gen))):
        fn(0)
        seconds, draws = timed(lambda: [fn(t) for t in range(steps)], device)
        counts = torch.bincount(torch.stack(draws).flatten(), minlength=vocab)
        freq = counts.float() / (rows * steps)
        out[f"{label}_ms_per_step"] = 1e3 * seconds / steps
        out[f"{label}_max_gap_top20"] = (freq[top] - probs[top]).abs().max().item()
    out["keyed_vs_multinomial"] = out["keyed_ms_per_step"] / out["multinomial_ms_per_step"]
    print(f"sampling {rows} rows x {vocab} tokens on {device}: "
          f"keyed {out['keyed_ms_per_step']:.3f} ms per step, "
          f"multinomial {out['multinomial_ms_per_step']:.3f} ms "
          f"({out['keyed_vs_multinomial']:.2f}x); "
          f"over {rows * steps} draws the 20 likeliest tokens' frequencies are within "
          f"{out['keyed_max_gap_top20']:.4f} (keyed) and "
          f"{out['multinomial_max_gap_top20']:.4f} (multinomial) of their probabilities "
          f"(the likeliest: p = {out['top_token_prob']:.3f})")
    if args.section == "sampler":  # inside `bench.py gpu` it goes into gpu's JSON
        save("sampler", {**out, "device": cpu_name()}, args.out)
    return out
