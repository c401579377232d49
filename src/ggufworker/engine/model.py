"""A loaded GGUF model: weights, vocabulary, metadata, and the context it runs in.

Tokenization in llama.cpp is thread-safe (llama.h, "Tokenization"), so these helpers may be
called from any thread while the scheduler thread decodes.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ggufworker.engine._native import ensure_backend, llama_cpp
from ggufworker.engine.devices import SPLIT_MODES, Device, SplitMode, check_placement, gpu_devices
from ggufworker.engine.threads import available_cpus
from ggufworker.engine.types import ModelInfo
from ggufworker.errors import InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)

_META_BUF = 64 * 1024


#: KV cache element types (llama-server's --cache-type-k/-v names) -> ggml_type
KV_CACHE_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "bf16": 30,  # GGML_TYPE_BF16 in ggml.h; llama-cpp-python binds no name for it
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q5_1": llama_cpp.GGML_TYPE_Q5_1,
    "q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL,
}


def check_cache_types(type_k: str, type_v: str, *, flash_attn: bool | None) -> None:
    """Refuse KV cache types llama.cpp does not take, before anything loads.

    Raises:
        InvalidRequestError: an unknown type, or a quantized V cache with flash attention
            off (llama.cpp's other attention path reads V unquantized).
    """
    for param, kind in (("cache_type_k", type_k), ("cache_type_v", type_v)):
        if kind not in KV_CACHE_TYPES:
            raise InvalidRequestError(
                f"{param} must be one of {', '.join(KV_CACHE_TYPES)}, not {kind!r}", param=param
            )
    if type_v not in ("f32", "f16", "bf16") and flash_attn is False:
        raise InvalidRequestError(
            f"a {type_v} V cache needs flash attention (turn it on or leave it auto)",
            param="cache_type_v",
        )


@dataclass(frozen=True)
class ContextOptions:
    """Settings of the one llama_context the scheduler owns."""

    n_ctx: int = 4096
    n_parallel: int = 4
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool | None = None
    embedding: bool = False
    #: sequence ids after the slots for embedding/rerank inputs decoded together (embedding only)
    n_embed_seqs: int = 0
    kv_unified: bool = True
    swa_full: bool = True
    # KV cache element types (KV_CACHE_TYPES); a quantized V cache needs flash attention
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    # backend sampling (engine/backend_sampling.py): the context is told to expect at most one
    # output row per sequence in a step (what the scheduler makes), and llama.cpp sizes each
    # sequence's sampler graph for one row
    backend_sampling: bool = False
    #: most output rows one sequence has in a step: 1, or 1 + the draft tokens speculation
    #: may verify (engine/speculation.py)
    rows_per_seq: int = 1


class Model:
    """Owns a ``llama_model`` and exposes its vocabulary and metadata."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_gpu_layers: int | None = None,
        use_mmap: bool = True,
        repack: bool = True,
        split_mode: SplitMode | None = None,
        main_gpu: int | None = None,
        tensor_split: Sequence[float] | None = None,
        rpc_servers: Sequence[str] = (),
        vocab_only: bool = False,
    ) -> None:
        ensure_backend()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = vocab_only
        # llama_supports_gpu_offload() is also true for a CPU-only build with the RPC backend,
        # so offload follows the devices that are there: local GPUs, or RPC workers asked for.
        local_gpus = gpu_devices()
        devices = None
        placement_devices = local_gpus
        if rpc_servers:
            from ggufworker.engine import rpc

            remote = rpc.remote_devices(rpc_servers)
            local = rpc.local_offload_devices()
            # RPC devices first (llama.cpp's own order: fewer transfers), then local GPUs
            devices = rpc.device_array([*remote, *local])
            names = rpc.device_names([*remote, *local])
            placement_devices = [Device(i, n, n, "gpu", 0, 0) for i, n in enumerate(names)]
            params.devices = ctypes.cast(devices, ctypes.c_void_p)
        gpu = bool(placement_devices)
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu else 0
        params.n_gpu_layers = n_gpu_layers
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap else 0
        # "Extra buffer types" repack weights for faster CPU matmuls (see docs/ENGINE.md).
        params.use_extra_bufts = repack
        # Several GPUs (see engine/devices.py); None leaves llama.cpp's default in place.
        check_placement(
            split_mode=split_mode,
            main_gpu=main_gpu,
            tensor_split=tensor_split,
            gpus=placement_devices,
        )
        if split_mode is not None:
            params.split_mode = SPLIT_MODES[split_mode]
        if main_gpu is not None:
            params.main_gpu = main_gpu
        shares = None
        if tensor_split is not None:  # a float[llama_max_devices()] array, zeros past the end
            shares = (ctypes.c_float * int(llama_cpp.llama_max_devices()))(*tensor_split)
            params.tensor_split = shares
        ptr = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        del shares, devices  # llama.cpp copied the split and the device list during the load
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load {self.path} (see log for the reason)")
        self.ptr = ptr
        self.gpu_layers = n_gpu_layers if gpu else 0
        offloaded = gpu and n_gpu_layers != 0
        # "rpc": layers on RPC workers (decoding waits on the network, not a local GPU)
        self.backend = ("rpc" if rpc_servers else "gpu") if offloaded else "cpu"
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._eog: tuple[int, ...] | None = None
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.n_swa = int(llama_cpp.llama_model_n_swa(ptr))
        # How a sequence's memory grows: a KV row per token ("kv"), a fixed-size state
        # ("recurrent": Mamba, RWKV) or both ("hybrid": Jamba, Granite-4 H, Falcon-H1, LFM2).
        # A state cannot be cut back to an arbitrary position (see docs/ENGINE.md).
        if llama_cpp.llama_model_is_recurrent(ptr):
            self.memory = "recurrent"
        elif llama_cpp.llama_model_is_hybrid(ptr):
            self.memory = "hybrid"
        else:
            self.memory = "kv"
        self.metadata = self._read_metadata()
        # Piece cache: llama_token_to_piece per token is a ctypes call; generated text is
        # assembled from pieces every step, so cache them (vocab is immutable).
        self._pieces: dict[int, bytes] = {}

    # --- metadata ----------------------------------------------------------------------------

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(_META_BUF)
        for i in range(llama_cpp.llama_model_meta_count(self.ptr)):
            n = llama_cpp.llama_model_meta_key_by_index(self.ptr, i, buf, _META_BUF)
            if n < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            n = llama_cpp.llama_model_meta_val_str_by_index(self.ptr, i, buf, _META_BUF)
            if n < 0:
                continue
            if n >= _META_BUF:  # value truncated (long chat templates): ask again with room
                big = ctypes.create_string_buffer(n + 1)
                llama_cpp.llama_model_meta_val_str_by_index(self.ptr, i, big, n + 1)
                out[key] = big.value.decode("utf-8", errors="replace")
            else:
                out[key] = buf.value.decode("utf-8", errors="replace")
        return out

    @property
    def chat_template(self) -> str | None:
        """The GGUF's default ``tokenizer.chat_template``, or None."""
        tmpl = llama_cpp.llama_model_chat_template(self.ptr, None)
        if tmpl:
            return tmpl.decode("utf-8", errors="replace")
        return self.metadata.get("tokenizer.chat_template")

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "unknown")

    def eog_ids(self) -> tuple[int, ...]:
        """All token ids llama.cpp treats as end of generation.

        llama.cpp has no call that lists them, so this asks once per vocabulary entry (a second
        or so for a 128K vocabulary); the answer is computed once per model and kept.
        """
        if self._eog is None:
            is_eog = llama_cpp.llama_vocab_is_eog
            self._eog = tuple(t for t in range(self.n_vocab) if is_eog(self.vocab, t))
        return self._eog

    def info(self, *, name: str, n_ctx: int, n_parallel: int) -> ModelInfo:
        """Describe the model as :class:`ModelInfo`."""
        ftype_buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.ptr, ftype_buf, 256)
        desc = ftype_buf.value.decode("utf-8", errors="replace")
        # llama_model_desc is "<arch> <size> <ftype>"; the quantization is the tail.
        quant = desc.split(" ", 2)[-1] if desc.count(" ") >= 2 else desc
        eog = self.eog_ids()
        return ModelInfo(
            path=str(self.path),
            name=name,
            architecture=self.architecture,
            n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(self.ptr)),
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_vocab=self.n_vocab,
            n_embd=int(llama_cpp.llama_model_n_embd(self.ptr)),
            n_params=int(llama_cpp.llama_model_n_params(self.ptr)),
            size_bytes=int(llama_cpp.llama_model_size(self.ptr)),
            quantization=quant,
            chat_template=self.chat_template,
            bos_token=self.token_text(self.bos) if self.bos >= 0 else None,
            eos_token=self.token_text(self.eos) if self.eos >= 0 else None,
            eos_token_ids=eog,
            gpu_layers=self.gpu_layers,
            backend=self.backend,
            metadata={k: v for k, v in self.metadata.items() if k != "tokenizer.chat_template"},
            memory=self.memory,
        )

    # --- vocabulary --------------------------------------------------------------------------

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token, special tokens rendered (e.g. ``<|im_end|>``)."""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Tokenize text; never returns BOS twice when the text already starts with it."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, cap, add_special, parse_special
        )
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, cap, add_special, parse_special
            )
            if n < 0:
                raise InvalidRequestError("text could not be tokenized", param="prompt")
        ids = list(buf[:n])
        # A chat template that renders BOS itself plus the tokenizer's own BOS gives two
        # (llama.cpp warns "double BOS"); keep one.
        if len(ids) >= 2 and ids[0] == self.bos and ids[1] == self.bos and self.bos >= 0:
            ids = ids[1:]
        return ids

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token renders to (control tokens empty unless ``special``)."""
        key = token if not special else -token - 2
        cached = self._pieces.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        out = buf.raw[: max(n, 0)]
        self._pieces[key] = out
        return out

    def detokenize(self, ids: Sequence[int], *, special: bool = False) -> str:
        """Token ids back to text (llama_detokenize: leading-space rules of the vocab).

        Raises:
            InvalidRequestError: an id outside the vocabulary (llama.cpp would abort the
                process on it: an uncaught std::out_of_range).
        """
        if any(not 0 <= t < self.n_vocab for t in ids):
            raise InvalidRequestError(f"token ids must be in 0..{self.n_vocab - 1}", param="tokens")
        n_ids = len(ids)
        arr = (llama_cpp.llama_token * max(n_ids, 1))(*ids)
        cap = max(64, n_ids * 8)
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(self.vocab, arr, n_ids, buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = llama_cpp.llama_detokenize(self.vocab, arr, n_ids, buf, cap, False, special)
        return buf.raw[:n].decode("utf-8", errors="replace")

    # --- context -----------------------------------------------------------------------------

    def new_context(self, opts: ContextOptions) -> llama_cpp.llama_context_p:
        """Create the llama_context (n_parallel sequences in one KV cache)."""
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = opts.n_parallel + opts.n_embed_seqs
        # n_ctx is what one sequence may use: one shared pool of that size, or (not unified)
        # one stream of that size per sequence (engine/kv_layout.py)
        params.n_ctx = opts.n_ctx if opts.kv_unified else opts.n_ctx * params.n_seq_max
        params.n_batch = opts.n_batch
        params.n_ubatch = opts.n_batch
        # Extra sequence ids for embedding jobs so they never evict a slot's cache. For
        # recurrent and hybrid models this is also the number of states llama.cpp allocates
        # (one per sequence id); the attention part of a hybrid shares the unified KV cache.
        threads = opts.n_threads or available_cpus()
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = {
            None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
            True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[opts.flash_attn]
        params.kv_unified = opts.kv_unified
        params.swa_full = opts.swa_full
        params.type_k = KV_CACHE_TYPES[opts.cache_type_k]
        params.type_v = KV_CACHE_TYPES[opts.cache_type_v]
        params.no_perf = True
        if opts.backend_sampling:
            params.n_outputs_max_per_seq = opts.rows_per_seq
        if opts.embedding:
            pooling = self.metadata.get(f"{self.architecture}.pooling_type")
            params.pooling_type = int(pooling) if pooling else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        ctx = llama_cpp.llama_init_from_model(self.ptr, params)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context (n_ctx={opts.n_ctx}, "
                f"n_parallel={opts.n_parallel}) for {self.path}"
            )
        return ctx

    def close(self) -> None:
        """Free the weights (the context must be freed first)."""
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None
