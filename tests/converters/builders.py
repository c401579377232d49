"""Build reference checkpoints: tiny seeded random models and real-weight exports.

transformers + torch are test-only dependencies: they build the checkpoints the converter
reads and compute the logits its output is compared with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from converters.bench import TOKENIZER_FILES

REPO = Path(__file__).resolve().parents[2]

TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip

LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
}  # fmt: skip

# Fixed training text for the tiny tokenizer (with multi-digit numbers, so that digit merges
# exist and pre-tokenizers that split digits differ from those that do not).
CORPUS = [
    "def convert(src, dst, *, outtype='auto', force=False):",
    "    return write_gguf(path, conv, plans, vocab, outtype, name=name)",
    "The output is written to a temporary file beside the target and renamed when complete.",
    "In 2024 there were 1000 models, 333 of them in 2023 and 12345 tokens in 100 files.",
    "Tensors are read from memory-mapped files and written one at a time, 64 MiB per chunk.",
    "for i in range(0, 4096, 256): total += rows[i] * 2 ** 10  # 1024 2048 8192",
    "Hello world! I've been told he's there; we'll see. 3.14159 2.71828 1,000,000",
    "class Checkpoint:\n    def __init__(self, directory):\n        self.dir = Path(directory)",
]

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3-mm", "phi3")


def _config(arch: str, vocab_size: int, overrides: dict | None = None):
    import transformers as tf

    base = {**TINY, "vocab_size": vocab_size}
    gemma = {**base, "head_dim": 16, "query_pre_attn_scalar": 16,
             "hidden_activation": "gelu_pytorch_tanh"}  # fmt: skip
    table = {
        # tied embeddings + Llama 3 RoPE scaling, like Llama 3.2 1B
        "llama": (tf.LlamaConfig, {**base, "tie_word_embeddings": True,
                                   "rope_parameters": LLAMA3_ROPE}),
        "mistral": (tf.MistralConfig, {**base, "tie_word_embeddings": False,
                                       "sliding_window": None}),
        "qwen2": (tf.Qwen2Config, {**base, "tie_word_embeddings": False}),
        "qwen3": (tf.Qwen3Config, {**base, "head_dim": 16, "tie_word_embeddings": True}),
        "gemma": (tf.GemmaConfig, gemma),
        "gemma2": (tf.Gemma2Config, {**gemma, "sliding_window": 8}),
        "gemma3": (tf.Gemma3TextConfig, {
            **gemma, "sliding_window": 8, "architectures": ["Gemma3ForCausalLM"],
            "layer_types": ["sliding_attention", "full_attention"],
        }),
        "phi3": (tf.Phi3Config, {**base, "tie_word_embeddings": False}),
        # Gemma 3 4B+ layout: a language model beside a (tiny) SigLIP vision tower
        "gemma3-mm": (tf.Gemma3Config, {
            "text_config": {**gemma, "sliding_window": 8,
                            "layer_types": ["sliding_attention", "full_attention"]},
            "vision_config": {"hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 1, "num_attention_heads": 2,
                              "image_size": 28, "patch_size": 14},
            "mm_tokens_per_image": 4, "image_token_index": 5, "boi_token_index": 6,
            "eoi_token_index": 7, "architectures": ["Gemma3ForConditionalGeneration"],
        }),
    }  # fmt: skip
    # Gemma 2/3 windows of 8 tokens are shorter than the test prompts, so sliding-window
    # attention and Gemma 3's per-layer pattern (layer 0 sliding, layer 1 global) matter.
    cls, kwargs = table[arch]
    return cls(**{**kwargs, **(overrides or {})})


def randomise(model: Any) -> None:
    """Perturb every weight in place: 1-D params (norms, biases) around their init (1 or 0),
    so that norm offsets and bias handling are exercised; matrices with a wider spread than
    the default init, so that outputs are far from uniform."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.2)
            else:
                param.normal_(0.0, 0.08)


def build_tiny(
    arch: str,
    out: Path,
    tokenizer_dir: Path,
    *,
    dtype: str = "float32",
    overrides: dict | None = None,
    max_shard_size: str | None = None,
    config: Any = None,
) -> Path:
    """Save a seeded random ``arch`` model (every weight, norms included, randomised).

    ``config`` (a transformers config object) replaces the built-in table entry for ``arch``;
    families outside the table pass their own (``vocab_size`` taken from ``tokenizer_dir``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    sizes = tokenizer_dir / "vocab_size.json"
    vocab_size = json.loads(sizes.read_text())["vocab_size"] if sizes.is_file() else 0
    torch.manual_seed(1234)
    if config is None:
        config = _config(arch, vocab_size, overrides)
    elif vocab_size:
        config.vocab_size = vocab_size
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomise(model)
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def train_tiny_tokenizer(out: Path, vocab_size: int = 384) -> Path:
    """A byte-level BPE tokenizer.json trained on this repo's docs (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "vocab_size.json").write_text(json.dumps({"vocab_size": tok.get_vocab_size()}))
    return out


def export_gguf_to_safetensors(gguf_path: Path, out: Path) -> Path:
    """Load a real GGUF with transformers (dequantized to f32) and save it as SafeTensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "done").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "done").write_text("ok")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
