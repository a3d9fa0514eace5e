import copy
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from extras.tiny import model as tiny_model
from lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_modules,
    merge_lora,
    merged,
    save_lora,
    unmerge_lora,
)


def qwen2_tiny():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return Qwen2ForCausalLM(config)


def models():
    return [tiny_model(300), qwen2_tiny()]  # Qwen2 has biases on q/k/v: the wrapper must keep them


def randomize_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


def test_wraps_seven_projections_and_equals_base_at_init():
    for model in models():
        x = torch.randint(0, 300, (2, 9))
        before = model(x).logits
        apply_lora(model, r=4, alpha=8)
        names = {n.rsplit(".", 1)[-1] for n, _ in lora_modules(model)}
        assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj"}
        assert len(lora_modules(model)) == 7 * 2
        assert torch.equal(model(x).logits, before)
        m = lora_modules(model)[0][1]
        assert m.lora_A.weight.shape == (4, m.base_layer.in_features)
        assert m.lora_A.weight.abs().sum() > 0
        assert m.lora_B.weight.shape == (m.base_layer.out_features, 4)
        assert m.lora_B.weight.abs().sum() == 0
        assert m.scaling == 2.0


def test_only_lora_parameters_train():
    model = apply_lora(tiny_model(300), r=4, alpha=8)
    randomize_b(model)
    model(torch.randint(0, 300, (2, 9))).logits.sum().backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_save_load_round_trip_is_bit_exact_with_peft_names(tmp_path):
    for model in models():
        apply_lora(model, r=4, alpha=8)
        randomize_b(model)
        save_lora(model, tmp_path / "a", base_model_name_or_path="some/base")
        cfg = json.load(open(tmp_path / "a" / "adapter_config.json"))
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
        assert cfg["bias"] == "none"
        assert cfg["task_type"] == "CAUSAL_LM" and not cfg["use_dora"]
        assert cfg["modules_to_save"] is None
        keys = load_file(tmp_path / "a" / "adapter_model.safetensors").keys()
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
        assert all(k.startswith("base_model.model.model.layers.")
                   and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
        fresh = models()[0] if model.config.model_type == "mistral" else qwen2_tiny()
        load_lora(fresh, tmp_path / "a")
        for (n1, m1), (n2, m2) in zip(lora_modules(model), lora_modules(fresh)):
            assert n1 == n2
            assert torch.equal(m1.lora_A.weight, m2.lora_A.weight)
            assert torch.equal(m1.lora_B.weight, m2.lora_B.weight)
        x = torch.randint(0, 300, (2, 9))
        assert torch.equal(model(x).logits, fresh(x).logits)


def test_load_rejects_missing_unexpected_and_misshaped(tmp_path):
    model = apply_lora(tiny_model(300), r=4, alpha=8)
    save_lora(model, tmp_path / "a")
    path = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(iter(tensors))
    missing = {k: v for k, v in tensors.items() if k != key}
    unexpected = {**tensors, "base_model.model.extra.lora_A.weight": torch.zeros(1)}
    misshaped = {**tensors, key: torch.zeros(3, 3)}
    for broken, match in [(missing, "missing"), (unexpected, "unexpected"), (misshaped, "shape")]:
        save_file(broken, path)
        with pytest.raises((KeyError, ValueError), match=match):
            load_lora(apply_lora(tiny_model(300), r=4, alpha=8), tmp_path / "a")


def test_merge_matches_unmerged_and_unmerge_restores_bit_exactly():
    model = apply_lora(tiny_model(300).to(torch.bfloat16), r=4, alpha=8)
    randomize_b(model)
    x = torch.randint(0, 300, (2, 9))
    base = {n: m.base_layer.weight.clone() for n, m in lora_modules(model)}
    unmerged = model(x).logits.float()
    with merged(model):
        assert all(m.merged for _, m in lora_modules(model))
        merged_out = model(x).logits.float()
    # bf16 rounding of W + BA
    assert (merged_out - unmerged).abs().max() < 0.05 * unmerged.abs().max()
    assert all(torch.equal(m.base_layer.weight, base[n]) for n, m in lora_modules(model))
    merge_lora(model)
    merge_lora(model)                          # idempotent: a second merge must not add BA twice
    unmerge_lora(model)
    assert all(torch.equal(m.base_layer.weight, base[n]) for n, m in lora_modules(model))
    assert torch.equal(model(x).logits.float(), unmerged)


def test_the_base_copy_is_made_once_not_every_merge():
    """The base weights are frozen, so the copy that restores them is made at the first merge and
    reused: no per-step round trip (at 7B: 13.96 GB out to host memory and back, every step).
    Training steps in between move B, and each merge folds the current B@A; each unmerge restores
    the base bit for bit."""
    model = apply_lora(tiny_model(300).to(torch.bfloat16), r=4, alpha=8)
    base = {n: m.base_layer.weight.clone() for n, m in lora_modules(model)}
    x = torch.randint(0, 300, (2, 9))
    copies = None
    for step in range(3):
        randomize_b(model, seed=step + 1)  # a training step moved the adapter
        with torch.no_grad():
            unmerged = model(x).logits.float()
        with merged(model):
            kept = [m.base_copy for _, m in lora_modules(model)]
            # the same tensors every step
            assert copies is None or all(a is b for a, b in zip(kept, copies))
            copies = kept
            with torch.no_grad():
                gap = (model(x).logits.float() - unmerged).abs().max()
                assert gap < 0.05 * unmerged.abs().max()
        assert all(torch.equal(m.base_layer.weight, base[n]) for n, m in lora_modules(model))
    evaluation = apply_lora(tiny_model(300), r=4, alpha=8)
    merge_lora(evaluation, spare=None)  # merged for good: no copy is kept
    assert all(m.merged and m.base_copy is None for _, m in lora_modules(evaluation))
    with pytest.raises(ValueError, match="no copy"):
        unmerge_lora(evaluation)


def test_merge_fp32_is_close():
    model = apply_lora(tiny_model(300), r=4, alpha=8)
    randomize_b(model)
    x = torch.randint(0, 300, (2, 9))
    ref = model(x).logits
    with merged(model):
        assert torch.allclose(model(x).logits, ref, atol=1e-5)


def test_dropout_applies_to_lora_input_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=4, dropout=0.5).train()
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), layer.base_layer(x))  # B = 0: dropout never touches the base path
    nn.init.ones_(layer.lora_B.weight)
    assert not torch.equal(layer(x), layer(x))  # training: the adapter's input is dropped at random
    layer.eval()
    assert torch.equal(layer(x), layer(x))                   # evaluation: deterministic
    expected = layer.base_layer(x) + layer.lora_B(layer.lora_A(x)) * 2.0
    assert torch.allclose(layer(x), expected)


# scales other than the paper's 2 (alpha / r = 0.5 and 8): a scale taken as 2 anywhere shows
OTHER_SCALES = [(8, 4), (4, 32)]


def randomize_ab(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            for w in (m.lora_A.weight, m.lora_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.1)


def by_formula(layer, x, scale):
    """W x + b + scale * B A x, from the layer's tensors."""
    base = layer.base_layer
    out = x @ base.weight.T + (base.bias if base.bias is not None else 0)
    return out + scale * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)


@pytest.mark.parametrize("r,alpha", OTHER_SCALES)
def test_a_layer_adds_alpha_over_r_times_b_a_x(r, alpha):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=r, alpha=alpha)
    nn.init.normal_(layer.lora_B.weight, std=0.1)
    x = torch.randn(5, 16)
    assert torch.allclose(layer(x), by_formula(layer, x, alpha / r), atol=1e-6)


@pytest.mark.parametrize("r,alpha", OTHER_SCALES)
def test_save_load_and_merge_keep_alpha_over_r(tmp_path, r, alpha):
    """Saved at r / alpha, loaded into a fresh model and into one wrapped at another scale (as
    --resume does): the file's alpha / r, every layer by the formula; merged, each base weight is
    W + (alpha / r) B A, computed here from the saved tensors."""
    model = apply_lora(tiny_model(300), r=r, alpha=alpha)
    randomize_ab(model)
    save_lora(model, tmp_path / "a")
    cfg = json.load(open(tmp_path / "a" / "adapter_config.json"))
    assert (cfg["r"], cfg["lora_alpha"]) == (r, alpha)
    x = torch.randint(0, 300, (2, 9))
    for fresh in (tiny_model(300), apply_lora(tiny_model(300), r=r, alpha=2 * r)):
        load_lora(fresh, tmp_path / "a")
        assert torch.allclose(fresh(x).logits, model(x).logits, atol=1e-6)
        h = torch.randn(3, 64)
        for _, m in lora_modules(fresh):
            inputs = h if m.base_layer.in_features == 64 else torch.randn(3, 128)
            assert torch.allclose(m(inputs), by_formula(m, inputs, alpha / r), atol=1e-6)
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    base = {n: m.base_layer.weight.detach().clone() for n, m in lora_modules(model)}
    merge_lora(model)
    for name, m in lora_modules(model):
        key = f"base_model.model.{name}"
        delta = tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"]
        assert torch.allclose(m.base_layer.weight, base[name] + alpha / r * delta, atol=1e-6)


def test_on_a_bf16_base_the_adapter_runs_in_bf16_within_its_rounding():
    """The adapters' weights are fp32, the base bf16: the adapter is applied in bf16 (its weights
    cast down; no fp32 copy of the input per adapter: at 7B, ~1.3 GB a layer per 8k-token
    micro-batch), and the LoRA gradients stay within bf16 rounding of an all-fp32 computation
    (measured: 1.1 % of their norm, 0.9 % when the adapter ran in fp32)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    torch.manual_seed(0)
    model = apply_lora(tiny_model(300).to(torch.bfloat16), r=4, alpha=8)
    randomize_b(model)
    x = torch.randint(0, 300, (4, 64))
    layer = lora_modules(model)[0][1]
    h = torch.randn(4, 64, layer.base_layer.in_features, dtype=torch.bfloat16)
    copies = []

    class FP32Copies(TorchDispatchMode):          # fp32 tensors as large as the layer's input
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if out.dtype == torch.float32 and out.numel() >= h.numel():
                copies.append(func)
            return out

    def grads(m):
        m.zero_grad()
        m(x).logits.float().log_softmax(-1)[..., 5].sum().backward()
        return {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    reference = grads(copy.deepcopy(model).float())
    with FP32Copies(), torch.no_grad():
        layer(h)
    assert copies == []
    for name, g in grads(model).items():
        assert (g - reference[name]).norm() < 0.03 * reference[name].norm(), name
