"""The README's "Forking it": each of its code blocks run as it is written (on the tiny model, a few
steps), and what it changes checked against the change computed here by hand."""
import copy
import json
import os
import re

import torch

import grpo
import lora
from extras.tiny import model as tiny_model
from generation import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--model", "tiny", "--variant", "no-draft", "--data", "tests/data/tiny_problems.jsonl",
         "--exclude", "", "--prompts-per-step", "2", "--num-generations", "4",
         "--max-new-tokens", "8", "--max-steps", "2", "--log-completions", "1"]


def recipe(title):
    """The code block of the README's "Forking it" paragraph that starts with `title`."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = readme.index("## Forking it")
    section = readme[start:readme.index("\n## ", start + 1)]
    paragraph = section[section.index(f"**{title}**"):]
    return re.search(r"```python\n(.*?)```", paragraph, re.S).group(1)


def tiny_run(tmp_path, *flags):
    """(args, problems, model, tokenizer) as grpo.main makes them, for a small run."""
    args = grpo.parse_args([*SMALL, "--output-dir", str(tmp_path / "run"), *flags])
    model, tokenizer = load_model("tiny", device="cpu")
    torch.manual_seed(0)
    lora.apply_lora(model, r=4, alpha=8)
    return args, grpo.load_problems(args), model, tokenizer


def test_a_reward_of_its_own_is_the_reward_a_run_trains_on(tmp_path):
    args, problems, model, tokenizer = tiny_run(tmp_path)
    space = {"grpo": grpo, "args": args, "problems": problems, "model": model,
             "tokenizer": tokenizer}
    exec(recipe("A reward of its own."), space)
    logged = [json.loads(line) for line in open(tmp_path / "run" / "completions.jsonl")]
    gold = {p["id"]: p["answer"] for p in problems}
    by_hand = lambda text, answer: float(bool(text.strip()) and answer in
                                         text.strip().splitlines()[-1])
    assert len(logged) == 2 * 2 * 4
    assert all(line["reward"] == by_hand(line["completion"], gold[line["id"]]) for line in logged)
    assert space["my_reward"]("so\n\\boxed{5}", "5") == 1.0 == 1 - space["my_reward"]("5\nno", "5")


def test_its_own_data_trains_without_levels_or_drafts(tmp_path, monkeypatch):
    data = str(tmp_path / "mine.jsonl")
    space = {"grpo": grpo, "json": json, "data": data}
    exec(recipe("Its own data."), space)
    assert [(p["id"], p["draft"]) for p in space["problems"]] == [("sum-1", None), ("sum-2", None)]
    monkeypatch.setattr(grpo, "reward", lambda text, gold: float(len(text) % 2))
    grpo.main(["--model", "tiny", "--variant", "no-draft", "--data", data, "--exclude", "",
               "--prompts-per-step", "2", "--num-generations", "4", "--max-new-tokens", "8",
               "--max-steps", "1", "--output-dir", str(tmp_path / "run")])
    (record,) = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert record["step"] == 1 and record["prompt_length"] > 0


def test_another_loss_is_the_gradient_of_that_loss(monkeypatch):
    """Vanilla GRPO as the README writes it, through policy_update: the gradient of -1/(B G)
    sum_i A_i mean_t log pi(o_it), A = (r - mean) / (std + 1e-4), each [prompt; completion] run
    through the model whole."""
    monkeypatch.setattr(grpo, "group_advantages", grpo.group_advantages)
    monkeypatch.setattr(grpo, "dr_grpo_loss", grpo.dr_grpo_loss)
    args = grpo.parse_args(["--max-new-tokens", "16"])
    exec(recipe("Another loss."), {"grpo": grpo, "torch": torch, "args": args})
    torch.manual_seed(0)
    model = lora.apply_lora(tiny_model(500))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    prompts = [[1, 5, 6, 7], [1, 8, 9]]
    completions = [[[20, 21, 22], [23], [24, 25]], [[30, 31], [32, 33, 34], [35]]]
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    ours = copy.deepcopy(model)
    groups = grpo.learning_groups(prompts, completions, grpo.group_advantages(rewards))
    grpo.policy_update(ours, groups, 2 * 3 * 16)
    std = rewards.std(dim=1, keepdim=True)
    advantages = (rewards - rewards.mean(dim=1, keepdim=True)) / (std + 1e-4)
    loss = 0.0
    for b, group in enumerate(completions):
        for g, completion in enumerate(group):
            ids = torch.tensor([prompts[b] + completion])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)[len(prompts[b]) - 1:-1]
            taken = logp.gather(1, torch.tensor(completion)[:, None])
            loss = loss - advantages[b, g] * taken.mean() / (2 * 3)
    loss.backward()
    for name, p in ours.named_parameters():
        if p.requires_grad:
            ref = dict(model.named_parameters())[name].grad
            assert torch.allclose(p.grad, ref, rtol=1e-4, atol=1e-7), name


def test_another_model_family_trains_with_its_own_lora_targets(tmp_path, monkeypatch):
    """A tiny Phi-3 (q, k and v fused in qkv_proj) in a folder, its names in DEFAULT_TARGETS as
    the README's line writes them: grpo.py trains it, and its adapter holds those modules."""
    from safetensors.torch import load_file
    from transformers import Phi3Config, Phi3ForCausalLM
    space = {}
    exec(recipe("Another model family."), space)
    monkeypatch.setattr(lora, "DEFAULT_TARGETS", space["DEFAULT_TARGETS"])
    monkeypatch.setattr(grpo, "DEFAULT_TARGETS", space["DEFAULT_TARGETS"])
    tokenizer = load_model("tiny", device="cpu")[1]
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path / "phi3"
    Phi3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(grpo, "reward", lambda text, gold: float(len(text) % 2))
    grpo.main([*SMALL, "--model", str(folder), "--output-dir", str(tmp_path / "run")])
    adapter = load_file(tmp_path / "run" / "step-2" / "adapter_model.safetensors")
    modules = {key.split(".")[-3] for key in adapter}
    assert modules == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)   # it learned

