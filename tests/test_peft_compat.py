"""Outside check of lora.py against real PEFT (an optional test dependency, never imported by the
core)."""
import pytest
import torch

from extras.tiny import model as tiny_model
from lora import apply_lora, load_lora, lora_modules, save_lora

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# (r, alpha): the paper's scale 2, and scales 0.5 and 8, where a scale taken as 2 anywhere shows
SCALES = pytest.mark.parametrize("r,alpha", [(16, 32), (8, 4), (4, 32)],
                                 ids=["r16-a32", "r8-a4", "r4-a32"])


@SCALES
def test_our_adapter_loaded_by_peft_gives_our_logits(tmp_path, r, alpha):
    ours = apply_lora(tiny_model(300), r=r, alpha=alpha)
    randomize(ours, 1)
    save_lora(ours, tmp_path / "ours", base_model_name_or_path="tiny")
    theirs = peft.PeftModel.from_pretrained(tiny_model(300), str(tmp_path / "ours"))
    x = torch.randint(0, 300, (2, 11))
    diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    assert diff < 1e-5, diff
    # the adapter really acts
    assert (theirs(x).logits - tiny_model(300)(x).logits).abs().max() > 1e-3


@SCALES
def test_peft_adapter_loaded_by_us_gives_peft_logits(tmp_path, r, alpha):
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS,
                             task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(tiny_model(300), config)
    randomize(theirs, 2)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = load_lora(tiny_model(300), tmp_path / "theirs")
    assert len(lora_modules(ours)) == 14
    x = torch.randint(0, 300, (2, 11))
    diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    assert diff < 1e-5, diff


def test_peft_regex_and_layer_subset_adapters_load(tmp_path):
    config = peft.LoraConfig(r=8, lora_alpha=16,
                             target_modules=r".*\.layers\.1\.self_attn\.(q|v)_proj",
                             task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(tiny_model(300), config)
    randomize(theirs, 3)
    theirs.save_pretrained(str(tmp_path / "regex"))
    ours = load_lora(tiny_model(300), tmp_path / "regex")
    assert [n for n, _ in lora_modules(ours)] == ["model.layers.1.self_attn.q_proj",
                                                  "model.layers.1.self_attn.v_proj"]
    x = torch.randint(0, 300, (2, 11))
    assert (ours(x).logits - theirs(x).logits).abs().max().item() < 1e-5


def test_unsupported_peft_settings_are_refused(tmp_path):
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, use_dora=True,
                             task_type="CAUSAL_LM")
    peft.get_peft_model(tiny_model(300), config).save_pretrained(str(tmp_path / "dora"))
    with pytest.raises(ValueError, match="use_dora"):
        load_lora(tiny_model(300), tmp_path / "dora")
