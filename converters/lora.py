"""PEFT LoRA adapter folder -> GGUF LoRA adapter that llama.cpp applies on top of its base.

Library use::

    from converters.lora import convert_lora
    convert_lora("my-adapter", "my-adapter.gguf", base="base-checkpoint-or.gguf")

A PEFT adapter stores, per targeted module, ``lora_A`` (r x in) and ``lora_B`` (out x r) in the
layout of the Hugging Face checkpoint; its weight delta is ``alpha / r * B @ A``. The GGUF base
stores the same weights after the family's tensor plan (converters/archs/): renamed, and
sometimes with rows permuted (Llama's RoPE pair order), split (fused QKV) or transposed (GPT-2's
Conv1D). Instead of a second table of those transforms, each targeted weight is run through the
family's own plan with index probes (a tensor holding each element's row number, one holding its
column number, one of zeros; converters/lora_plan.py): when every output is a pure gather of
rows and columns (or of the transpose), the same gather applied to ``B`` (rows) and ``A``
(columns) gives an adapter whose delta equals the planned delta exactly. Anything else
(arithmetic on the weight, stacking with other tensors) is refused, as is what llama.cpp's LoRA
cannot express (see ``_refusals``).

LoRA on transformers 5's fused MoE expert parameters (PEFT ``target_parameters``) becomes
per-expert pairs on llama.cpp's stacked expert tensors (converters/lora_experts.py).

llama.cpp scales a LoRA pair by ``scale * alpha / rank`` with one ``adapter.lora.alpha`` per file
(src/llama-adapter.h ``get_scale``); per-module alphas (``alpha_pattern``) and rank-stabilised
scaling (``use_rslora``: ``alpha / sqrt(r)``) are folded into ``lora_b`` so the product is PEFT's.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from converters.checkpoint import TensorRef, read_json, read_safetensors_header, to_f32
from converters.lora_experts import expert_tensors, resolve, split_param_pairs
from converters.lora_plan import BasePlan, expert_gathers, gathers, load_base
from converters.quantize import tensor_type
from ggufworker.errors import ConversionError, DiskFullError

logger = logging.getLogger(__name__)

#: ``--outtype`` choices for adapters (lora_b rows are only ``r`` long: q8_0 keeps them f16).
LORA_OUTTYPES = ("f32", "f16", "q8_0")
_QTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
#: Written beside llama.cpp's keys so the engine can refuse an adapter made for another base.
BASE_KEYS = ("vocab_size", "embedding_length", "block_count")

_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|"
    r"lora_embedding_B|lora_magnitude_vector)(?:\.(?P<adapter>[A-Za-z0-9_-]+))?(?:\.weight)?$"
)
#: init methods that change the base weights themselves (the adapter is relative to them)
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "eva")


@dataclass(frozen=True)
class LoraPair:
    """One targeted module: PEFT's ``A`` (r x in) and ``B`` (out x r) and its PEFT scale."""

    module: str
    a: TensorRef
    b: TensorRef
    scale: float  # PEFT's alpha / r (or alpha / sqrt(r)) for this module

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def read_peft(
    adapter_dir: str | os.PathLike[str],
) -> tuple[dict[str, Any], list[LoraPair], dict[str, list[tuple[TensorRef, TensorRef]]]]:
    """Read a PEFT LoRA folder: its ``adapter_config.json``, one pair per targeted module, and
    the pairs of adapted parameters (``target_parameters``: MoE experts) by module.

    Raises:
        ConversionError: the folder is not a PEFT LoRA, or holds what llama.cpp cannot apply.
    """
    folder = Path(adapter_dir)
    cfg: dict[str, Any] = read_json(
        folder / "adapter_config.json", missing="not a PEFT adapter folder?"
    )
    _refusals(cfg)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        hint = " (adapter_model.bin: re-save it with safe_serialization=True)" * (
            (folder / "adapter_model.bin").is_file()
        )
        raise ConversionError(f"{folder}: no adapter_model.safetensors{hint}")
    refs = read_safetensors_header(weights)
    halves: dict[str, dict[str, TensorRef]] = {}
    for name, ref in refs.items():
        m = _PEFT_KEY.match(name)
        if m is None:
            if ".modules_to_save." in name or name.endswith((".bias", ".weight")):
                raise ConversionError(
                    f"the adapter holds a full weight {name!r} (modules_to_save or trained "
                    "biases); a llama.cpp LoRA adapter can only add low-rank deltas"
                )
            raise ConversionError(f"unexpected tensor {name!r} in a PEFT LoRA adapter")
        kind = m["kind"]
        if kind == "lora_magnitude_vector":
            raise ConversionError(_DORA)
        if kind.startswith("lora_embedding"):
            raise ConversionError(
                f"{m['module']}: LoRA on an embedding layer is not supported by this converter "
                "(target the projection modules)"
            )
        halves.setdefault(m["module"], {})[kind[-1]] = ref
    if not halves:
        raise ConversionError(f"{weights}: no LoRA tensors")
    params, halves = split_param_pairs(cfg, halves)
    rank_default = int(cfg.get("r") or 0)
    alpha_default = float(cfg.get("lora_alpha") or rank_default or 1)
    rslora = bool(cfg.get("use_rslora"))
    alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}
    pairs = []
    for module, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise ConversionError(f"{module}: lora_A or lora_B is missing")
        a, b = ab["A"], ab["B"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise ConversionError(
                f"{module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not pair"
            )
        rank = a.shape[0]
        alpha = alpha_default
        for pattern, value in alpha_pattern.items():
            if re.fullmatch(rf"(.*\.)?{pattern}", module):
                alpha = float(value)
                break
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        pairs.append(LoraPair(module, a, b, scale))
    return cfg, pairs, params


_DORA = (
    "DoRA adapters (use_dora) cannot be expressed for llama.cpp: its LoRA adds B·A to the "
    "weight's output, DoRA also renormalises every weight column"
)


def _refusals(cfg: dict[str, Any]) -> None:
    """Raise for adapter settings whose effect a llama.cpp LoRA (W x + s·B·A x) cannot carry."""
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise ConversionError(f"peft_type {peft_type} is not a LoRA adapter; only LoRA converts")
    if cfg.get("use_dora"):
        raise ConversionError(_DORA)
    if cfg.get("lora_bias"):
        raise ConversionError(
            "lora_bias adapters add a bias to lora_B; llama.cpp's LoRA has no bias term"
        )
    if str(cfg.get("bias") or "none") != "none":
        raise ConversionError(
            f"bias={cfg['bias']!r}: the adapter retrains base biases, which a llama.cpp LoRA "
            "adapter cannot carry"
        )
    if cfg.get("modules_to_save"):
        raise ConversionError(
            f"modules_to_save={cfg['modules_to_save']}: the adapter replaces whole modules, "
            "which a llama.cpp LoRA adapter cannot carry"
        )
    if cfg.get("layer_replication"):
        raise ConversionError("layer_replication changes the base's layers; not convertible")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise ConversionError(
            f"init_lora_weights={init!r} changed the base weights when training started; "
            "save the adapter as a plain LoRA first (PEFT's path_initial_model_for_weight_"
            "conversion) and convert that"
        )
    if cfg.get("alora_invocation_tokens"):
        raise ConversionError("activated LoRA (alora_invocation_tokens) is not supported")


# --- conversion ------------------------------------------------------------------------------


def _adapter_tensors(
    base: BasePlan, pairs: list[LoraPair], alpha: float, fan_in_fan_out: bool
) -> Iterator[tuple[str, np.ndarray]]:
    """``(gguf name + .lora_a/.lora_b, float32 data)`` for every targeted module."""
    seen: dict[str, str] = {}
    conv = base.conv
    for pair in pairs:
        hf_name = f"{pair.module}.weight"
        a = to_f32(np.asarray(pair.a.load()), pair.a.dtype)  # (r, in)
        b = to_f32(np.asarray(pair.b.load()), pair.b.dtype)  # (out, r)
        # The delta in the checkpoint's own layout is left @ right.
        if fan_in_fan_out:  # GPT-2 Conv1D stores (in, out): delta = (B A)^T
            left, right = a.T, b.T
        else:
            left, right = b, a
        stored = (left.shape[0], right.shape[1])
        if base.hf_shapes is not None:
            if hf_name not in base.hf_shapes or conv.skip(hf_name):
                raise ConversionError(
                    f"target {pair.module!r} maps to no tensor of the base "
                    f"({'tied to the embedding' if conv.skip(hf_name) else 'no ' + hf_name})"
                )
            if tuple(base.hf_shapes[hf_name]) != stored:
                raise ConversionError(
                    f"{pair.module}: the adapter's delta is {list(stored)}, the base's weight "
                    f"{list(base.hf_shapes[hf_name])} (an adapter for another base?)"
                )
        if re.search(r"\.experts\.\d+\.", hf_name):
            raise ConversionError(
                f"{pair.module}: LoRA on individual MoE experts is not supported (llama.cpp "
                "stacks experts into one tensor)"
            )
        try:
            outputs = gathers(conv, hf_name, stored)
        except ConversionError as exc:
            if "no GGUF name" in str(exc):
                raise ConversionError(f"target {pair.module!r} maps to no base tensor") from None
            raise
        factor = np.float32(pair.scale * pair.rank / alpha)
        for g in outputs:
            if g.transposed:
                lora_b, lora_a = right[:, g.rows].T, left[g.cols].T
            else:
                lora_b, lora_a = left[g.rows], right[:, g.cols]
            if factor != 1:
                lora_b = lora_b * factor
            if base.gguf_shapes is not None:
                want = base.gguf_shapes.get(g.name)
                if want is None:
                    raise ConversionError(f"target {pair.module!r}: the base has no {g.name}")
                if want != (lora_b.shape[0], lora_a.shape[1]):
                    raise ConversionError(
                        f"{pair.module}: the adapter's delta for {g.name} is "
                        f"{[lora_b.shape[0], lora_a.shape[1]]}, the base's tensor {list(want)} "
                        "(an adapter for another base?)"
                    )
            if g.name in seen:
                raise ConversionError(f"{pair.module} and {seen[g.name]} both map to {g.name}")
            seen[g.name] = pair.module
            stem = g.name.removesuffix(".weight")
            yield f"{stem}.weight.lora_a", np.ascontiguousarray(lora_a, dtype=np.float32)
            yield f"{stem}.weight.lora_b", np.ascontiguousarray(lora_b, dtype=np.float32)


def convert_lora(
    adapter_dir: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    base: str | os.PathLike[str],
    outtype: str = "f32",
    force: bool = False,
) -> Path:
    """Convert a PEFT LoRA folder into a GGUF LoRA adapter for ``base``.

    Args:
        adapter_dir: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        dst: output path; default ``<adapter_dir>/<folder name>.lora.<OUTTYPE>.gguf``.
        base: the base model: its Hugging Face checkpoint folder, or its GGUF file (then the
            family's plan is rebuilt from the GGUF's metadata and shapes are checked against it).
        outtype: f32 (default, exact), f16 or q8_0 (rows too short for q8_0 blocks stay f16).
        force: replace an existing file at ``dst``.

    Returns:
        The path written.

    Raises:
        ConversionError: what llama.cpp cannot express (DoRA, lora_bias, trained biases,
            modules_to_save, raw parameters other than fused MoE experts, embedding targets,
            per-expert MoE module targets,
            targets with no base tensor or a non-reordering conversion), a mismatched base, an
            existing target without ``force``.
        DiskFullError: the disk filled up; nothing is left at ``dst``.
    """
    if outtype not in LORA_OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(LORA_OUTTYPES)}")
    src = Path(adapter_dir)
    cfg, pairs, params = read_peft(src)
    target = Path(dst) if dst is not None else src / f"{src.resolve().name}.lora.{outtype}.gguf"
    if target.is_dir():
        target = target / f"{src.resolve().name}.lora.{outtype}.gguf"
    if not target.parent.is_dir():
        raise ConversionError(f"output folder {target.parent} does not exist")
    if target.exists() and not force:
        raise ConversionError(f"{target} exists; pass --force (force=True) to replace it")
    made_for = (cfg.get("auto_mapping") or {}).get("base_model_class")
    the_base = load_base(base, made_for)
    base_archs = the_base.conv.hf_architectures
    if made_for and base_archs and made_for not in base_archs:
        raise ConversionError(
            f"the adapter was trained on a {made_for}, the base is a "
            f"{the_base.conv.arch_name} ({'/'.join(base_archs)}): an adapter for another base"
        )
    # llama.cpp scales every pair by alpha / rank(pair) with the file's one alpha: the first
    # pair's PEFT scale x rank is that alpha; any other module's differing scale (alpha_pattern,
    # rslora with several ranks) is folded into its lora_b (factor 1 for the usual adapter).
    experts = resolve(cfg, params, the_base.hf_shapes)
    first = pairs[0] if pairs else experts[0]
    alpha = float(first.scale * first.rank)
    if not alpha > 0:
        raise ConversionError("lora_alpha is 0: the adapter changes nothing")
    tensors = list(_adapter_tensors(the_base, pairs, alpha, bool(cfg.get("fan_in_fan_out"))))
    tensors += expert_tensors(the_base.conv, experts, alpha, expert_gathers)
    qtype = _QTYPES[outtype]
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        _write(tmp, the_base, tensors, alpha, qtype, cfg)
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise DiskFullError(f"disk full while writing {target}; nothing was written") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s (%d LoRA pairs, alpha %g)", target, len(tensors) // 2, alpha)
    return target


def _write(
    path: Path,
    base: BasePlan,
    tensors: list[tuple[str, np.ndarray]],
    alpha: float,
    qtype: gguf.GGMLQuantizationType,
    cfg: dict[str, Any],
) -> None:
    conv = base.conv
    w = gguf.GGUFWriter(path, conv.arch_name)
    try:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        name = cfg.get("base_model_name_or_path")
        if name:
            w.add_string("general.base_model.0.name", str(name))
            w.add_uint32("general.base_model.count", 1)
        facts = {
            "vocab_size": base.vocab_size,
            "embedding_length": conv.n_embd,
            "block_count": conv.n_layers,
        }
        for key in BASE_KEYS:
            if facts[key]:
                w.add_uint32(f"ggufworker.lora.base.{key}", int(facts[key]))  # type: ignore[arg-type]
        for tname, data in tensors:
            ttype = tensor_type(qtype, data.shape, False)
            if ttype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(tname, data)
            elif ttype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(tname, data.astype(np.float16))
            else:
                w.add_tensor(tname, gguf.quants.quantize(data, ttype), raw_dtype=ttype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


__all__ = ["LORA_OUTTYPES", "LoraPair", "convert_lora", "read_peft"]
