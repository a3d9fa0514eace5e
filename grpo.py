"""Dr. GRPO with LoRA on MATH: the trainer of "Weak-to-Strong Elicitation via Mismatched
Wrong Drafts" (arXiv 2605.17314). Read top to bottom: the config, the two formulas, the
update, the rollouts, the loop; the bookkeeping (data order, checkpoints, signals, logs)
comes after it.

  python grpo.py --variant mismatched-wrong --drafts pool.jsonl      # the headline run, one GPU
  torchrun --nproc-per-node 8 grpo.py --variant mismatched-wrong ... # the same numbers on 8 GPUs
  python grpo.py --model tiny --variant no-draft --max-steps 4 ...   # a CPU smoke run

Each step: 4 prompts x 16 rollouts are sampled (LoRA merged), graded 0/1 by reward.py,
turned into group-relative advantages, and ONE AdamW step is taken on the LoRA weights.
Lines tagged `# Dr. GRPO:` depart from vanilla GRPO."""
import argparse
import functools
import math
import os
import sys
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
from extras.cli import COUNT, FRACTION, GROUP, NONNEGATIVE, POSITIVE, SEED, UNIT, Parser
from generation import (
    backward_through_prompt,
    cache_bytes,
    causal_attention,
    completion_states,
    generate,
    load_model,
    passing_attention,
    prompt_once,
)
from lora import DEFAULT_TARGETS, apply_lora, merged
from processes import distributed, gather, run_main
from reward import lenient_answer, reward
from runs import (
    RunLog,
    check_run_folder,
    drop_step,
    save_if_due,
    start_or_resume,
    stop_signals,
    stopped,
)

MAX_SKIPS = 5  # consecutive non-finite steps that stop a run


# ----------------------------------------------------------------------------- config
def parse_args(argv=None):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parser.flags(
        # the data and the variant
        ("--variant", "mismatched-wrong", "the draft the training prompt shows", VARIANTS),
        ("--model", "mistralai/Mathstral-7B-v0.1", "learner: hub id, folder or 'tiny'"),
        ("--data", None, "problems JSONL (no-draft: default data/math_train.jsonl)"),
        ("--drafts", None, "draft pool JSONL from drafts.py (holds the problems)"),
        ("--exclude", os.path.join(DATA, "math500.jsonl"),
         "problems never trained on (by text); '' for none"),
        ("--length-matched", False, "referee's control: equal draft lengths"),
        ("--output-dir", None, "checkpoints, logs (default runs/VARIANT-seedSEED)"),
        # Dr. GRPO (paper's values)
        ("--max-steps", 2000, "optimizer steps (2,000 of the 2,222-step epoch)", COUNT),
        ("--prompts-per-step", 4, "B: prompts per optimizer step (4)", COUNT),
        ("--num-generations", 16, "G: rollouts per prompt (16)", GROUP),
        ("--max-new-tokens", 4096, "L_max: rollout cap, loss normaliser (4096)", COUNT),
        ("--max-prompt-tokens", 3072, "prompt budget; the draft is cut (3072)", COUNT),
        ("--temperature", 1.0, "rollout temperature (1.0)", POSITIVE),
        ("--top-p", 1.0, "rollout top_p (1.0)", FRACTION),
        ("--lr", 5e-6, "AdamW learning rate, constant, no warmup (5e-6)", POSITIVE),
        ("--beta1", 0.9, "AdamW beta1 (0.9)", UNIT),
        ("--beta2", 0.99, "AdamW beta2 (0.99)", UNIT),
        ("--weight-decay", 0.01, "AdamW weight decay (0.01, Unsloth's)", NONNEGATIVE),
        ("--max-grad-norm", 1.0, "gradient clipping (1.0, TRL's)", POSITIVE),
        ("--clip-eps", 0.2, "PPO clip; inert at one update a batch", POSITIVE),
        ("--importance-sampling-cap", 0.0,
         "C > 0: each token's term weighted by min(pi / pi_sampler, C), truncated "
         "importance sampling (not in the recipe; 0: off)", NONNEGATIVE),
        ("--lora-r", 16, "LoRA rank (16)", COUNT),
        ("--lora-alpha", 32, "LoRA alpha, scale alpha/r = 2 (32)", POSITIVE),
        ("--lora-dropout", 0.0, "LoRA dropout (0)", UNIT),
        ("--save-every", 50, "checkpoint every N steps and at the last (50)", COUNT),
        ("--seed", 0, "training seed: LoRA init, data order, rollouts", SEED),
        ("--variant-seed", 0, "draft choice and derangement (all seeds share)", SEED),
        # the run
        ("--resume", False, "continue from the newest whole checkpoint"),
        ("--rollout-batch-size", 64, "sequences decoded together", COUNT),
        ("--micro-batch-tokens", 16384, "padded tokens a forward in the update", COUNT),
        ("--no-cuda-graphs", False, "decode eagerly on CUDA (default: graphs)"),
        ("--deterministic", False, "deterministic kernels only (CUDA: slower)"),
        ("--report-to", "none", "an experiment tracker too",
         ("none", "wandb", "tensorboard")),
        ("--run-name", None, "the tracker's name (default: the folder's)"),
        ("--log-completions", 10, "every N steps, rollouts to completions.jsonl",
         SEED),
    ).parse_args(argv)
    args.output_dir = args.output_dir or f"runs/{args.variant}-seed{args.seed}"
    folder = os.path.normpath(args.output_dir)
    args.run_name = args.run_name or os.path.basename(folder)
    return args


# ----------------------------------------------------------------------------- the two formulas
def group_advantages(rewards):
    """rewards [B, G] -> advantages [B, G]: reward minus its group's mean."""
    return rewards - rewards.mean(dim=1, keepdim=True)  # Dr. GRPO: no division by the group std


def dr_grpo_loss(logprobs, old_logprobs, advantages, weights, normaliser,
                 clip_eps=0.2):
    """-(1 / normaliser) * sum over tokens of weights * min(rho * A, clip(rho) * A).
    logprobs, old_logprobs, weights [N, T] (weights: 0 off a completion); advantages [N]."""
    ratio = torch.exp(logprobs - old_logprobs)  # [N, T], 1 on-policy
    adv = advantages[:, None]  # [N, 1]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    clipped = clipped * adv
    per_token = torch.min(unclipped, clipped)  # [N, T]
    return -(per_token * weights).sum() / normaliser  # Dr. GRPO: a constant, not the lengths


# ----------------------------------------------------------------------------- the update
class Group(NamedTuple):
    """One prompt's completions that this process learns from."""
    prompt: list  # its token ids
    completions: list  # [n] token-id lists
    advantages: torch.Tensor  # [n]
    sampled: list  # [n] per token, its log-prob under the sampler; None: not known


class MicroBatch(NamedTuple):
    ids: torch.Tensor  # [n, T] completions, padded at the end
    mask: torch.Tensor  # [n, T] True on their tokens
    advantages: torch.Tensor  # [n]
    sampled: torch.Tensor  # [n, T] the sampler's log-probs of the tokens; None: not known


class Update(NamedTuple):
    loss: float  # this process's share of the step's loss
    gaps: torch.Tensor  # per token run forward: log pi - log pi_sampler (if known)


# the update runs each prompt forward once for all its completions, which attend to its
# K/V; False: each [prompt; completion] row whole (the plain way; the same gradient,
# tested)
PROMPT_ONCE = True


def learning_groups(prompt_ids, completions, advantages, owned=None,
                    sampled=None):
    """The Groups this process learns from: per prompt b, its completions g in owned[b]
    (all of them on one process), unless their advantages are all 0 (equal rewards teach
    nothing)."""
    owned = owned or [range(len(group)) for group in completions]
    groups = []
    for b, mine in enumerate(owned):
        mine = list(mine)
        if not (mine and advantages[b].any()):  # Dr. GRPO: A = 0 gives no gradient
            continue
        logprobs = None
        if sampled:
            logprobs = [sampled[b][g] for g in mine]
        group = Group(prompt=prompt_ids[b],
                      completions=[completions[b][g] for g in mine],
                      advantages=advantages[b, mine],
                      sampled=logprobs)
        groups.append(group)
    return groups


def policy_update(model, groups, normaliser, temperature=1.0,
                  micro_batch_tokens=16384, clip_eps=0.2, cap=0.0, interrupt=None):
    """Accumulate the Dr. GRPO gradient of the groups, micro-batch by micro-batch: forward
    [prompt; completion], log-probs, loss, backward. One update per batch: rho = 1, PPO
    clipping never acts, the old log-probs are the new ones detached. None if interrupt()
    says so before a micro-batch (a stop signal)."""
    loss_sum, gaps = 0.0, []
    with passing_attention(model):  # in backward too: checkpointed layers rerun their forward
        for group in groups:
            prompt = torch.tensor([group.prompt], device=model.device)  # [1, P]
            once = prompt_once(model, prompt) if PROMPT_ONCE else None
            for mb in micro_batches(group, micro_batch_tokens, model.device):
                if interrupt and interrupt():
                    return None
                if once:  # each completion attends to the prompt's one K/V copy
                    hidden = completion_states(model, once, mb.ids)  # [n, T, H]
                else:  # plainly: [prompt; completion] through the model, each row whole
                    hidden = whole_row_states(model, prompt, mb.ids)  # [n, T, H]
                logprobs = completion_logprobs(model, hidden, mb.ids, mb.mask,
                                               temperature)  # [n, T]
                gap = sampler_gap(logprobs, mb.sampled, mb.mask)  # [n, T]
                weights = token_weights(mb.mask, gap, cap)  # [n, T]
                loss = dr_grpo_loss(logprobs, logprobs.detach(), mb.advantages, weights,
                                    normaliser, clip_eps)
                loss.backward()
                loss_sum += loss.item()
                if gap is not None:
                    gaps.append(gap[mb.mask].cpu())
            if once:  # the micro-batches' gradient on the prompt's K/V, through its pass
                backward_through_prompt(once)
    gaps = torch.cat(gaps) if gaps else torch.zeros(0)
    return Update(loss_sum, gaps)


def sampler_gap(logprobs, sampled, mask):
    """log pi - log pi_sampler [n, T], token by token (0 off the completions): how far the
    trainer's policy is from what the rollouts were drawn from. None if the sampler's are
    not known."""
    if sampled is None:
        return None
    return (logprobs.detach() - sampled) * mask


def token_weights(mask, gap, cap):
    """Each token's weight in the loss [n, T]: 1 on the completions (the recipe). With cap
    > 0 (not in the recipe): truncated importance sampling, min(pi / pi_sampler, cap)."""
    weights = mask.float()
    if cap and gap is not None:
        ratio = gap.exp()  # pi / pi_sampler
        weights = weights * ratio.clamp(max=cap)
    return weights


def micro_batches(group, budget, device):
    """The group's completions as MicroBatches: (rows x longest [prompt; completion] row)
    within `budget` tokens, longest first."""
    P = len(group.prompt)
    whole = [P + len(c) for c in group.completions]  # [prompt; completion] rows
    for rows in pack(whole, budget):
        completions = [group.completions[i] for i in rows]
        ids = pad(completions, device)  # [n, T]
        mask = pad([[True] * len(c) for c in completions], device)  # [n, T]
        advantages = group.advantages[rows].to(device)  # [n]
        sampled = None
        if group.sampled:
            sampled = pad([group.sampled[i] for i in rows], device)  # [n, T]
        yield MicroBatch(ids, mask, advantages, sampled)


def pad(rows, device):
    """Lists of numbers -> [n, longest] tensor, padded with 0 (False) at the end."""
    rows = [torch.tensor(row) for row in rows]
    return pad_sequence(rows, batch_first=True).to(device)


def pack(lengths, budget):
    """Indices grouped longest-first so that (rows x longest row) stays under the token
    budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > budget:  # [0]: the longest
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def whole_row_states(model, prompt, ids):
    """completion_states the plain way: each row [prompt; completion] through the decoder
    whole; the hidden states at the positions that predict the completion's tokens [n, T,
    H]."""
    P = prompt.shape[1]
    prompts = prompt.expand(len(ids), -1)  # [n, P]
    whole = torch.cat([prompts, ids], 1)  # [n, P + T]
    decoder = model.get_decoder()
    out = decoder(input_ids=whole, use_cache=False, attention=causal_attention)
    return out.last_hidden_state[:, P - 1:-1]  # [n, T, H]


def completion_logprobs(model, hidden, targets, mask, temperature=1.0,
                        chunk=1024):
    """hidden [N, T, H] (position t predicts targets[:, t]) -> log pi(targets) [N, T] in
    fp32, 0 where mask is 0, at the sampling temperature: pi = softmax(logits / T), the
    policy the rollouts were drawn from. Plainly: log_softmax(lm_head(hidden) /
    T)[targets]; here the LM head runs only where mask is 1, a chunk at a time, recomputed
    in backward, so the [N, T, V] logits never exist in fp32."""
    sel = mask.bool()  # [N, T]
    h, y = hidden[sel], targets[sel]  # [K, H], [K]
    weight = model.get_output_embeddings().weight  # [V, H]
    parts = []
    for i in range(0, len(y), chunk):
        part = checkpoint(_token_logprobs, weight, h[i:i + chunk], y[i:i + chunk],
                          temperature, use_reentrant=False)  # [chunk]
        parts.append(part)
    out = torch.zeros(sel.shape, dtype=torch.float32, device=hidden.device)  # [N, T]
    if parts:
        out[sel] = torch.cat(parts)
    return out


def _token_logprobs(weight, hidden, targets, temperature):
    logits = (hidden @ weight.T).float() / temperature  # [K, V], a chunk
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, targets[:, None])[:, 0]  # [K]


# ----------------------------------------------------------------------------- the rollouts
class Rollouts(NamedTuple):
    """A step's rollouts, graded; each field [B][G]."""
    completions: list  # token ids, EOS kept
    logprobs: list  # per token, its log-prob under the distribution it was drawn from
    entropies: list  # per token, that distribution's entropy
    texts: list  # the completions decoded
    rewards: list  # 0/1
    answers: list  # each completion's answer (reward.lenient_answer)


def sample_rollouts(model, tokenizer, prompt_ids, golds, owned, seed,
                    max_new_tokens, temperature, top_p, batch_size,
                    reward_fn, graphs, interrupt):
    """The step's rollouts, graded: this process's samples of each prompt, owned[b] (all
    of them on one process), drawn with the LoRA merged into the base weights (base-model
    speed; the exact base weights come back after), then every process's gathered. Sample
    g of prompt b draws from noise hashed from (seed, b, g): the same tokens on any number
    of processes. None, on every process, if interrupt() stopped the sampling on any (a
    stop signal)."""
    model.eval()
    rows = min(sum(map(len, owned)), batch_size)  # decoded together
    prompt_tokens = sum(map(len, prompt_ids))
    spare = cache_bytes(model, prompt_tokens, rows, max_new_tokens)
    with merged(model, spare=spare):
        drawn = generate(model, prompt_ids, n=owned, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, seed=seed,
                         batch_size=batch_size, graphs=graphs, logprobs=True,
                         interrupt=interrupt)
    mine = None  # this process's rollouts, graded
    if drawn is not None:
        mine = grade(drawn, golds, tokenizer, reward_fn)
    shares = gather(mine)  # every process's, in rank order
    if None in shares:
        return None
    return join(shares)


def grade(drawn, golds, tokenizer, reward_fn):
    """This process's draws [B][n] (generation.Drawn), decoded and graded: Rollouts."""
    each = lambda f, groups: [[f(x) for x in group] for group in groups]
    decode = lambda c: tokenizer.decode(c, skip_special_tokens=True)
    completions = each(lambda d: d.tokens, drawn)
    texts = each(decode, completions)
    rewards = [[reward_fn(text, gold) for text in group]
               for group, gold in zip(texts, golds)]
    return Rollouts(completions=completions,
                    logprobs=each(lambda d: d.logprobs, drawn),
                    entropies=each(lambda d: d.entropies, drawn),
                    texts=texts,
                    rewards=rewards,
                    answers=each(lenient_answer, texts))


def join(shares):
    """Every process's Rollouts as one: group b's samples in sample order (each process
    holds a contiguous share)."""
    B = len(shares[0].completions)
    group = lambda name, b: sum((getattr(s, name)[b] for s in shares), [])
    field = lambda name: [group(name, b) for b in range(B)]
    return Rollouts(*(field(name) for name in Rollouts._fields))


# ----------------------------------------------------------------------------- the loop
def train(args, problems, model, tokenizer, reward_fn=None):
    """Run args.max_steps Dr. GRPO steps over the training problems;
    reward_fn(completion_text, gold) -> float (reward.py's lenient training reward by
    default)."""
    reward_fn = reward_fn or reward
    B, G = args.prompts_per_step, args.num_generations
    normaliser = B * G * args.max_new_tokens  # Dr. GRPO: B*G*L_max, not the completions' lengths
    # torchrun: each process samples and learns from its own share of the B x G rollouts,
    # and the LoRA gradients are summed over processes; one process: all of them
    owned = owned_samples(B, G)
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (args.beta1, args.beta2)
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=betas, eps=1e-8,
                                  weight_decay=args.weight_decay)
    for p in params:
        p.grad = torch.zeros_like(p)  # each step steps the optimizer, even if advantages are 0
    enable_checkpointing(model)  # recompute layer activations in backward: memory for time
    from extras.graphs import cuda_graphs  # an optional speed layer over decode_one_token
    graphs = cuda_graphs(not args.no_cuda_graphs)  # on CUDA: decode steps replayed, checked
    start = start_or_resume(args, model, optimizer)
    log = RunLog(args, start)  # metrics.jsonl, completions.jsonl, a tracker; process 0
    skips = 0  # non-finite steps in a row
    # Slurm's time limit or preemption: a signal is noted in `signals`; a step stops at
    # once if its optimizer step has not begun (it is redone on --resume), else it ends; a
    # checkpoint
    with stop_signals() as signals:
        stopping = lambda: bool(signals)
        for step in range(start + 1, args.max_steps + 1):
            # ---- rollouts
            t0 = time.time()
            batch = step_problems(problems, step, B, args.seed)  # B problems
            prompt_ids = [training_prompt(tokenizer, p, args.max_prompt_tokens)
                          for p in batch]
            golds = [p["answer"] for p in batch]
            rollouts = sample_rollouts(model, tokenizer, prompt_ids, golds, owned,
                                       rollout_seed(args.seed, step), args.max_new_tokens,
                                       args.temperature, args.top_p, args.rollout_batch_size,
                                       reward_fn, graphs, stopping)  # B x G, graded
            if rollouts is None:  # a stop signal, to any process: the step changed nothing
                sys.exit(drop_step(args, step, model, optimizer, signals))  # 128 + the signal
            rewards = torch.tensor(rollouts.rewards)  # [B, G]
            advantages = group_advantages(rewards)  # [B, G]
            # ---- the update
            t1 = time.time()
            model.train()
            optimizer.zero_grad(set_to_none=False)
            groups = learning_groups(prompt_ids, rollouts.completions, advantages, owned,
                                     rollouts.logprobs)
            update = policy_update(model, groups, normaliser, args.temperature,
                                   args.micro_batch_tokens, args.clip_eps,
                                   args.importance_sampling_cap, stopping)
            if any(gather(bool(signals))):  # every process drops the step: nothing changed yet
                sys.exit(drop_step(args, step, model, optimizer, signals))
            update = sum_over_processes(params, update)  # torchrun: the gradient of all B x G
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            grad_norm = grad_norm.item()
            skipped = not math.isfinite(grad_norm + update.loss)  # NaN/inf: no step, nothing kept
            if not skipped:
                optimizer.step()
            # ---- logs, checkpoints
            times = (t0, t1, time.time())
            epoch = step * B / len(problems)
            log.step(step, batch, prompt_ids, rollouts, update, grad_norm, skipped,
                     times, epoch, graphs)
            skips = skips + 1 if skipped else 0
            if skips == MAX_SKIPS:
                raise FloatingPointError(f"step {step}: {skips} steps in a row had a non-finite "
                                         "loss or gradient norm (skipped); try a lower --lr, and "
                                         "check the data and the model's dtype")
            stop = any(gather(bool(signals)))  # every process stops after the same step
            save_if_due(args, step, model, optimizer, stop)  # --save-every, the last, a stop
            if stop:
                sys.exit(stopped(args, signals, step))  # 128 + the signal: the job requeues
    log.close()
    return model


def training_prompt(tokenizer, problem, max_prompt_tokens):
    """A training prompt's token ids: the template with the row's draft, cut to fit."""
    draft = problem["draft"]
    text = build_prompt(problem["problem"], draft, tokenizer, max_prompt_tokens)
    return encode_prompt(tokenizer, text)


def rollout_seed(seed, step):
    """The noise seed of a step's rollouts: its number and the run's seed alone (so
    --resume redoes a step exactly)."""
    return seed * 1_000_003 + step


def use_deterministic_kernels():
    """--deterministic: every kernel deterministic (one that is not is an error naming
    it), so a run is repeatable on one GPU: cuBLAS with a fixed workspace (before CUDA
    starts), SDPA's flash kernel in its deterministic backward, its memory-efficient one
    (non-deterministic in backward) off."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.enable_mem_efficient_sdp(False)


def enable_checkpointing(model):
    """Per-layer activation checkpointing, transformers' own (5.x's name, else 4.x's)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})


# ----------------------------------------------------------------------------- processes
def owned_samples(B, G):
    """Under torchrun each process samples and learns from a contiguous part of the step's
    B x G rollouts (a group may span two processes): per group b, this process's sample
    numbers."""
    rank, world = distributed()
    n = B * G  # rollouts b * G + g
    first, end = rank * n // world, (rank + 1) * n // world
    mine = lambda b: [g for g in range(G) if first <= b * G + g < end]
    return [mine(b) for b in range(B)]


def sum_over_processes(params, update):
    """Every process computed the gradient of its own share of the rollouts: their sum, on
    every process, is the whole batch's (the normaliser stays B*G*L_max). So is the loss;
    the gaps are every process's. One process: as is."""
    if not dist.is_initialized():
        return update
    for p in params:
        dist.all_reduce(p.grad)
    updates = gather(update)
    loss = sum(u.loss for u in updates)
    gaps = torch.cat([u.gaps for u in updates])
    return Update(loss, gaps)


# ----------------------------------------------------------------------------- data order
@functools.lru_cache(maxsize=4)
def _epoch_order(n, seed, epoch):
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def step_problems(problems, step, batch, seed):
    """The problems of optimizer step `step` (1-based): a fixed seeded shuffle per epoch,
    so resume needs no state."""
    n = len(problems)
    positions = range((step - 1) * batch, step * batch)  # in the stream of epochs
    order = lambda pos: _epoch_order(n, seed, pos // n)
    return [problems[order(pos)[pos % n]] for pos in positions]


def load_problems(args):
    """The training problems of args.variant: the recipe's universe
    (drafts.training_problems) less --exclude's problems, matched by text as the author
    matches MATH-500 (the author's pool numbers its MATH test problems otherwise than
    MATH-500's ids do)."""
    excluded = set()
    if args.exclude:
        excluded = {r["problem"] for r in load_jsonl(args.exclude)}
    universe = lambda rows: [r for r in training_problems(rows)
                             if r["problem"] not in excluded]
    if args.drafts:
        pool = universe(load_pool(args.drafts))
        if args.data:
            wanted = {r["id"] for r in universe(load_jsonl(args.data))}
            have = {p["id"] for p in pool}
            missing = sorted(wanted - have, key=str)
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
    if args.length_matched:  # the referee's control: an extra, imported when asked for
        from extras.pool import length_matched
        return length_matched(pool, args.variant, args.variant_seed)
    return build_variant(pool, args.variant, seed=args.variant_seed)


def main(argv=None):
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # shapes vary
    args = parse_args(argv)
    rank, world = distributed(vars(args))  # torchrun; every set-up error here comes before a model
    rollouts = args.prompts_per_step * args.num_generations
    if world > rollouts:
        raise ValueError(f"{world} processes for {rollouts} rollouts a step: at most one process "
                         "per rollout")
    check_run_folder(args)  # a run there already, --resume's flags
    problems = load_problems(args)  # fail on bad data before loading a 7B model
    if args.deterministic:
        use_deterministic_kernels()
    model, tokenizer = load_model(args.model)
    torch.manual_seed(args.seed)  # LoRA A init
    apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout,
               DEFAULT_TARGETS)
    print(f"{len(problems)} training prompts, variant {args.variant}, {world} process(es), output "
          f"{args.output_dir}, {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
          "LoRA weights")
    return train(args, problems, model, tokenizer)


if __name__ == "__main__":
    run_main(main)
