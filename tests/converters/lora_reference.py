"""Reference side of the LoRA tests: random PEFT adapters and transformers + peft logits."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: the seven projections the issue's adapters target
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(
    src: Path,
    out: Path,
    *,
    targets: Iterable[str] = TARGETS,
    scope: str | None = None,
    seed: int = 7,
    std: float = 0.1,
    **options: Any,
) -> Path:
    """Save a PEFT LoRA (r 8, alpha 16) on ``src`` whose A and B are both seeded random
    (PEFT's default zero B would change nothing), strong enough to move logits by order 1.

    ``scope`` (a regex) narrows the targets to the Linear modules whose full name matches it,
    listed by full name (PEFT 0.22 maps a bare ``gate_proj`` onto fused MoE experts too).
    """
    import re

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    names: list[str] = list(targets)
    if scope is not None:
        names = [
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in names
            and re.search(scope, name)
        ]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=names, lora_dropout=0.0, **options)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_" in name:
                param.normal_(0.0, std)
    peft_model.save_pretrained(out)
    return out


def peft_logits(
    src: Path, adapter: Path, ids: list[int], scales: Iterable[float]
) -> dict[float, np.ndarray]:
    """transformers + peft logits (float32, eager attention) of ``ids`` at each adapter scale
    (scale s multiplies PEFT's alpha / r, as llama.cpp's adapter scale does); 0.0 is the base
    with the adapter disabled."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, attn_implementation="eager"
    )
    peft_model = PeftModel.from_pretrained(model, adapter)
    peft_model.eval()
    out: dict[float, np.ndarray] = {}
    x = torch.tensor([ids])
    with torch.no_grad():
        for scale in scales:
            if scale == 0.0:
                with peft_model.disable_adapter():
                    out[scale] = peft_model(x).logits[0].float().numpy()
                continue
            for module in peft_model.modules():
                if isinstance(module, LoraLayer):
                    module.set_scale("default", scale)
            out[scale] = peft_model(x).logits[0].float().numpy()
    return out


def llama_lora_logits(base: Path, adapter: Path | None, ids: list[int], scale: float) -> np.ndarray:
    """Logits llama.cpp computes for ``ids`` with ``adapter`` at ``scale`` (f32 KV cache, flash
    attention off)."""
    from .reference import llama_logits

    kwargs: dict[str, Any] = {}
    if adapter is not None:
        kwargs = {"lora_path": str(adapter), "lora_scale": scale}
    return llama_logits(base, ids, flash_attn=False, **kwargs)
