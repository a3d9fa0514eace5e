"""The trainer against references written out here: the data order (each row once an epoch, a new
order each epoch and seed), and two whole steps of train() equal to the recipe computed by hand: a
plain forward per [prompt; completion], the Dr. GRPO loss, clipping at --max-grad-norm and
torch.optim.AdamW with the paper's settings, the update's forward passes within
--micro-batch-tokens (the packing itself: tests/test_properties.py)."""
import copy
import json

import pytest
import torch

import generation
import grpo
from drafts import build_prompt, encode_prompt


# ----------------------------------------------------------------------------- the data order
def test_every_epoch_serves_each_row_once_in_an_order_of_its_own():
    """13 rows in steps of 4: epochs end inside a step, and the next epoch's rows fill it. Read as
    one stream, every 13 consecutive rows from the start are a permutation of the rows; no two
    epochs share an order, nor do two seeds; a step's rows do not depend on which steps were asked
    for before (a resumed run asks for its first step cold)."""
    n, batch, epochs = 13, 4, 4
    rows = [f"row{i}" for i in range(n)]
    steps = range(1, n * epochs // batch + 1)
    orders = {}
    for seed in (0, 1):
        served = [grpo.step_problems(rows, step, batch, seed) for step in steps]
        assert all(len(s) == batch for s in served)
        stream = [r for s in served for r in s]
        orders[seed] = [stream[e * n:(e + 1) * n] for e in range(epochs)]
        assert all(sorted(order) == sorted(rows) for order in orders[seed])
        assert len({tuple(order) for order in orders[seed]}) == epochs
        cold = [grpo.step_problems(rows, step, batch, seed) for step in reversed(steps)][::-1]
        assert cold == served
    assert all(a != b for a, b in zip(orders[0], orders[1]))


# ------------------------------------------------------------------- two steps of train(), by hand
B, G, L, T = 2, 4, 8, 0.7          # prompts, rollouts a prompt, --max-new-tokens, --temperature
LR, MAX_NORM = 0.01, 1e-6          # a norm this small clips every step (checked below)
ROWS = [{"id": "a", "problem": "What is 2+3?", "answer": "5", "draft": None},
        {"id": "b", "problem": "Compute $\\frac{1}{2}+\\frac{1}{2}$, then double it.",
         "answer": "2", "draft": None},
        {"id": "c", "problem": "What is 7-4?", "answer": "3", "draft": None}]
# per step, per group: (completion text, reward); lengths differ, rewards differ within a group
SCRIPT = [[[("so 5", 1.0), ("it is six", 0.0), ("The answer is 4 maybe", 0.0), ("5", 1.0)],
           [("two", 0.0), ("We add the halves and get 1", 1.0), ("3", 0.0), ("x = 2", 0.0)]],
          [[("seven", 0.0), ("so 3", 1.0), ("the sum of them all", 0.0), ("3 3", 1.0)],
           [("2", 1.0), ("1 + 1", 1.0), ("a long wrong answer: 9", 0.0), ("0", 0.0)]]]


def fixed_rollouts(monkeypatch, tok):
    """train()'s rollouts replaced by SCRIPT; returns, per step, the prompt ids train() asked
    rollouts for and the LoRA weights it held then (the one place this file reaches into the
    trainer's rollouts)."""
    from lora import lora_parameters
    asked = []

    def generate(model, prompt_ids, **kw):
        weights = {k: v.detach().clone() for k, v in lora_parameters(model).items()}
        asked.append(([list(p) for p in prompt_ids], weights))
        drawn = lambda ids: generation.Drawn(ids, [-1.0] * len(ids), [1.0] * len(ids))
        return [[drawn(ids) for ids in group] for group in scripted_ids(tok, len(asked) - 1)]
    monkeypatch.setattr(grpo, "generate", generate)
    return asked


def scripted_ids(tok, step):
    """SCRIPT's completions of `step` as token ids [B][G], the first one ending in EOS."""
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    return [[ids(text) + [tok.eos_token_id] * (b == g == 0) for g, (text, _) in enumerate(group)]
            for b, group in enumerate(SCRIPT[step])]


def completion_forwards(model, asked):
    """Per forward pass of the update over completions: (its step, the prompt's length, the rows'
    token ids [n, T]); the prompt's own pass is left out (the one place this file looks inside
    the update)."""
    calls = []

    def look(module, args, kwargs):
        if kwargs.get("attention") is generation.update_attention or \
                not grpo.PROMPT_ONCE and kwargs.get("attention") is not None:
            calls.append((len(asked) - 1, int(kwargs["position_ids"][0, 0]),
                          kwargs["input_ids"].tolist()))
    return calls, model.get_decoder().register_forward_pre_hook(look, with_kwargs=True)


def by_hand(model, prompts, completions, rewards):
    """One step of the recipe on `model` written out: advantages r - mean; loss -(1/(B G L_max))
    sum A rho_t over completion tokens, rho = pi / pi_old = 1 on-policy (its gradient is that of
    A log pi), log pi = log_softmax(logits / T) of the model's own forward over [prompt;
    completion]; its gradient, clipped. Returns (loss, norm before clipping)."""
    rewards = torch.tensor(rewards)
    advantages = rewards - rewards.mean(1, keepdim=True)
    loss = 0.0
    for b in range(B):
        for g in range(G):
            ids = prompts[b] + completions[b][g]
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float() / T, -1)
            targets = torch.tensor(completions[b][g])
            taken = logp[len(prompts[b]) - 1:-1].gather(1, targets[:, None])
            ratio = (taken - taken.detach()).exp()  # on-policy: 1, with the gradient of log pi
            loss = loss - advantages[b, g] * ratio.sum()
    loss = loss / (B * G * L)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.item(), torch.nn.utils.clip_grad_norm_(params, MAX_NORM).item()


def test_two_training_steps_equal_the_recipe_by_hand(tmp_path, monkeypatch):
    """Through the train() the CLI runs, with fixed rollouts (two steps, so that AdamW's betas
    act); the clipped gradient's entries are near AdamW's eps, so a wrong direction, a missing
    clip, other betas, eps or weight decay all move the weights by far more than 1e-6. Also the
    logged loss and gradient norm (which the clip hides from the weights), and the update's
    forward passes: each within --micro-batch-tokens (rows x [prompt + longest completion]),
    every completion in exactly one."""
    from generation import load_model
    from lora import apply_lora, lora_parameters
    model, tok = load_model("tiny", device="cpu")
    torch.manual_seed(0)
    apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(torch.randn(p.shape) * 0.05)  # B = 0 would leave A without a gradient
    ref = copy.deepcopy(model)
    longest = max(len(encode_prompt(tok, build_prompt(r["problem"], None))) for r in ROWS)
    budget = 2 * (longest + L)                       # two rows at most per forward
    args = grpo.parse_args(["--model", "tiny", "--variant", "no-draft", "--exclude", "",
                            "--output-dir", str(tmp_path), "--max-steps", "2",
                            "--prompts-per-step", str(B), "--num-generations", str(G),
                            "--max-new-tokens", str(L), "--temperature", str(T), "--lr", str(LR),
                            "--max-grad-norm", str(MAX_NORM), "--micro-batch-tokens", str(budget),
                            "--log-completions", "0"])
    asked = fixed_rollouts(monkeypatch, tok)
    calls, hook = completion_forwards(model, asked)
    scripted = {text: r for step in SCRIPT for group in step for text, r in group}
    grpo.train(args, ROWS, model, tok, reward_fn=lambda text, gold: scripted[text.strip()])
    hook.remove()
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert len(asked) == len(logged) == 2
    after = [weights for _, weights in asked[1:]] + [lora_parameters(model)]  # each step's end

    params = [p for p in ref.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    for step, (prompts, _) in enumerate(asked):
        completions = scripted_ids(tok, step)
        rewards = [[r for _, r in group] for group in SCRIPT[step]]
        optimizer.zero_grad()
        loss, norm = by_hand(ref, prompts, completions, rewards)
        optimizer.step()
        assert norm > 100 * MAX_NORM                                     # the clip acts
        assert logged[step]["loss"] == pytest.approx(loss, rel=1e-5)
        assert logged[step]["grad_norm"] == pytest.approx(norm, rel=1e-4)
        ours = lora_parameters(ref)
        gap = max((after[step][k] - ours[k]).abs().max().item() for k in ours)
        assert gap < 1e-6, (step, gap)
        forwards = [(p, rows) for s, p, rows in calls if s == step]
        seen = [tuple(t for t in row if t) for _, rows in forwards for row in rows]  # pad: 0
        assert sorted(seen) == sorted(tuple(c) for group in completions for c in group)
        assert all(len(rows) * (p + len(rows[0])) <= budget for p, rows in forwards)
        assert any(len(rows) > 1 for _, rows in forwards)        # micro-batches of several rows
