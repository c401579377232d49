"""nomic-bert encoders (NomicBertModel: nomic-embed-text v1/v1.5) -> llama.cpp ``nomic-bert``.

BERT's post-norm blocks with NEOX rotary position embeddings instead of a position table, a
fused ``Wqkv`` projection, a SwiGLU feed-forward (``fc11`` the up projection, ``fc12`` the
gated one: ``fc2(fc11(x) * silu(fc12(x)))``) and no biases. Two layouts are read: the hub's
(nomic's own code: ``encoder.layers.N.attn.Wqkv``, config ``n_embd``/``n_inner``/...) and the
one transformers' native ``NomicBertModel`` saves (``layers.N.self_attn.q_proj``, config
``hidden_size``/...), whose tensors are renamed to the hub's names gguf-py maps.

The MoE variant (nomic-embed-text v2) and layouts llama.cpp's graph does not compute (biases,
pre-norm, interleaved or partial rotary) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import gguf

from converters.archs.base import rope_parameters
from converters.archs.bert import BertConverter
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError

#: transformers-native tensor names -> the hub layout's names (gguf-py maps the latter)
_NATIVE_NAMES = (
    (r"^layers\.(\d+)\.self_attn\.o_proj\.", r"encoder.layers.\1.attn.out_proj."),
    (r"^layers\.(\d+)\.self_attn\.([qkv])_proj\.", r"encoder.layers.\1.attn.\2_proj."),
    (r"^layers\.(\d+)\.mlp\.up_proj\.", r"encoder.layers.\1.mlp.fc11."),
    (r"^layers\.(\d+)\.mlp\.gate_proj\.", r"encoder.layers.\1.mlp.fc12."),
    (r"^layers\.(\d+)\.mlp\.down_proj\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.post_attention_layernorm\.", r"encoder.layers.\1.norm1."),
    (r"^layers\.(\d+)\.post_mlp_layernorm\.", r"encoder.layers.\1.norm2."),
    (r"^embeddings\.LayerNorm\.", r"emb_ln."),
)
#: separate q/k/v of the native layout: gguf-py knows them under these names
_QKV_NAMES = {"q": "attn_q", "k": "attn_k", "v": "attn_v"}


class NomicBertConverter(BertConverter):
    hf_architectures = ("NomicBertModel",)
    gguf_arch = gguf.MODEL_ARCH.NOMIC_BERT
    default_pooling = gguf.PoolingType.MEAN
    prefixes = ("bert.", "model.")
    config_aliases = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "n_inner",
        "max_position_embeddings": "n_positions",
        "layer_norm_eps": "layer_norm_epsilon",
    }

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        cfg = self.cfg
        refused = {
            "moe_every_n_layers": bool(cfg.get("moe_every_n_layers")),
            "prenorm": bool(cfg.get("prenorm")),
            "qkv_proj_bias": bool(cfg.get("qkv_proj_bias")),
            "mlp_fc1_bias": bool(cfg.get("mlp_fc1_bias")),
            "mlp_fc2_bias": bool(cfg.get("mlp_fc2_bias")),
            "rotary_emb_interleaved": bool(cfg.get("rotary_emb_interleaved")),
            "rotary_emb_scale_base": cfg.get("rotary_emb_scale_base") is not None,
            "rotary_emb_fraction": float(cfg.get("rotary_emb_fraction", 1.0)) != 1.0,
        }
        bad = [k for k, v in refused.items() if v]
        if bad:
            raise ConversionError(f"nomic-bert with {', '.join(bad)} is not supported by llama.cpp")

    def check_activation(self, key: str, default: str, allowed: Iterable[str]) -> None:
        # BertConverter checks hidden_act for GELU; nomic-bert's feed-forward is SwiGLU
        act = str(self.cfg.get("activation_function") or self.cfg.get("hidden_act") or "swiglu")
        if act not in ("swiglu", "silu"):
            raise ConversionError(f"nomic-bert activation {act!r} is not supported (SwiGLU only)")

    @property
    def position_offset(self) -> int:
        return 0

    def gguf_name(self, hf_name: str) -> str:
        name = self._strip(hf_name)
        for pattern, repl in _NATIVE_NAMES:
            name = re.sub(pattern, repl, name)
        m = re.match(r"^encoder\.layers\.(\d+)\.attn\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            return f"blk.{m[1]}.{_QKV_NAMES[m[2]]}.{m[3]}"
        return super().gguf_name(name)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        n_ctx = int(self.require("max_position_embeddings"))
        if cfg.get("max_trained_positions"):
            # v1/v1.5 declare 8192 positions but were trained on 2048
            n_ctx = min(n_ctx, int(cfg["max_trained_positions"]))
        w.add_context_length(n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(self.require("intermediate_size")))
        w.add_head_count(self.n_head)
        w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
        theta = cfg.get("rotary_emb_base") or rope_parameters(cfg).get("rope_theta") or 1000.0
        w.add_rope_freq_base(float(theta))
        w.add_rope_dimension_count(self.head_dim)
        w.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
        self.add_pooling_metadata(w)
