"""Tiny embedding and reranking checkpoints, their GGUF conversions and their references.

For server-side tests as much as converter tests::

    gguf_path, hf_dir = encoder_gguf("bert", "f32", cache_dir)
    want = reference_embeddings("bert", hf_dir, ["some text"])          # (n_texts, dim)
    scores = reference_scores("xlm-roberta-reranker", hf_dir, "q", ["d1", "d2"])

Every family is a seeded random model (hidden 64, 2-3 layers) built with transformers, with a
tokenizer trained here by the ``tokenizers`` library (WordPiece for BERT, Unigram for XLM-R,
byte-level BPE for the others) and, where the family ships them, hand-written
sentence-transformers files (``modules.json``, ``1_Pooling/config.json``, ``2_Dense``...).
Checkpoints and GGUFs are cached under ``cache_dir`` in a folder keyed by a hash of this file
and the converter's sources, so a changed converter or builder never reuses a stale file.

References are computed by sentence-transformers from the checkpoint folder (embeddings:
``SentenceTransformer``; the XLM-R reranker: ``CrossEncoder``'s raw logit) and by transformers
(Qwen3-Reranker: P("yes") against "no" at the last position of the rerank prompt), which is
what llama.cpp's RANK pooling gives for each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .builders import randomise
from .encoder_tokenizers import (
    bpe_tokenizer,
    unigram_tokenizer,
    wordpiece_tokenizer,
    write_sentence_transformers,
)

REPO = Path(__file__).resolve().parents[2]

FAMILIES = (
    "bert",
    "xlm-roberta",
    "xlm-roberta-reranker",
    "modernbert",
    "nomic-bert",
    "gemma-embedding",
    "qwen3-embedding",
    "qwen3-reranker",
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Embeddings turn sentences into similar vectors for search.",
    "Cats and dogs play in the park while the weather is sunny today.",
]
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models learn patterns from data.",
    "The weather today is sunny with a light wind.",
    "France is a country; its capital city is Paris on the Seine.",
]

_SOURCES = (
    Path(__file__),
    Path(__file__).with_name("encoder_tokenizers.py"),
    *sorted((REPO / "converters").rglob("*.py")),
)


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in _SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# --- models ---------------------------------------------------------------------------------

_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _save(model: Any, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)


def _build_bert(out: Path) -> None:
    import transformers as tf

    n_vocab = wordpiece_tokenizer(out)
    cfg = tf.BertConfig(vocab_size=n_vocab, max_position_embeddings=96, type_vocab_size=2,
                        pad_token_id=0, **_SIZES)  # fmt: skip
    model = tf.BertModel(cfg, add_pooling_layer=True)
    randomise(model)
    _save(model, out)
    write_sentence_transformers(out, 64, "mean_tokens", normalize=True)


def _xlmr_config(n_vocab: int, **extra: Any) -> Any:
    import transformers as tf

    # RoBERTa positions start at padding_idx + 1 = 2: 130 rows hold 128 usable positions
    return tf.XLMRobertaConfig(vocab_size=n_vocab, max_position_embeddings=130, type_vocab_size=1,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2, **_SIZES,
                               **extra)  # fmt: skip


def _build_xlmr(out: Path) -> None:
    import transformers as tf

    model = tf.XLMRobertaModel(_xlmr_config(unigram_tokenizer(out)), add_pooling_layer=True)
    randomise(model)
    _save(model, out)
    write_sentence_transformers(out, 64, "cls_token", normalize=True)


def _fit_scores(features: Any, target: Sequence[float]) -> Any:
    """The smallest weight vector w with ``features @ w == target`` (least squares).

    A random reranker scores every document about the same (its features hardly depend on
    the document), so neither the order nor a wrong head would show; fitting its last
    projection to well-separated target scores for :data:`QUERY` / :data:`DOCUMENTS` makes the
    reference scores distinct while the reranker stays what transformers computes.
    """
    import torch

    return torch.linalg.pinv(features.double()) @ torch.tensor(target, dtype=torch.float64)


#: scores the tiny rerankers are fitted to give :data:`DOCUMENTS` (relevant ones first)
RERANK_TARGETS = (3.0, -2.0, -4.0, -1.0, 1.5)


def _build_xlmr_reranker(out: Path) -> None:
    import torch
    import transformers as tf

    tok_dir = out
    model = tf.XLMRobertaForSequenceClassification(_xlmr_config(unigram_tokenizer(tok_dir),
                                                                num_labels=1))  # fmt: skip
    randomise(model)
    model.eval()
    with torch.no_grad():
        rows = []
        for doc in DOCUMENTS:
            ids = torch.tensor([hf_token_ids(tok_dir, QUERY, doc)])
            cls = model.roberta(input_ids=ids).last_hidden_state[:, 0]
            rows.append(torch.tanh(model.classifier.dense(cls))[0])
        w = _fit_scores(torch.stack(rows), RERANK_TARGETS)
        model.classifier.out_proj.weight.copy_(w.float()[None, :])
        model.classifier.out_proj.bias.zero_()
    _save(model, out)


def _build_modernbert(out: Path) -> None:
    import transformers as tf

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    n_vocab = bpe_tokenizer(
        out, specials, ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]"),
        {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "mask_token": "[MASK]"},
    )  # fmt: skip
    # 3 layers: layer 0 global, 1 and 2 local with a window of 4 tokens each side (the test
    # texts are longer), so the sliding band and the two RoPE bases matter
    cfg = tf.ModernBertConfig(
        vocab_size=n_vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, global_attn_every_n_layers=3, local_attention=8,
        max_position_embeddings=128, pad_token_id=3, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2, norm_eps=1e-5,
    )  # fmt: skip
    model = tf.ModernBertModel(cfg)
    randomise(model)
    _save(model, out)
    write_sentence_transformers(out, 64, "mean_tokens", normalize=True)


def _build_nomic_bert(out: Path) -> None:
    """nomic-embed-text-v1.5's layout: the hub's tensor names (fused ``Wqkv``, ``fc11``/``fc12``
    /``fc2``, ``norm1``/``norm2``, ``emb_ln``) and config keys (``n_embd``...), built with
    transformers' native NomicBertModel and renamed the way transformers' own checkpoint
    conversion reads them back (the reference loads this folder with transformers)."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    n_vocab = wordpiece_tokenizer(out)
    cfg = tf.NomicBertConfig(vocab_size=n_vocab, max_position_embeddings=2048, type_vocab_size=2,
                             layer_norm_eps=1e-12, rope_parameters={"rope_type": "default",
                             "rope_theta": 1000.0}, **_SIZES)  # fmt: skip
    model = tf.NomicBertModel(cfg)
    randomise(model)
    native = model.state_dict()
    hub: dict[str, torch.Tensor] = {}
    renames = (("embeddings.LayerNorm", "emb_ln"), ("self_attn.o_proj", "attn.out_proj"),
               ("mlp.up_proj", "mlp.fc11"), ("mlp.gate_proj", "mlp.fc12"),
               ("mlp.down_proj", "mlp.fc2"), ("post_attention_layernorm", "norm1"),
               ("post_mlp_layernorm", "norm2"), ("self_attn.q_proj", "attn.Wqkv"))  # fmt: skip
    for name, tensor in native.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            tensor = torch.cat([native[name.replace(".q_proj.", f".{x}_proj.")] for x in "qkv"])
        if name.startswith("layers."):
            name = "encoder." + name
        for old, new in renames:
            name = name.replace(old, new)
        hub[name] = tensor.contiguous()
    save_file(hub, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        **cfg.to_dict(), "architectures": ["NomicBertModel"], "model_type": "nomic_bert",
        # the hub config's own keys (nomic's code reads these)
        "n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 128, "n_positions": 8192,
        "max_trained_positions": 2048, "layer_norm_epsilon": 1e-12, "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
        "activation_function": "swiglu", "prenorm": False, "causal": False,
        "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
    }  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_sentence_transformers(out, 64, "mean_tokens", normalize=True)


def _build_nomic_bert_native(out: Path) -> None:
    """NomicBertModel as transformers itself saves it (``layers.N.self_attn.q_proj``...)."""
    import transformers as tf

    n_vocab = wordpiece_tokenizer(out)
    cfg = tf.NomicBertConfig(vocab_size=n_vocab, max_position_embeddings=2048, type_vocab_size=2,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                             **_SIZES)  # fmt: skip
    model = tf.NomicBertModel(cfg)
    randomise(model)
    _save(model, out)
    write_sentence_transformers(out, 64, "mean_tokens", normalize=False)


def _build_gemma_embedding(out: Path) -> None:
    import torch
    import transformers as tf

    n_vocab = bpe_tokenizer(
        out, ["<pad>", "<eos>", "<bos>", "<unk>"], ("<bos> $A <eos>", "<bos> $A <eos> $B <eos>"),
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
         # the tokenizer.json as it is (Gemma's own class would build another vocabulary)
         "tokenizer_class": "PreTrainedTokenizerFast"},
    )  # fmt: skip
    cfg = tf.Gemma3TextConfig(
        vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, use_bidirectional_attention=True, max_position_embeddings=256,
        layer_types=["sliding_attention", "full_attention"], hidden_activation="gelu_pytorch_tanh",
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    cfg.architectures = ["Gemma3TextModel"]
    model = tf.Gemma3TextModel(cfg)
    randomise(model)
    _save(model, out)
    up = torch.nn.Linear(64, 192, bias=False)
    down = torch.nn.Linear(192, 64, bias=False)
    randomise(up)
    randomise(down)
    write_sentence_transformers(out, 64, "mean_tokens", normalize=True, dense=[up, down])


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _qwen_config(n_vocab: int) -> Any:
    import transformers as tf

    return tf.Qwen3Config(vocab_size=n_vocab, num_key_value_heads=2, head_dim=16,
                          max_position_embeddings=256, rms_norm_eps=1e-6,
                          tie_word_embeddings=True, **_SIZES)  # fmt: skip


def _build_qwen3_embedding(out: Path) -> None:
    import transformers as tf

    n_vocab = bpe_tokenizer(
        out, _QWEN_SPECIALS, ("$A <|endoftext|>", "$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1"),
        {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    )  # fmt: skip
    cfg = _qwen_config(n_vocab)
    cfg.architectures = ["Qwen3Model"]
    model = tf.Qwen3Model(cfg)
    randomise(model)
    _save(model, out)
    write_sentence_transformers(out, 64, "lasttoken", normalize=True)


def _build_qwen3_reranker(out: Path) -> None:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer

    n_vocab = bpe_tokenizer(out, _QWEN_SPECIALS, None,
                            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})  # fmt: skip
    cfg = _qwen_config(n_vocab)
    cfg.tie_word_embeddings = False
    model = tf.Qwen3ForCausalLM(cfg)
    randomise(model)
    model.eval()
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
    with torch.no_grad():
        rows = []
        for doc in DOCUMENTS:
            ids = torch.tensor([tok.encode(rerank_prompt(QUERY, doc)).ids])
            rows.append(model.model(input_ids=ids).last_hidden_state[0, -1])
        # log P(yes)/P(no) = h . (w_yes - w_no): fit that difference, keep the rows' mean
        w = _fit_scores(torch.stack(rows), RERANK_TARGETS).float()
        head = model.lm_head.weight
        mid = (head[yes] + head[no]) / 2
        head[yes] = mid + w / 2
        head[no] = mid - w / 2
    _save(model, out)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "bert": _build_bert,
    "xlm-roberta": _build_xlmr,
    "xlm-roberta-reranker": _build_xlmr_reranker,
    "modernbert": _build_modernbert,
    "nomic-bert": _build_nomic_bert,
    "nomic-bert-native": _build_nomic_bert_native,
    "gemma-embedding": _build_gemma_embedding,
    "qwen3-embedding": _build_qwen3_embedding,
    "qwen3-reranker": _build_qwen3_reranker,
}


def build_checkpoint(family: str, out: Path) -> Path:
    """Build the seeded tiny checkpoint of ``family`` into ``out`` (created)."""
    import torch

    torch.manual_seed(1234)
    out.mkdir(parents=True)
    _BUILDERS[family](out)
    return out


def encoder_gguf(family: str, outtype: str, cache_dir: Path) -> tuple[Path, Path]:
    """(GGUF path, checkpoint folder) of ``family`` converted by our converter at ``outtype``.

    Both are cached under ``cache_dir`` (built once per converter/builder version). A build
    goes to a folder of its own and is renamed into place, and conversions replace their file
    atomically, so test processes sharing the cache never see a partial checkpoint or file.
    """
    from converters.st2gguf import convert

    if family not in _BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(_BUILDERS)}")
    # the Qwen3-Reranker converter recognises the checkpoint by its folder name
    root = Path(cache_dir) / f"encoders-{_fingerprint()}" / family
    hf_dir = root / ("qwen3-reranker-tiny" if family == "qwen3-reranker" else "hf")
    if not (root / "built").is_file():
        if root.exists():  # left by an interrupted build
            shutil.rmtree(root, ignore_errors=True)
        tmp = root.with_name(f".{family}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_checkpoint(family, tmp / hf_dir.name)
        (tmp / "built").write_text("ok")
        try:
            tmp.rename(root)
        except OSError:  # another process finished first: use its build
            shutil.rmtree(tmp, ignore_errors=True)
    gguf_path = root / f"{family}.{outtype}.gguf"
    if not gguf_path.is_file():
        convert(hf_dir, gguf_path, outtype=outtype, force=True)
    return gguf_path, hf_dir


# --- references -----------------------------------------------------------------------------


def hf_token_ids(hf_dir: Path, text: str, pair: str | None = None) -> list[int]:
    """Ids the checkpoint's tokenizer.json gives ``text`` (or the pair), special tokens added."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    # real tokenizer.json files may pad every text to a fixed length (all-MiniLM-L6-v2: 128)
    tok.no_padding()
    return list(tok.encode(text, pair).ids)


def rerank_prompt(query: str, document: str) -> str:
    """The Qwen3-Reranker prompt (the model card's), as the GGUF's rerank template fills it."""
    from converters.archs.qwen_retrieval import RERANK_TEMPLATE

    return RERANK_TEMPLATE.replace("{query}", query).replace("{document}", document)


def _load(hf_dir: Path, cls_name: str) -> Any:
    import torch
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


_MODEL_CLASSES = {
    "bert": "BertModel",
    "xlm-roberta": "XLMRobertaModel",
    "modernbert": "ModernBertModel",
    "nomic-bert": "NomicBertModel",
    "nomic-bert-native": "NomicBertModel",
    "gemma-embedding": "Gemma3TextModel",
    "qwen3-embedding": "Qwen3Model",
}


def reference_embeddings(family: str, hf_dir: Path, texts: Sequence[str]) -> np.ndarray:
    """The sentence embedding of each text, (len(texts), dim), computed by sentence-transformers
    from the checkpoint folder (its modules.json: transformer, pooling, Dense, Normalize), one
    text per batch (no padding), in float32 with eager attention."""
    from sentence_transformers import SentenceTransformer

    if family not in _MODEL_CLASSES:
        raise KeyError(f"{family!r} is not an embedding family")
    model = SentenceTransformer(
        str(hf_dir), device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    out = model.encode(list(texts), batch_size=1, convert_to_numpy=True)
    return np.asarray(out, dtype=np.float64)


def reference_scores(family: str, hf_dir: Path, query: str, documents: Sequence[str]) -> np.ndarray:
    """Relevance of each document to ``query`` as the reranker computes it in transformers:
    the classifier logit (XLM-R), or P("yes") against "no" after the rerank prompt (Qwen3)."""
    import torch

    scores = []
    if family == "xlm-roberta-reranker":
        from sentence_transformers import CrossEncoder

        # the raw classifier logit (CrossEncoder would apply a sigmoid to one label)
        ce = CrossEncoder(str(hf_dir), device="cpu", activation_fn=torch.nn.Identity())
        pairs = [(query, doc) for doc in documents]
        scores = [float(x) for x in ce.predict(pairs, batch_size=1, convert_to_numpy=True)]
    elif family == "qwen3-reranker":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
        model = _load(hf_dir, "Qwen3ForCausalLM")
        for doc in documents:
            ids = torch.tensor([tok.encode(rerank_prompt(query, doc)).ids])
            with torch.no_grad():
                last = model(input_ids=ids).logits[0, -1]
            pair = torch.stack([last[yes], last[no]]).double()
            scores.append(float(torch.softmax(pair, 0)[0]))
    else:
        raise KeyError(f"{family!r} is not a reranker")
    return np.array(scores)
