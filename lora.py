"""Hand-written LoRA for nn.Linear with PEFT's semantics and file format
(loadable by PEFT, vLLM, SGLang).

y = W x + (alpha / r) * B(A(dropout(x))), A: [r, in] Kaiming-uniform(a=sqrt5),
B: [out, r] zeros: equals the base at init. Adapter weights live in fp32 (PEFT's
autocast_adapter_dtype) beside a bf16 base, and are applied in the input's dtype
(cast down, r x in: no fp32 copy of the input per adapter), as Unsloth, the
author's trainer, and autocast apply them. Saved keys are PEFT's:
`base_model.model.<module path>.lora_A.weight`.
"""
import json
import math
import os
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj",
                   "gate_proj", "up_proj", "down_proj")
PREFIX = "base_model.model."        # PeftModel -> LoraModel -> the transformers model


class LoRALinear(nn.Module):
    def __init__(self, base_layer, r, alpha, dropout=0.0):    # base_layer: nn.Linear
        super().__init__()
        self.base_layer = base_layer
        # fp32 beside a bf16 base
        kw = dict(bias=False, device=base_layer.weight.device, dtype=torch.float32)
        self.lora_A = nn.Linear(base_layer.in_features, r, **kw)
        self.lora_B = nn.Linear(r, base_layer.out_features, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        self.merged = False          # B@A folded into the base weight (rollouts)
        # the exact base weight, kept from the first merge on, to restore it
        self.base_copy = None

    def delta_weight(self):
        # [out, in]
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x):
        out = self.base_layer(x)
        if self.merged:
            return out
        A = self.lora_A.weight.to(x.dtype)               # [r, in]
        B = self.lora_B.weight.to(x.dtype)               # [out, r]
        return out + F.linear(F.linear(self.dropout(x), A), B) * self.scaling


def lora_modules(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def apply_lora(model, r=16, alpha=32, dropout=0.0, targets=DEFAULT_TARGETS):
    """Wrap every nn.Linear whose attribute name (q_proj) or full path
    (model.layers.0.self_attn.q_proj) is in `targets`, freeze everything else,
    return the model."""
    model.requires_grad_(False)
    wrapped = set()                 # the attribute names wrapped
    for name, module in list(model.named_modules()):
        for attr, child in list(module.named_children()):
            path = f"{name}.{attr}" if name else attr
            if (attr in targets or path in targets) and isinstance(child, nn.Linear):
                setattr(module, attr, LoRALinear(child, r, alpha, dropout))
                wrapped.add(attr)
    if not wrapped:
        raise ValueError(f"apply_lora: no nn.Linear named any of {list(targets)} in "
                         f"{type(model).__name__}")
    model.lora_config = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout,
                         "target_modules": sorted(wrapped)}
    return model


def lora_parameters(model):
    """{PEFT key: parameter} for every LoRA matrix in the model."""
    return {PREFIX + name + f".{ab}.weight": getattr(m, ab).weight
            for name, m in lora_modules(model) for ab in ("lora_A", "lora_B")}


def save_lora(model, directory, base_model_name_or_path=None):
    """Write adapter_config.json + adapter_model.safetensors as PEFT does: the
    weights under PEFT's keys, and the settings a loader needs (r, lora_alpha,
    lora_dropout, target_modules; every other is PEFT's default, and PEFT, vLLM
    and SGLang fill in their defaults)."""
    os.makedirs(directory, exist_ok=True)
    base = base_model_name_or_path or getattr(model, "name_or_path", None)
    config = {"peft_type": "LORA",
              "task_type": "CAUSAL_LM",
              "base_model_name_or_path": base,
              **model.lora_config,         # r, lora_alpha, lora_dropout, target_modules
              "bias": "none",
              "use_dora": False,
              "modules_to_save": None}
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tensors = {k: v.detach().contiguous() for k, v in lora_parameters(model).items()}
    save_file(tensors, os.path.join(directory, "adapter_model.safetensors"),
              metadata={"format": "pt"})


def adapter_config(directory):
    """A PEFT-format LoRA directory's adapter_config.json, read before any
    weights: both files there, and settings that load_lora implements."""
    config_path = os.path.join(directory, "adapter_config.json")
    for path in (config_path, os.path.join(directory, "adapter_model.safetensors")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_lora: {path} not found")
    with open(config_path) as f:
        cfg = json.load(f)
    unsupported = {k: cfg[k] for k in ("use_dora", "use_rslora", "modules_to_save",
                                       "rank_pattern", "alpha_pattern", "lora_bias",
                                       "target_parameters", "trainable_token_indices",
                                       "layer_replication") if cfg.get(k)}
    plain = cfg.get("peft_type", "LORA") == "LORA" and cfg.get("bias", "none") == "none"
    if not plain or unsupported:               # plain: a LoRA without biases
        raise ValueError(f"{config_path}: unsupported adapter settings "
                         f"{unsupported or cfg.get('peft_type')}")
    return cfg


def load_lora(model, directory):
    """Load a PEFT-format LoRA directory (ours, PEFT's or Unsloth's) into model;
    wraps it first if needed."""
    cfg = adapter_config(directory)
    weights_path = os.path.join(directory, "adapter_model.safetensors")
    # PEFT's in-memory names (lora_A.default.weight), as some trainers save them
    tensors = {k.replace(".lora_A.default.", ".lora_A.")
                .replace(".lora_B.default.", ".lora_B."): v
               for k, v in load_file(weights_path).items()}
    # wrap exactly the modules the file has (covers regex target_modules too)
    if not lora_modules(model):
        paths = {k[len(PREFIX):].rsplit(".lora_", 1)[0]
                 for k in tensors if k.startswith(PREFIX)}
        apply_lora(model, cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0),
                   paths)
    params = lora_parameters(model)
    missing = sorted(params.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise KeyError(f"{weights_path}: missing keys {missing[:5]} ({len(missing)}), "
                       f"unexpected keys {unexpected[:5]} ({len(unexpected)})")
    for key, value in tensors.items():
        if value.shape != params[key].shape:
            raise ValueError(f"{weights_path}: {key} has shape {tuple(value.shape)}, "
                             f"model expects {tuple(params[key].shape)}")
        with torch.no_grad():
            params[key].copy_(value)
    for _, m in lora_modules(model):
        m.scaling = cfg["lora_alpha"] / cfg["r"]
    return model


def merge_lora(model, spare=0):
    """Fold B@A into the base weights: rollouts then run at base-model speed.
    unmerge_lora restores the exact base weights from a copy made once, at the
    first merge (they are frozen, so it stays valid; 2 bytes a weight in bf16,
    13.96 GB at 7B): on the GPU if that copy and `spare` more bytes fit within
    70 % of its memory, else in page-locked host memory, copied back at full bus
    speed. spare=None keeps no copy: merged for good (evaluation)."""
    layers = [m for _, m in lora_modules(model)]
    weights = [m.base_layer.weight for m in layers]
    with torch.no_grad():
        if spare is not None and layers and layers[0].base_copy is None:
            room = False                # on the CPU the copy stays beside the weights
            if weights[0].is_cuda:
                free, total = torch.cuda.mem_get_info(weights[0].device)
                room = total - free + sum(w.nbytes for w in weights) + spare <= 0.7 * total
            for m, w in zip(layers, weights):
                if room or not w.is_cuda:
                    m.base_copy = w.clone()     # no_grad: a plain tensor
                else:   # page-locked: copied back at full bus speed
                    pinned = torch.empty_like(w, device="cpu", pin_memory=True)
                    m.base_copy = pinned.copy_(w)
        for m in layers:
            if not m.merged:
                w = m.base_layer.weight
                w.add_(m.delta_weight().to(w.dtype))
                m.merged = True


def unmerge_lora(model):
    """Restore the exact base weights from their copy (bf16 add-then-subtract is
    not exact)."""
    with torch.no_grad():
        for _, m in lora_modules(model):
            if m.merged:
                if m.base_copy is None:
                    raise ValueError("unmerge_lora: merged with spare=None, no copy of "
                                     "the base weights was kept")
                m.base_layer.weight.copy_(m.base_copy, non_blocking=True)
                m.merged = False


@contextmanager
def merged(model, spare=0):
    merge_lora(model, spare)
    try:
        yield model
    finally:
        unmerge_lora(model)
