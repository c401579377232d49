"""Helpers of the MoE converter tests: transformers' reference with router margins, and
rewrites of saved checkpoints (fused expert layout, config edits, synthetic large checkpoints).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def randomize(src: Path, suffix: str, scale: float) -> None:
    """Give tensors named ``*suffix`` random values (buffers that ``build_tiny`` leaves at 0)."""
    from safetensors.numpy import load_file, save_file

    path = src / "model.safetensors"
    tensors = load_file(path)
    rng = np.random.default_rng(3)
    for name, value in tensors.items():
        if name.endswith(suffix):
            tensors[name] = (rng.standard_normal(value.shape) * scale).astype(value.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def _routers(model) -> list[tuple[str, Any]]:
    """(name, module) of every router: a ``.gate``/``.router`` projection onto the experts."""
    n_expert = next(
        int(getattr(model.config, k))
        for k in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
        if getattr(model.config, k, None)
    )
    found = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name.endswith((".gate", ".router", ".router.layer")) and weight is not None:
            if weight.ndim == 2 and weight.shape[0] == n_expert:
                found.append((name, module))
    assert found, "no router found"
    return found


def _margins(scores: np.ndarray, k: int, cfg: Any) -> np.ndarray:
    """Per token: how far the chosen experts are from a tie, in selection-score units."""
    n_group = int(getattr(cfg, "n_group", None) or 1)
    topk_group = int(getattr(cfg, "topk_group", None) or n_group)
    margins = np.full(scores.shape[0], np.inf)
    if n_group > 1 and topk_group < n_group:  # DeepSeek-V3: groups by their two best scores
        grouped = scores.reshape(scores.shape[0], n_group, -1)
        group_scores = np.sort(grouped, axis=-1)[..., -2:].sum(-1)
        ranked = np.sort(group_scores, axis=-1)[:, ::-1]
        margins = ranked[:, topk_group - 1] - ranked[:, topk_group]
        keep = np.argsort(-group_scores, axis=-1)[:, :topk_group]
        mask = np.zeros_like(group_scores, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        scores = np.where(mask[..., None], grouped, -np.inf).reshape(scores.shape)
    ranked = np.sort(scores, axis=-1)[:, ::-1]
    return np.minimum(margins, ranked[:, k - 1] - ranked[:, k])


def _selection_scores(logits: np.ndarray, model_type: str, module: Any) -> np.ndarray:
    """The scores experts are chosen by; softmax families rank by the logits themselves."""
    if model_type == "deepseek_v3":
        bias = module.e_score_correction_bias.detach().float().numpy()
        return 1.0 / (1.0 + np.exp(-logits)) + bias
    if model_type == "ernie4_5_moe":
        bias = module.moe_statics.e_score_correction_bias.detach().float().numpy().reshape(-1)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True) + bias
    return logits


def hf_reference(src: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' logits (f32, eager) and each position's smallest router margin."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    k = int(getattr(model.config, "num_experts_per_tok", None) or model.config.moe_k)
    margins = np.full(len(ids), np.inf)

    def hook(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        logits = x @ module.weight.detach().float().T
        if getattr(module, "bias", None) is not None:
            logits = logits + module.bias.detach().float()
        scores = _selection_scores(logits.numpy(), model.config.model_type, module)
        np.minimum(margins, _margins(scores, k, model.config), out=margins)

    handles = [m.register_forward_pre_hook(hook) for _, m in _routers(model)]
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
    finally:
        for h in handles:
            h.remove()
    return logits, margins


def clear_prefix(margins: np.ndarray, threshold: float) -> int:
    """Length of the longest prefix whose router margins all exceed ``threshold``."""
    unclear = np.flatnonzero(margins <= threshold)
    return int(unclear[0]) if unclear.size else len(margins)


PER_EXPERT = re.compile(r"^(?P<head>.*\.experts)\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")
_GATE, _UP, _DOWN = ("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")


def fuse_experts(src: Path, dst: Path, renames: dict[str, str]) -> Path:
    """Rewrite a per-expert checkpoint in transformers 5's in-memory fused layout:
    ``experts.gate_up_proj`` (E, 2F, H) = [gate; up] per expert, ``experts.down_proj`` (E, H, F),
    then apply ``renames`` (substring -> substring) to every tensor name."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    groups: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        m = PER_EXPERT.match(name)
        if m is None:
            out[name] = value
        else:
            groups.setdefault(m["head"], {}).setdefault(m["proj"], {})[int(m["e"])] = value
    for head, projs in groups.items():

        def stack(names: tuple[str, str], projs=projs) -> np.ndarray:
            part = next(projs[n] for n in names if n in projs)
            return np.stack([part[e] for e in range(len(part))])

        out[f"{head}.gate_up_proj"] = np.concatenate([stack(_GATE), stack(_UP)], axis=1)
        out[f"{head}.down_proj"] = stack(_DOWN)
    for old, new in renames.items():
        out = {name.replace(old, new): value for name, value in out.items()}
    (dst / "model.safetensors").unlink()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def edited(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` with config.json keys changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def synthetic_mixtral(out: Path, tokenizer_dir: Path, *, hidden: int, ff: int, n_expert: int,
                       n_layer: int) -> int:  # fmt: skip
    """A random per-expert Mixtral checkpoint, one shard per layer (no torch: it is large)."""
    from safetensors.numpy import save_file

    out.mkdir()
    vocab = json.loads((tokenizer_dir / "vocab_size.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    for layer in range(n_layer):
        p = f"model.layers.{layer}."
        tensors = {p + "input_layernorm.weight": np.ones(hidden, np.float32),
                   p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
                   p + "block_sparse_moe.gate.weight": rand(n_expert, hidden)}  # fmt: skip
        for proj, rows in (("q", hidden), ("k", hidden // 4), ("v", hidden // 4), ("o", hidden)):
            tensors[p + f"self_attn.{proj}_proj.weight"] = rand(rows, hidden)
        for e in range(n_expert):
            for w, shape in (("w1", (ff, hidden)), ("w3", (ff, hidden)), ("w2", (hidden, ff))):
                tensors[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = rand(*shape)
        save_file(tensors, out / f"model-{layer:05d}.safetensors")
    head = {"model.embed_tokens.weight": rand(vocab, hidden), "lm_head.weight": rand(vocab, hidden),
            "model.norm.weight": np.ones(hidden, np.float32)}  # fmt: skip
    save_file(head, out / "model-head.safetensors")
    config = dict(architectures=["MixtralForCausalLM"], model_type="mixtral", hidden_size=hidden,
                  intermediate_size=ff, num_hidden_layers=n_layer, num_attention_heads=8,
                  num_key_value_heads=2, num_local_experts=n_expert, num_experts_per_tok=2,
                  vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5)  # fmt: skip
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return sum(f.stat().st_size for f in out.glob("*.safetensors"))
