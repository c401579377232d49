"""LoRA on fused MoE expert weights (PEFT ``target_parameters``) -> llama.cpp's per-expert pairs.

transformers 5 keeps a MoE block's experts as 3-D parameters (``experts.gate_up_proj`` of shape
(E, 2F, H), ``experts.down_proj`` (E, H, F)); PEFT 0.22 adapts them with a ``ParamWrapper``
whose ``lora_A`` is (r*E, in) and ``lora_B`` (out, r*E), expert e's delta being
``B[:, :, e] @ A[e]`` after reshaping A to (E, r, in) and B to (out, r, E). Several parameters of
one module nest (``experts.base_layer.lora_A`` wraps the first): which pair adapts which
parameter is read from the shapes, which always differ (gate_up is (2F, H), down (H, F)).

llama.cpp applies per-expert pairs to its stacked ``ffn_*_exps`` tensors (``build_lora_mm_id``):
``lora_a`` (E, r, in) and ``lora_b`` (E, out, r). The fused gate_up rows split into the gate and
up parts the checkpoint stores per expert (gate first, as transformers fuses them), and each part
goes through the family's own plan with 3-D index probes, as 2-D weights do (converters/lora.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.archs.base import ArchConverter
from converters.checkpoint import TensorRef, to_f32
from ggufworker.errors import ConversionError

#: a fused parameter -> the per-expert checkpoint tensors it stacks, in row order (the spellings
#: of the families that have them: Qwen-MoE's gate/up/down, Mixtral's w1/w3/w2)
FUSED_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gate_up_proj": (("gate_proj", "up_proj"), ("w1", "w3"), ("gate_up_proj",)),
    "down_proj": (("down_proj",), ("w2",)),
}
#: transformers 5 module paths whose checkpoints keep an older name (Mixtral's block_sparse_moe)
MODULE_RENAMES = ((".mlp.experts", ".block_sparse_moe.experts"),)


@dataclass(frozen=True)
class ParamPair:
    """One adapted expert parameter: ``module.param`` and its PEFT factors."""

    module: str  # the experts module (no ``.base_layer``)
    param: str
    a: TensorRef  # (r*E, in)
    b: TensorRef  # (out, r*E)
    n_expert: int
    parts: tuple[tuple[str, tuple[int, ...]], ...]  # (checkpoint tensor, (E, rows, in)) in order
    scale: float  # PEFT's alpha / r for this parameter

    @property
    def rank(self) -> int:
        return self.a.shape[0] // self.n_expert


def _targets_of(cfg: dict[str, Any], module: str) -> list[str]:
    """The parameter names of ``module`` that ``target_parameters`` names (PEFT's matching)."""
    names = []
    for target in cfg.get("target_parameters") or []:
        owner, _, param = str(target).rpartition(".")
        key = f"{module}.{param}"
        if key == target or key.endswith(f".{target}"):
            names.append(param)
    return names


def split_param_pairs(
    cfg: dict[str, Any], halves: dict[str, dict[str, TensorRef]]
) -> tuple[dict[str, list[tuple[TensorRef, TensorRef]]], dict[str, dict[str, TensorRef]]]:
    """Separate the pairs of parameter wrappers (``<module>(.base_layer)*``) from module pairs.

    Returns:
        (experts module -> its (A, B) pairs, the other halves unchanged)
    """
    params: dict[str, list[tuple[TensorRef, TensorRef]]] = {}
    rest: dict[str, dict[str, TensorRef]] = {}
    for key, ab in halves.items():
        module = re.sub(r"(\.base_layer)+$", "", key)
        # a parameter wrapper: nested (base_layer), or on an experts module (transformers 5's
        # fused experts); PEFT's suffix matching alone would also claim Linear modules
        wrapper = key != module or module.rpartition(".")[2] == "experts"
        if cfg.get("target_parameters") and wrapper and _targets_of(cfg, module):
            if set(ab) != {"A", "B"}:
                raise ConversionError(f"{key}: lora_A or lora_B is missing")
            params.setdefault(module, []).append((ab["A"], ab["B"]))
        else:
            rest[key] = ab
    return params, rest


def resolve(
    cfg: dict[str, Any],
    params: dict[str, list[tuple[TensorRef, TensorRef]]],
    hf_shapes: dict[str, tuple[int, ...]] | None,
) -> list[ParamPair]:
    """Match each pair to the parameter of its module whose (out, in) it has.

    Raises:
        ConversionError: a GGUF base (the checkpoint's expert layout is needed), no checkpoint
            tensors for a parameter, or a pair matching no parameter.
    """
    if not params:
        return []
    if hf_shapes is None:
        raise ConversionError(
            "LoRA on MoE experts (target_parameters) needs the base's checkpoint folder as "
            "--base, not its GGUF"
        )
    alpha_default = float(cfg.get("lora_alpha") or cfg.get("r") or 1)
    rslora = bool(cfg.get("use_rslora"))
    out = []
    for module, pairs in sorted(params.items()):
        candidates = {}
        for param in _targets_of(cfg, module):
            stored = [module] + [module.replace(a, b) for a, b in MODULE_RENAMES if a in module]
            spellings = [
                (m, parts) for m in stored for parts in FUSED_PARTS.get(param, ((param,),))
            ]
            for owner, spelling in spellings:
                names = [f"{owner}.{part}.weight" for part in spelling]
                if all(n in hf_shapes and len(hf_shapes[n]) == 3 for n in names):
                    shapes = [hf_shapes[n] for n in names]
                    rows = sum(s[1] for s in shapes)
                    candidates[(rows, shapes[0][2])] = (
                        param,
                        tuple(zip(names, shapes, strict=True)),
                    )
                    break
            else:
                raise ConversionError(
                    f"target_parameters {module}.{param}: the base checkpoint has no per-expert "
                    "tensors this converter maps it to"
                )
        for a, b in pairs:
            match = candidates.get((b.shape[0], a.shape[1]))
            if match is None:
                raise ConversionError(
                    f"{module}: a LoRA pair of {list(b.shape[:1]) + list(a.shape[1:])} fits no "
                    "expert parameter of the base (an adapter for another base?)"
                )
            param, parts = match
            n_expert = parts[0][1][0]
            if a.shape[0] % n_expert or b.shape[1] != a.shape[0]:
                raise ConversionError(f"{module}.{param}: LoRA rank is not a multiple of experts")
            rank = a.shape[0] // n_expert
            alpha = alpha_default
            for pattern, value in (cfg.get("alpha_pattern") or {}).items():
                if re.fullmatch(rf"(.*\.)?{pattern}", f"{module}.{param}"):
                    alpha = float(value)
                    break
            scale = alpha / math.sqrt(rank) if rslora else alpha / rank
            out.append(ParamPair(module, param, a, b, n_expert, parts, scale))
    return out


def expert_tensors(
    conv: ArchConverter,
    pairs: list[ParamPair],
    alpha: float,
    probe: Callable[
        [ArchConverter, str, tuple[int, ...]], list[tuple[str, np.ndarray, np.ndarray]]
    ],
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name.lora_a|lora_b, data)``: lora_a (E, r, in), lora_b (E, out, r) per GGUF tensor.

    ``probe(conv, hf_name, shape)`` gives, per output tensor of the family's plan for the
    stacked expert tensor ``hf_name``, (GGUF name, row gather, column gather).
    """
    for pair in pairs:
        e, r = pair.n_expert, pair.rank
        a = to_f32(np.asarray(pair.a.load()), pair.a.dtype).reshape(e, r, -1)  # (E, r, in)
        b = to_f32(np.asarray(pair.b.load()), pair.b.dtype)
        b = b.reshape(b.shape[0], r, e).transpose(2, 0, 1)  # (E, out, r)
        factor = np.float32(pair.scale * r / alpha)
        start = 0
        for hf_name, shape in pair.parts:
            rows = shape[1]
            part_b = b[:, start : start + rows, :]
            start += rows
            for name, row_idx, col_idx in probe(conv, hf_name, shape):
                lora_b = part_b[:, row_idx, :]
                if factor != 1:
                    lora_b = lora_b * factor
                stem = name.removesuffix(".weight")
                yield f"{stem}.weight.lora_a", np.ascontiguousarray(a[:, :, col_idx], np.float32)
                yield f"{stem}.weight.lora_b", np.ascontiguousarray(lora_b, np.float32)
