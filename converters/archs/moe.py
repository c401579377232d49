"""What the Mixture-of-Experts families share: routing metadata and the expert tensor layouts.

llama.cpp stores the experts of a layer as three 3-D tensors, ``ffn_{gate,up,down}_exps``
(numpy shapes ``(E, F, H)``, ``(E, F, H)`` and ``(E, H, F)``), and the router as
``ffn_gate_inp``. Checkpoints come in two layouts, both accepted:

* per expert, ``...experts.{e}.{w1,w3,w2}.weight`` or ``...experts.{e}.{gate,up,down}_proj.weight``
  (what transformers' ``save_pretrained`` writes by default): the base converter's
  :meth:`~converters.archs.base.ArchConverter.source_tensors` stacks each group lazily;
* fused, ``...experts.gate_up_proj`` ``(E, 2F, H)`` (gate rows first) and ``...experts.down_proj``
  ``(E, H, F)``, as transformers 5 holds them in memory: split here, lazily.

Routing (gating function, weight normalisation, scale, groups) is written from the config. Where
a llama.cpp graph hard-codes a routing choice, a config that asks for another one is refused
rather than converted into a model that computes something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import gguf
import numpy as np

from converters.archs.base import ArchConverter, StackedRef, TensorPlan, derived_plan
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

MT = gguf.MODEL_TENSOR

#: projection name in a checkpoint -> llama.cpp expert tensor
EXPERT_PROJECTIONS: dict[str, gguf.MODEL_TENSOR] = {
    "w1": MT.FFN_GATE_EXP, "gate_proj": MT.FFN_GATE_EXP,
    "w3": MT.FFN_UP_EXP, "up_proj": MT.FFN_UP_EXP,
    "w2": MT.FFN_DOWN_EXP, "down_proj": MT.FFN_DOWN_EXP,
}  # fmt: skip

#: ``model.layers.<bid>.<...>.experts.<proj>[.weight|.bias]`` once experts are stacked
_EXPERT_TENSOR = re.compile(
    r"^(?:.*\.)?layers\.(?P<bid>\d+)\..*\bexperts\.(?P<proj>[A-Za-z0-9_]+?)(?:\.(?P<kind>weight|bias))?$"
)

#: GGUF tensors that decide routing: kept float32 so expert choices do not flip on rounding
ROUTER_TENSORS = ("ffn_gate_inp.weight", "ffn_gate_inp.bias", "ffn_gate_inp_shexp.weight")

Ref = TensorRef | StackedRef


def block_name(kind: gguf.MODEL_TENSOR, bid: int, suffix: str = "weight") -> str:
    """The GGUF name of one block tensor, e.g. ``blk.3.ffn_gate_exps.weight``."""
    return f"{gguf.TENSOR_NAMES[kind].format(bid=bid)}.{suffix}"


def flat(ref: Ref, name: str) -> TensorPlan:
    """A ``(1, n)`` or ``(n, 1)`` checkpoint vector written 1-D, as llama.cpp declares it."""
    n = int(np.prod(ref.shape))
    return TensorPlan(name, (n,), ref.dtype, lambda: ref.load().reshape(n), True)


class MoEConverter(ArchConverter):
    """Base for MoE families: expert counts, routing keys, both expert layouts."""

    expert_count_keys: ClassVar[tuple[str, ...]] = (
        "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
    )  # fmt: skip
    expert_used_keys: ClassVar[tuple[str, ...]] = ("num_experts_per_tok", "moe_k")

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.n_expert = int(self.first_of(self.expert_count_keys))
        self.n_expert_used = int(self.first_of(self.expert_used_keys))
        if not 0 < self.n_expert_used <= self.n_expert:
            raise ConversionError(
                f"config routes {self.n_expert_used} of {self.n_expert} experts per token"
            )

    def first_of(self, keys: Sequence[str]) -> Any:
        """The first of ``keys`` the config sets.

        Raises:
            ConversionError: none is set.
        """
        for key in keys:
            if self.cfg.get(key) is not None:
                return self.cfg[key]
        raise ConversionError(f"config.json sets none of {list(keys)}, which this MoE needs")

    def refuse_unless(self, key: str, wanted: Any, default: Any, why: str) -> None:
        """Refuse a config whose ``key`` differs from what llama.cpp's graph hard-codes."""
        value = self.cfg.get(key, default)
        if value != wanted:
            raise ConversionError(f"{key}={value!r} is not supported: {why}")

    # --- metadata ---------------------------------------------------------------------------

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        self.add_routing_metadata(w)
        if str(self.rope.get("rope_type", "")).lower() == "yarn":
            # YaRN ramp bounds (GPT-OSS, DeepSeek); llama.cpp assumes 32 and 1 when absent
            if self.rope.get("beta_fast") is not None:
                w.add_rope_scaling_yarn_beta_fast(float(self.rope["beta_fast"]))
            if self.rope.get("beta_slow") is not None:
                w.add_rope_scaling_yarn_beta_slow(float(self.rope["beta_slow"]))

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        """Family-specific routing keys (gating function, normalisation, scale, sizes)."""

    # --- tensors ----------------------------------------------------------------------------

    @staticmethod
    def keeps_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
        return ArchConverter.keeps_f32(gguf_name, shape) or gguf_name.endswith(ROUTER_TENSORS)

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        m = _EXPERT_TENSOR.match(hf_name)
        if m is None:
            yield from super().tensor(hf_name, ref)
            return
        yield from self.expert_tensor(int(m["bid"]), m["proj"], m["kind"] or "weight", ref)

    def expert_tensor(self, bid: int, proj: str, kind: str, ref: Ref) -> Iterable[TensorPlan]:
        """Plan the stacked or fused expert tensor ``proj`` of block ``bid``."""
        if ref.shape[0] != self.n_expert:
            raise ConversionError(
                f"block {bid} has {ref.shape[0]} experts for {proj}, config says {self.n_expert}"
            )
        if proj == "gate_up_proj":
            yield from self.split_gate_up(bid, ref)
        elif proj in EXPERT_PROJECTIONS:
            yield TensorPlan(block_name(EXPERT_PROJECTIONS[proj], bid, kind), ref.shape,
                             ref.dtype, ref.load)  # fmt: skip
        else:
            raise ConversionError(f"block {bid}: unknown expert tensor {proj!r}")

    def split_gate_up(self, bid: int, ref: Ref) -> Iterable[TensorPlan]:
        """Fused ``(E, 2F, H)`` gate-then-up rows -> ``ffn_gate_exps`` and ``ffn_up_exps``."""
        n_expert, rows, cols = ref.shape
        half = rows // 2
        shape = (n_expert, half, cols)
        yield derived_plan(block_name(MT.FFN_GATE_EXP, bid), shape, ref, lambda a: a[:, :half])
        yield derived_plan(block_name(MT.FFN_UP_EXP, bid), shape, ref, lambda a: a[:, half:])
