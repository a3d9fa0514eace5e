"""Dr. GRPO with LoRA on MATH: the trainer of "Weak-to-Strong Elicitation via Mismatched Wrong
Drafts" (arXiv 2605.17314). Read top to bottom: the config, the two formulas, the update, the
rollouts, the loop; the bookkeeping (data order, checkpoints, signals, logs) comes after it.

  python grpo.py --variant mismatched-wrong --drafts pool.jsonl      # the headline run, one GPU
  torchrun --nproc-per-node 8 grpo.py --variant mismatched-wrong ... # the same numbers on 8 GPUs
  python grpo.py --model tiny --variant no-draft --max-steps 4 ...   # a CPU smoke run

Each step: 4 prompts x 16 rollouts are sampled (LoRA merged), graded 0/1 by reward.py, turned into
group-relative advantages, and ONE AdamW step is taken on the LoRA weights.
Lines tagged `# Dr. GRPO:` depart from vanilla GRPO.
"""
import argparse
import functools
import math
import os
import time
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn.utils.rnn import pad_sequence
from torch.utils.checkpoint import checkpoint

from drafts import (
    DATA,
    VARIANTS,
    build_prompt,
    build_variant,
    encode_prompt,
    load_jsonl,
    load_pool,
    training_problems,
)
from extras.cli import COUNT, FRACTION, NONNEGATIVE, POSITIVE, SEED, UNIT, Parser
from generation import (
    attention_by_purpose,
    backward_through_prompt,
    cache_bytes,
    causal_attention,
    completion_states,
    cuda_graphs,
    generate,
    load_model,
    prompt_once,
)
from lora import DEFAULT_TARGETS, apply_lora, merged
from processes import distributed, gather, run_main
from reward import is_equiv, lenient_answer, reward
from runs import RunLog, checkpoint_or_stop, drop_step, start_or_resume, stop_signals

MAX_SKIPS = 5            # consecutive non-finite steps that stop a run


# ----------------------------------------------------------------------------- config
def parse_args(argv=None):
    args = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).flags(
        ("--variant", "mismatched-wrong", "which draft the training prompt shows", VARIANTS),
        ("--model", "mistralai/Mathstral-7B-v0.1", "learner: hub id, local dir, or 'tiny' (CPU)"),
        ("--data", None, "problems JSONL (enough for no-draft; default data/math_train.jsonl)"),
        ("--drafts", None, "draft pool JSONL from drafts.py (carries the problems)"),
        ("--exclude", os.path.join(DATA, "math500.jsonl"), "problems never trained on (by text); "
         "'' for none"),
        ("--length-matched", False, "referee's control: equal draft lengths across variants"),
        ("--output-dir", None, "checkpoints step-N/, logs (default runs/VARIANT-seedSEED)"),
        ("--max-steps", 2000, "optimizer steps (paper: 2,000 of the 2,222-step epoch)", COUNT),
        ("--prompts-per-step", 4, "B: prompts per optimizer step (paper: 4)", COUNT),
        ("--num-generations", 16, "G: rollouts per prompt (paper: 16)", COUNT),
        ("--max-new-tokens", 4096, "L_max: rollout cap, loss normaliser (paper: 4096)", COUNT),
        ("--max-prompt-tokens", 3072, "prompt budget; only the draft is cut (paper: 3072)", COUNT),
        ("--temperature", 1.0, "rollout temperature (paper: 1.0)", POSITIVE),
        ("--top-p", 1.0, "rollout top_p (paper: 1.0)", FRACTION),
        ("--lr", 5e-6, "AdamW learning rate, constant, no warmup (paper: 5e-6)", POSITIVE),
        ("--beta1", 0.9, "AdamW beta1 (paper: 0.9)", UNIT),
        ("--beta2", 0.99, "AdamW beta2 (paper: 0.99)", UNIT),
        ("--weight-decay", 0.01, "AdamW weight decay (paper: 0.01, Unsloth default)", NONNEGATIVE),
        ("--max-grad-norm", 1.0, "gradient clipping (paper: 1.0, TRL default)", POSITIVE),
        ("--clip-eps", 0.2, "PPO clip; inert with one update per batch (ratio = 1)", POSITIVE),
        ("--importance-sampling-cap", 0.0, "C > 0: truncated importance sampling, each token's "
         "term weighted by min(pi / pi_sampler, C) (not in the recipe; 0: off)", NONNEGATIVE),
        ("--lora-r", 16, "LoRA rank (paper: 16)", COUNT),
        ("--lora-alpha", 32, "LoRA alpha, scale alpha/r = 2 (paper: 32)", POSITIVE),
        ("--lora-dropout", 0.0, "LoRA dropout (paper: 0)", UNIT),
        ("--save-every", 50, "checkpoint every N steps, and at the last (paper: 50)", COUNT),
        ("--seed", 0, "training seed: LoRA init, data order and every rollout", SEED),
        ("--variant-seed", 0, "draft choice and derangement, shared by the seeds", SEED),
        ("--resume", False, "continue from the newest complete checkpoint in --output-dir"),
        ("--rollout-batch-size", 64, "sequences decoded together", COUNT),
        ("--micro-batch-tokens", 16384, "padded tokens per forward/backward in the update", COUNT),
        ("--no-cuda-graphs", False, "decode eagerly on CUDA (default: CUDA graphs, checked)"),
        ("--report-to", "none", "an experiment tracker as well", ("none", "wandb", "tensorboard")),
        ("--run-name", None, "the tracker's name for the run (default: the output folder's)"),
        ("--log-completions", 10, "every N steps, all rollouts to completions.jsonl; 0: off", SEED),
    ).parse_args(argv)
    args.output_dir = args.output_dir or f"runs/{args.variant}-seed{args.seed}"
    args.run_name = args.run_name or os.path.basename(os.path.normpath(args.output_dir))
    return args


# ----------------------------------------------------------------------------- the two formulas
def group_advantages(rewards):
    """rewards [B, G] -> advantages [B, G]: reward minus its group's mean."""
    return rewards - rewards.mean(dim=1, keepdim=True)     # Dr. GRPO: no division by the group std


def dr_grpo_loss(logprobs, old_logprobs, advantages, mask, normaliser, clip_eps=0.2):
    """-(1 / normaliser) * sum mask * min(rho * A, clip(rho) * A).  logprobs, old, mask [N, T];
    A [N]."""
    ratio = torch.exp(logprobs - old_logprobs)                                # [N, T], 1 on-policy
    adv = advantages[:, None]                                                              # [N, 1]
    per_token = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)      # [N, T]
    return -(per_token * mask).sum() / normaliser


# ----------------------------------------------------------------------------- the update
class Update(NamedTuple):
    loss: float            # this process's share of the step's loss
    # per completion token run forward: log pi (the trainer's) - log pi_sampler (what the rollouts
    # were drawn from: the LoRA merged into the base weights), when the sampler's were given
    gaps: torch.Tensor


# the update runs each prompt forward once for all its completions, which attend to its K/V;
# False: each [prompt; completion] row whole (the plain way; the same gradient, tested)
PROMPT_ONCE = True


def policy_update(model, prompt_ids, completions, advantages, args, owned=None, sampled=None,
                  interrupt=None):
    """Accumulate the Dr. GRPO gradient of B prompts x G completions (of group b, this process's
    samples owned[b]): micro-batch by micro-batch, forward [prompt; completion], log-probs, loss,
    backward. One update per batch: rho = 1, PPO clipping never acts, old logprobs = detached.
    sampled: [B][G] the sampler's log-probs of the completions' tokens, for the gaps. None if
    interrupt() says so before a micro-batch (a stop signal)."""
    B, G, device = len(prompt_ids), len(completions[0]), model.device
    owned, loss_sum, gaps = owned or [range(G)] * B, 0.0, []
    normaliser = B * G * args.max_new_tokens  # Dr. GRPO: B*G*L_max, not the completions' lengths
    with attention_by_purpose(model):   # in backward too: checkpointed layers rerun their forward
        for b in (b for b in range(B) if advantages[b].any() and owned[b]):  # equal rewards: A = 0
            prompt = torch.tensor([prompt_ids[b]], device=device)                       # [1, P]
            once = prompt_once(model, prompt) if PROMPT_ONCE else None
            lengths = [len(completions[b][g]) for g in owned[b]]
            whole = [prompt.shape[1] + n for n in lengths]          # [prompt; completion] lengths
            for mb in micro_batches(whole, args.micro_batch_tokens):
                if interrupt and interrupt():
                    return None
                gs = [owned[b][k] for k in mb]
                ids = pad_sequence([torch.tensor(completions[b][g]) for g in gs], True).to(device)
                mask = torch.arange(ids.shape[1], device=device) < torch.tensor(
                    [lengths[k] for k in mb], device=device)[:, None]                    # [n, T]
                if once:    # each completion attends to the prompt's one K/V copy
                    hidden = completion_states(model, once, ids)                       # [n, T, H]
                else:       # plainly: [prompt; completion] through the model, each row whole
                    hidden = whole_row_states(model, prompt, ids)                      # [n, T, H]
                logprobs = completion_logprobs(model, hidden, ids, mask, args.temperature)  # [n, T]
                weights = mask.float()                           # each token's term in the loss
                if sampled:  # log pi - log pi_sampler, token by token
                    gap = logprobs.detach() - pad_sequence(
                        [torch.tensor(sampled[b][g]) for g in gs], True).to(device)     # [n, T]
                    gaps.append(gap[mask].cpu())
                    if args.importance_sampling_cap:  # not in the recipe: truncated IS
                        weights = weights * gap.exp().clamp(max=args.importance_sampling_cap)
                loss = dr_grpo_loss(logprobs, logprobs.detach(), advantages[b, gs].to(device),
                                    weights, normaliser, args.clip_eps)
                loss.backward()
                loss_sum += loss.item()
            if once:        # the micro-batches' gradient on the prompt's K/V, through its pass once
                backward_through_prompt(once)
    return Update(loss_sum, torch.cat(gaps) if gaps else torch.zeros(0))


def whole_row_states(model, prompt, ids):
    """completion_states the plain way: each row [prompt; completion] through the decoder whole;
    the hidden states at the positions that predict the completion's tokens [n, T, H]."""
    whole = torch.cat([prompt.expand(len(ids), -1), ids], 1)                          # [n, P + T]
    hidden = model.get_decoder()(input_ids=whole, use_cache=False, attention=causal_attention)
    return hidden.last_hidden_state[:, prompt.shape[1] - 1:-1]


def completion_logprobs(model, hidden, targets, mask, temperature=1.0, chunk=1024):
    """hidden [N, T, H] (position t predicts targets[:, t]) -> log pi(targets) [N, T] in fp32, 0
    where mask is 0, at the sampling temperature: pi = softmax(logits / T), the policy the rollouts
    were drawn from. Plainly: log_softmax(lm_head(hidden) / T)[targets]; here the LM head runs only
    where mask is 1, a chunk at a time, recomputed in backward, so the [N, T, V] logits never exist
    in fp32."""
    sel = mask.bool()                                                                      # [N, T]
    h, y = hidden[sel], targets[sel]                                                 # [K, H], [K]
    weight = model.get_output_embeddings().weight                                          # [V, H]
    parts = [checkpoint(_token_logprobs, weight, h[i:i + chunk], y[i:i + chunk], temperature,
                        use_reentrant=False) for i in range(0, len(y), chunk)]
    out = torch.zeros(sel.shape, dtype=torch.float32, device=hidden.device)               # [N, T]
    out[sel] = torch.cat(parts) if parts else out[sel]
    return out


def _token_logprobs(weight, hidden, targets, temperature):
    logp = torch.log_softmax((hidden @ weight.T).float() / temperature, dim=-1)  # [K, V], a chunk
    return logp.gather(-1, targets[:, None]).squeeze(-1)                                    # [K]


def micro_batches(lengths, budget):
    """Indices grouped longest-first so that (rows x longest row) stays under the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


# ----------------------------------------------------------------------------- the rollouts
class Rollouts(NamedTuple):
    completions: list      # [B][G] token ids, EOS kept
    logprobs: list         # [B][G] per token, its log-prob under the distribution it was drawn from
    entropies: list        # [B][G] per token, that distribution's entropy
    texts: list            # [B][G] the completions decoded
    rewards: torch.Tensor  # [B, G]
    answers: list          # [B][G] each completion's answer (reward.lenient_answer)


def sample_rollouts(model, tokenizer, prompt_ids, problems, step, args, owned, reward_fn,
                    graphs=None, interrupt=None):
    """The step's B x G rollouts, graded: this process's share (all of them on one process),
    sampled with the LoRA merged into the base weights (base-model speed; the exact base weights
    come back after), then every process's share gathered. Sample g of prompt b draws from noise
    hashed from (seed, step, b, g): the same tokens on any number of processes. None, on every
    process, if interrupt() stopped the sampling on any (a stop signal)."""
    B, G, L = args.prompts_per_step, args.num_generations, args.max_new_tokens
    model.eval()
    batch_rows = min(B * G, args.rollout_batch_size)
    with merged(model, spare=cache_bytes(model, B * args.max_prompt_tokens, batch_rows, L)):
        completions = generate(model, prompt_ids, n=owned, max_new_tokens=L,
                               temperature=args.temperature, top_p=args.top_p,
                               eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id,
                               seed=args.seed * 1_000_003 + step,
                               batch_size=args.rollout_batch_size, graphs=graphs, logprobs=True,
                               interrupt=interrupt)
    share = None          # this process's, graded; None if a stop signal interrupted it
    if completions is not None:
        # tokens, their log-probs, entropies: 3 x [B][G]
        drawn = [[[c[i] for c in group] for group in completions] for i in range(3)]
        decode = lambda c: tokenizer.decode(c, skip_special_tokens=True)
        texts = [[decode(c) for c in group] for group in drawn[0]]
        rewards = [[reward_fn(t, p["answer"]) for t in group] for group, p in zip(texts, problems)]
        share = (*drawn, texts, rewards, [[lenient_answer(t) for t in group] for group in texts])
    shares = gather(share)                      # every process's, in sample order
    if None in shares:
        return None
    fields = [[sum((share[i][b] for share in shares), []) for b in range(B)] for i in range(6)]
    fields[4] = torch.tensor(fields[4], dtype=torch.float32)
    return Rollouts(*fields)


# ----------------------------------------------------------------------------- the loop
def train(args, problems, model, tokenizer, reward_fn=None):
    """Run args.max_steps Dr. GRPO steps over the training problems; reward_fn(completion_text,
    gold) -> float (reward.py's lenient training reward by default)."""
    reward_fn, B, G = reward_fn or reward, args.prompts_per_step, args.num_generations
    # torchrun: each process samples and updates its own share of the B x G rollouts, and the LoRA
    # gradients are summed over processes (sum_over_processes); one process: all of them, as is
    owned = my_share(B, G)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8,
                                  weight_decay=args.weight_decay)
    for p in params:
        p.grad = torch.zeros_like(p)  # each step steps the optimizer, even if advantages are all 0
    enable_checkpointing(model)      # recompute layer activations in backward: memory for compute
    graphs = cuda_graphs(not args.no_cuda_graphs)   # on CUDA: decode steps replayed, checked first
    start = start_or_resume(args, model, optimizer)
    log = RunLog(args, start)  # metrics.jsonl, completions.jsonl, tracker; process 0
    skips = 0                                 # non-finite steps in a row
    # Slurm's time limit or preemption: noted in `signals`; a step stops at once if its optimizer
    # step has not begun (it is redone on --resume), else it ends; then a checkpoint
    with stop_signals() as signals:
        stopping = lambda: bool(signals)
        for step in log.steps:
            # ---- rollouts
            t0 = time.time()
            batch = step_problems(problems, step, B, args.seed)                     # B problems
            prompt_ids = [encode_prompt(tokenizer, build_prompt(
                p["problem"], p["draft"], tokenizer, args.max_prompt_tokens)) for p in batch]
            rollouts = sample_rollouts(model, tokenizer, prompt_ids, batch, step, args, owned,
                                       reward_fn, graphs, stopping)                # B x G, graded
            if rollouts is None:                     # a stop signal came (to any process)
                drop_step(args, step, model, optimizer, signals)
            advantages = group_advantages(rollouts.rewards)                                # [B, G]
            # ---- the update
            t1 = time.time()
            model.train()
            optimizer.zero_grad(set_to_none=False)
            update = policy_update(model, prompt_ids, rollouts.completions, advantages, args, owned,
                                   rollouts.logprobs, stopping)
            if any(gather(bool(signals))):  # all processes drop the step: nothing has changed yet
                drop_step(args, step, model, optimizer, signals)
            update = sum_over_processes(params, update)   # torchrun: the gradient of all B x G
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm).item()
            skipped = not math.isfinite(grad_norm + update.loss)  # NaN/inf: no step, nothing kept
            if not skipped:
                optimizer.step()
            times, epoch = (t0, t1, time.time()), step * B / len(problems)
            log.step(step_record(step, batch, prompt_ids, rollouts, update, grad_norm, skipped,
                                 times, args, epoch), completion_lines(step, batch, rollouts, args))
            skips = skips + 1 if skipped else 0
            if skips == MAX_SKIPS:
                raise FloatingPointError(f"step {step}: {skips} steps in a row had a non-finite "
                                         "loss or gradient norm (skipped); try a lower --lr, and "
                                         "check the data and the model's dtype")
            checkpoint_or_stop(args, step, model, optimizer, signals)
    log.close()
    return model


def enable_checkpointing(model):
    """Per-layer activation checkpointing, transformers' own (5.x's name, else 4.x's)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})


# ----------------------------------------------------------------------------- processes
def my_share(B, G):
    """Under torchrun each process samples and updates a contiguous share of the step's B x G
    rollouts (a group may span two processes): per group b, this process's sample numbers."""
    rank, world = distributed()
    share = range(rank * B * G // world, (rank + 1) * B * G // world)       # rollouts b * G + g
    return [[g for g in range(G) if b * G + g in share] for b in range(B)]


def sum_over_processes(params, update):
    """Every process computed the gradient of its own share of the rollouts: their sum, on every
    process, is the whole batch's (the normaliser stays B*G*L_max). So is the loss; the gaps are
    every process's. One process: as is."""
    if not dist.is_initialized():
        return update
    for p in params:
        dist.all_reduce(p.grad)
    shares = gather(update)
    return Update(sum(u.loss for u in shares), torch.cat([u.gaps for u in shares]))


# ----------------------------------------------------------------------------- data order
@functools.lru_cache(maxsize=4)
def _epoch_order(n, seed, epoch):
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def step_problems(problems, step, batch, seed):
    """The problems of optimizer step `step` (1-based): a fixed seeded shuffle per epoch, so resume
    needs no state."""
    n = len(problems)
    return [problems[_epoch_order(n, seed, pos // n)[pos % n]]
            for pos in range((step - 1) * batch, step * batch)]


def load_problems(args):
    """The training problems of args.variant: the recipe's universe (drafts.training_problems)
    less --exclude's problems, matched by text as the author matches MATH-500 (the author's pool
    numbers its MATH test problems otherwise than MATH-500's ids do)."""
    excluded = {r["problem"] for r in load_jsonl(args.exclude)} if args.exclude else set()
    universe = lambda rows: [r for r in training_problems(rows) if r["problem"] not in excluded]
    if args.drafts:
        pool = universe(load_pool(args.drafts))
        if args.data:
            wanted = {r["id"] for r in universe(load_jsonl(args.data))}
            missing = sorted(wanted - {p["id"] for p in pool}, key=str)
            if missing:
                raise ValueError(f"{args.drafts}: the pool lacks {len(missing)} problem(s) of "
                                 f"{args.data}, e.g. {missing[:3]}")
            pool = [p for p in pool if p["id"] in wanted]
    elif args.variant == "no-draft":
        data = args.data or os.path.join(DATA, "math_train.jsonl")
        pool = universe(load_jsonl(data))
    else:
        raise ValueError(f"variant {args.variant!r} needs a draft pool: pass --drafts POOL "
                         "(see drafts.py)")
    if not pool:
        raise ValueError("no training problems left (levels 3-5, not MATH-500, not in --exclude)")
    if args.length_matched:     # the referee's control: an extra, imported when asked for
        from extras.pool import length_matched
        return length_matched(pool, args.variant, args.variant_seed)
    return build_variant(pool, args.variant, seed=args.variant_seed)


# ----------------------------------------------------------------------------- logs
def step_record(step, batch, prompt_ids, rollouts, update, grad_norm, skipped, times, args,
                epoch):
    """A step's line in metrics.jsonl."""
    rewards, (B, G) = rollouts.rewards, rollouts.rewards.shape
    rate = lambda key: sum(is_equiv(a, p[key]) for group, p in zip(rollouts.answers, batch)
                           for a in group) / (B * G) if "draft_pred" in batch[0] else None
    lengths = torch.tensor([len(c) for group in rollouts.completions for c in group],
                           dtype=torch.float32)                                         # [B*G]
    zero_std = (rewards.std(dim=1).nan_to_num() == 0).float()          # [B] no learning signal
    entropies = torch.tensor([e for group in rollouts.entropies for row in group for e in row])
    gap, ratio = update.gaps.abs(), update.gaps.exp()        # over the tokens the update ran
    stat = lambda x, f: f(x).item() if len(x) else None
    return {"step": step,
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().nan_to_num().item(),
            "frac_reward_zero_std": zero_std.mean().item(),
            "completion_length": lengths.mean().item(),
            "clipped_ratio": (lengths >= args.max_new_tokens).float().mean().item(),
            "prompt_length": sum(map(len, prompt_ids)) / B,
            "loss": update.loss,
            "grad_norm": grad_norm,
            "entropy": stat(entropies, torch.mean),  # the sampler's, per token of every rollout
            "logp_diff_mean": stat(gap, torch.mean),  # |log pi - log pi_sampler|
            "logp_diff_max": stat(gap, torch.max),
            "ratio_min": stat(ratio, torch.min),      # pi / pi_sampler
            "ratio_mean": stat(ratio, torch.mean),
            "ratio_max": stat(ratio, torch.max),
            "lr": args.lr,
            "epoch": epoch,
            "skipped": skipped,
            "draft_answer_rate": rate("draft_pred"),     # rollouts answering as the draft did
            "gold_answer_rate": rate("answer"),
            "rollout_time": times[1] - times[0],
            "update_time": times[2] - times[1],
            "step_time": times[2] - times[0]}


def completion_lines(step, batch, rollouts, args):
    """completions.jsonl's lines: every rollout of every --log-completions-th step."""
    if not args.log_completions or step % args.log_completions:
        return []
    mean = lambda xs: sum(xs) / max(1, len(xs))
    return [{"step": step, "id": p["id"], "variant": args.variant,
             "draft_source": p.get("draft_source"), "draft_answer": p.get("draft_pred"),
             "completion": text, "reward": value, "answer": answer, "logprob": mean(logprobs),
             "entropy": mean(entropies)}
            for p, *group in zip(batch, rollouts.texts, rollouts.rewards.tolist(), rollouts.answers,
                                 rollouts.logprobs, rollouts.entropies)
            for text, value, answer, logprobs, entropies in zip(*group)]


def main(argv=None):
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")   # shapes vary
    args = parse_args(argv)
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir}: a file, not a folder")
    rank, world = distributed(vars(args))  # torchrun; every set-up error here comes before a model
    if world > (rollouts := args.prompts_per_step * args.num_generations):
        raise ValueError(f"{world} processes for {rollouts} rollouts a step: at most one process "
                         "per rollout")
    problems = load_problems(args)              # fail on bad data before loading a 7B model
    model, tokenizer = load_model(args.model)
    torch.manual_seed(args.seed)                # LoRA A init
    apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, DEFAULT_TARGETS)
    print(f"{len(problems)} training prompts, variant {args.variant}, {world} process(es), output "
          f"{args.output_dir}, {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
          "LoRA weights")
    return train(args, problems, model, tokenizer)


if __name__ == "__main__":
    run_main(main)
