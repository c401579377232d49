"""GPTBigCodeForCausalLM (StarCoder, SantaCoder) -> llama.cpp ``starcoder``.

GPT-2's block shape with ``nn.Linear`` weights (nothing transposed) and, by default, multi-query
attention: ``c_attn`` holds all query heads, then one key and one value head. Without
``multi_query`` it holds (q, k, v) per head, regrouped here into all q, all k, all v; llama.cpp's
own converter always writes one KV head, which is wrong for such checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import gguf

from converters.archs.base import TensorPlan, regroup_qkv
from converters.archs.gpt2 import GPT2Converter
from converters.checkpoint import Checkpoint, TensorRef


class GPTBigCodeConverter(GPT2Converter):
    hf_architectures = ("GPTBigCodeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.STARCODER
    default_activation = "gelu_pytorch_tanh"

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.multi_query = bool(self.cfg.get("multi_query", True))
        self.n_head_kv = 1 if self.multi_query else self.n_head

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if not self.multi_query and hf_name.endswith((".c_attn.weight", ".c_attn.bias")):
            fn = partial(regroup_qkv, n_head=self.n_head, n_head_kv=self.n_head,
                         head_dim=self.head_dim)  # fmt: skip
            yield self.passthrough(hf_name, ref, fn)
        else:
            yield self.passthrough(hf_name, ref)
