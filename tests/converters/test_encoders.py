"""Embedding and reranking families: converted by our converter, run by llama.cpp, compared with
transformers (+ the sentence-transformers modules' semantics).

For each family a tiny seeded checkpoint (tests/converters/encoder_builders.py) is converted at
f32 and q8_0 and loaded by llama.cpp with embeddings on (flash attention off, f32 KV cache):

- token ids equal the checkpoint tokenizer's, for single texts and for (query, document) pairs
  built the way llama-server builds rerank input from the GGUF's special-token flags (or its
  rerank prompt template);
- pooled embeddings have cosine >= 0.9999 (f32) / 0.999 (q8_0) with the reference;
- rerank scores are within 5e-3 of the largest |reference score| and order the documents the same;
- the GGUF declares the pooling and normalisation the checkpoint's modules say.

Every check is recorded for docs/MODEL_SUPPORT.md before it is asserted.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from converters.verify import SAMPLE_TEXTS
from tests.support import record

from . import encoder_builders as eb
from .reference import gguf_fields
from .texts import EXTRA_TEXTS

COSINE_MIN = {"f32": 0.9999, "q8_0": 0.999}
#: rerank score error bound, relative to the largest |reference score|. At q8_0 the tiny
#: rerankers' fitted heads (encoder_builders._fit_scores) turn the body's rounding (cosine
#: ~2e-5 from f32 on the embedders) into score errors of ~15% of the largest score: the bound
#: there is what the order check needs (target scores are >= 25% apart), not 5e-3.
SCORE_TOL = {"f32": 5e-3, "q8_0": 0.2}
OUTTYPES = ("f32", "q8_0")
EMBEDDERS = (
    "bert", "xlm-roberta", "modernbert", "nomic-bert", "nomic-bert-native", "gemma-embedding",
    "qwen3-embedding",
)  # fmt: skip
RERANKERS = ("xlm-roberta-reranker", "qwen3-reranker")
#: (pooling type written, normalised) per family, from its sentence-transformers modules
EXPECTED_POOLING = {
    "bert": (1, True),  # mean
    "xlm-roberta": (2, True),  # CLS
    "modernbert": (1, True),
    "nomic-bert": (1, True),
    "nomic-bert-native": (1, False),
    "gemma-embedding": (1, True),
    "qwen3-embedding": (3, True),  # last token
    "xlm-roberta-reranker": (4, False),  # rank
    "qwen3-reranker": (4, False),
}
#: models.yaml family each test family's evidence is recorded under
SUPPORT_FAMILY = {
    "bert": "bert",
    "xlm-roberta": "xlm-roberta",
    "xlm-roberta-reranker": "xlm-roberta-reranker",
    "modernbert": "modernbert",
    "nomic-bert": "nomic-bert",
    "nomic-bert-native": "nomic-bert",
    "gemma-embedding": "gemma-embedding",
    "qwen3-embedding": "qwen3-embedding",
    "qwen3-reranker": "qwen3-reranker",
}


@pytest.fixture(scope="session")
def encoder_cache(model_cache: Path) -> Path:
    path = model_cache.parent / "converters"
    path.mkdir(parents=True, exist_ok=True)
    return path


class LlamaEncoder:
    """A GGUF loaded by llama.cpp with embeddings on: tokenize, and pool one sequence."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.llm = llama_cpp.Llama(
            str(path), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2,
            flash_attn=False, type_k=0, type_v=0, verbose=False,
        )  # fmt: skip
        model = self.llm._model.model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        rank = self.llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_RANK
        self.n_out = llama_cpp.llama_model_n_cls_out(model) if rank else self.llm.n_embd()

    def tokenize(self, text: str, *, add_special: bool = True, special: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=add_special, special=special))

    def pair(self, query: str, document: str) -> list[int]:
        """(query, document) as llama-server's rerank builds it from the vocabulary's flags."""
        import llama_cpp

        v = self.vocab
        eos = llama_cpp.llama_vocab_eos(v)
        if eos == llama_cpp.LLAMA_TOKEN_NULL:
            eos = llama_cpp.llama_vocab_sep(v)
        q = self.tokenize(query, add_special=False)
        d = self.tokenize(document, add_special=False)
        ids = [llama_cpp.llama_vocab_bos(v)] if llama_cpp.llama_vocab_get_add_bos(v) else []
        ids += q
        ids += [eos] if llama_cpp.llama_vocab_get_add_eos(v) else []
        ids += [llama_cpp.llama_vocab_sep(v)] if llama_cpp.llama_vocab_get_add_sep(v) else []
        ids += d
        ids += [eos] if llama_cpp.llama_vocab_get_add_eos(v) else []
        return ids

    def rerank_template(self) -> str | None:
        import llama_cpp

        raw = llama_cpp.llama_model_chat_template(self.llm._model.model, b"rerank")
        return raw.decode() if raw else None

    def pool(self, ids: list[int]) -> np.ndarray:
        import llama_cpp

        llm = self.llm
        llm._ctx.kv_cache_clear()
        llm._batch.reset()
        llm._batch.add_sequence(ids, 0, True)
        llm._ctx.decode(llm._batch)
        ptr = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)
        return np.array(ptr[: self.n_out], dtype=np.float64)

    def close(self) -> None:
        self.llm.close()


def _encoder(path: Path) -> Iterator[LlamaEncoder]:
    enc = LlamaEncoder(path)
    try:
        yield enc
    finally:
        enc.close()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _convert(family: str, outtype: str, cache: Path) -> tuple[Path, Path]:
    try:
        path, hf_dir = eb.encoder_gguf(family, outtype, cache)
    except Exception as exc:
        record(SUPPORT_FAMILY[family], "converter", passed=False, detail=f"{family}: {exc}")
        raise
    record(SUPPORT_FAMILY[family], "converter", passed=True, detail=family)
    return path, hf_dir


@pytest.mark.parametrize("family", EMBEDDERS + RERANKERS)
def test_metadata_declares_pooling_and_normalisation(family: str, encoder_cache: Path) -> None:
    path, _ = _convert(family, "f32", encoder_cache)
    fields = gguf_fields(path)
    arch = fields["general.architecture"]
    want_pooling, want_norm = EXPECTED_POOLING[family]
    assert fields[f"{arch}.pooling_type"] == want_pooling
    assert fields["ggufworker.embedding.normalize"] is want_norm
    if family not in ("qwen3-embedding", "qwen3-reranker", "gemma-embedding"):
        assert fields[f"{arch}.attention.causal"] is False
    if family == "qwen3-reranker":
        assert fields[f"{arch}.classifier.output_labels"] == ["yes", "no"]
        assert "{query}" in fields["tokenizer.chat_template.rerank"]
        assert "{document}" in fields["tokenizer.chat_template.rerank"]


#: varied texts (unicode, CJK, emoji, code, whitespace runs, digits) beside the plain ones
VARIED_TEXTS = (*SAMPLE_TEXTS, *EXTRA_TEXTS)


@pytest.mark.parametrize("family", EMBEDDERS + RERANKERS)
def test_token_ids_equal_the_tokenizer(family: str, encoder_cache: Path) -> None:
    path, hf_dir = _convert(family, "f32", encoder_cache)
    for enc in _encoder(path):
        texts = [*eb.TEXTS, *VARIED_TEXTS]
        singles = {t: (enc.tokenize(t), eb.hf_token_ids(hf_dir, t)) for t in texts}
        if family == "qwen3-reranker":
            template = enc.rerank_template()
            assert template is not None
            pairs = {}
            for doc in eb.DOCUMENTS:
                prompt = template.replace("{query}", eb.QUERY).replace("{document}", doc)
                got = enc.tokenize(prompt, add_special=False, special=True)
                pairs[doc] = (got, eb.hf_token_ids(hf_dir, eb.rerank_prompt(eb.QUERY, doc)))
        else:
            pairs = {d: (enc.pair(eb.QUERY, d), eb.hf_token_ids(hf_dir, eb.QUERY, d))
                     for d in eb.DOCUMENTS}  # fmt: skip
    bad = {k: v for k, v in {**singles, **pairs}.items() if v[0] != v[1]}
    record(SUPPORT_FAMILY[family], "tokenizer", passed=not bad, detail=family)
    assert not bad, f"llama.cpp vs tokenizer.json ids differ: {bad}"


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("family", EMBEDDERS)
def test_embeddings_equal_the_reference(family: str, outtype: str, encoder_cache: Path) -> None:
    path, hf_dir = _convert(family, outtype, encoder_cache)
    want = eb.reference_embeddings(family, hf_dir, eb.TEXTS)
    for enc in _encoder(path):
        got = np.stack([enc.pool(eb.hf_token_ids(hf_dir, t)) for t in eb.TEXTS])
    assert got.shape == want.shape
    worst = min(_cosine(g, w) for g, w in zip(got, want, strict=True))
    ok = worst >= COSINE_MIN[outtype]
    # the matrix's figure: max relative error of the unit vectors (llama.cpp returns them
    # unnormalised; the GGUF's normalize flag tells the server to normalise)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (got, want)]
    err = float(np.max(np.abs(unit[0] - unit[1])) / np.max(np.abs(unit[1])))
    record(SUPPORT_FAMILY[family], outtype, passed=ok, value=err, detail=family)
    assert ok, f"{family} {outtype}: worst cosine {worst:.7f} < {COSINE_MIN[outtype]}"


def _llama_scores(enc: LlamaEncoder, family: str, hf_dir: Path) -> np.ndarray:
    out = []
    for doc in eb.DOCUMENTS:
        if family == "qwen3-reranker":
            ids = eb.hf_token_ids(hf_dir, eb.rerank_prompt(eb.QUERY, doc))
        else:
            ids = eb.hf_token_ids(hf_dir, eb.QUERY, doc)
        out.append(enc.pool(ids)[0])
    return np.array(out)


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("family", RERANKERS)
def test_rerank_scores_equal_the_reference(family: str, outtype: str, encoder_cache: Path) -> None:
    path, hf_dir = _convert(family, outtype, encoder_cache)
    want = eb.reference_scores(family, hf_dir, eb.QUERY, eb.DOCUMENTS)
    for enc in _encoder(path):
        got = _llama_scores(enc, family, hf_dir)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    same_order = list(np.argsort(-got)) == list(np.argsort(-want))
    ok = err <= SCORE_TOL[outtype] and same_order
    record(SUPPORT_FAMILY[family], outtype, passed=ok, value=err, detail=family)
    assert same_order, f"order differs: llama.cpp {got}, reference {want}"
    assert err <= SCORE_TOL[outtype], f"relative score error {err:.2e}: {got} vs {want}"


def test_reranker_scores_are_not_degenerate(encoder_cache: Path) -> None:
    """The order check means something only if the reference scores differ clearly."""
    for family in RERANKERS:
        _, hf_dir = _convert(family, "f32", encoder_cache)
        want = eb.reference_scores(family, hf_dir, eb.QUERY, eb.DOCUMENTS)
        gaps = np.diff(np.sort(want))
        assert np.min(gaps) > 4 * SCORE_TOL["f32"] * np.max(np.abs(want)), (family, want)


def _edited_copy(src: Path, dst: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.gguf"))
    edit(dst)
    return dst


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _refusals() -> dict[str, tuple[str, Callable[[Path], None], str]]:
    def max_pooling(d: Path) -> None:
        _edit_json(d / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False,
                   pooling_mode_max_tokens=True)  # fmt: skip

    def dense_bias(d: Path) -> None:
        _edit_json(d / "2_Dense" / "config.json", bias=True)

    def cased(d: Path) -> None:
        tok = json.loads((d / "tokenizer.json").read_text())
        tok["normalizer"]["lowercase"] = False
        (d / "tokenizer.json").write_text(json.dumps(tok))

    def norm_bias(d: Path) -> None:
        _edit_json(d / "config.json", norm_bias=True)

    def bert_cross_encoder(d: Path) -> None:
        _edit_json(d / "config.json", architectures=["BertForSequenceClassification"])

    def nomic_moe(d: Path) -> None:
        _edit_json(d / "config.json", moe_every_n_layers=2)

    return {
        "max pooling": ("bert", max_pooling, "not supported by llama.cpp"),
        "Dense with bias": ("gemma-embedding", dense_bias, "bias"),
        "cased WordPiece": ("bert", cased, "cased"),
        "ModernBERT norm bias": ("modernbert", norm_bias, "norm_bias"),
        "BERT cross-encoder": ("bert", bert_cross_encoder, "not supported"),
        "nomic-bert MoE": ("nomic-bert", nomic_moe, "moe_every_n_layers"),
    }


@pytest.mark.parametrize("case", list(_refusals()))
def test_layouts_llama_cpp_cannot_compute_are_refused(
    case: str, encoder_cache: Path, tmp_path: Path
) -> None:
    from converters.st2gguf import convert
    from ggufworker.errors import ConversionError

    family, edit, message = _refusals()[case]
    _, hf_dir = _convert(family, "f32", encoder_cache)
    src = _edited_copy(hf_dir, tmp_path / "src", edit)
    target = tmp_path / "out.gguf"
    with pytest.raises(ConversionError, match=message):
        convert(src, target, outtype="f32")
    assert not target.exists()
    assert not list(tmp_path.glob(".out.gguf.*"))


def test_causal_lm_with_sentence_transformers_folder_is_an_embedder(
    encoder_cache: Path, tmp_path: Path
) -> None:
    """Qwen3-Embedding published as Qwen3ForCausalLM + modules.json: last-token pooling, no
    reranker head, embeddings equal sentence-transformers' on the same folder."""
    from converters.st2gguf import convert

    _, reranker_dir = _convert("qwen3-reranker", "f32", encoder_cache)

    def as_embedder(d: Path) -> None:
        eb.write_sentence_transformers(d, 64, "lasttoken", normalize=True)

    src = _edited_copy(reranker_dir, tmp_path / "qwen3-embedding-causal", as_embedder)
    path = convert(src, tmp_path / "e.gguf", outtype="f32")
    fields = gguf_fields(path)
    assert fields["qwen3.pooling_type"] == 3
    assert fields["ggufworker.embedding.normalize"] is True
    assert "tokenizer.chat_template.rerank" not in fields
    want = eb.reference_embeddings("qwen3-embedding", src, eb.TEXTS)
    for enc in _encoder(path):
        got = np.stack([enc.pool(eb.hf_token_ids(src, t)) for t in eb.TEXTS])
    assert min(_cosine(g, w) for g, w in zip(got, want, strict=True)) >= COSINE_MIN["f32"]


def test_qwen3_reranker_with_tied_head(encoder_cache: Path, tmp_path: Path) -> None:
    """Qwen3-Reranker-0.6B ties its LM head to the embedding: cls.output then comes from the
    embedding rows of "yes"/"no", and token_embd stays."""
    from safetensors.torch import load_file, save_file

    from converters.st2gguf import convert

    _, hf_dir = _convert("qwen3-reranker", "f32", encoder_cache)

    def tie(d: Path) -> None:
        tensors = load_file(str(d / "model.safetensors"))
        del tensors["lm_head.weight"]
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        _edit_json(d / "config.json", tie_word_embeddings=True)

    src = _edited_copy(hf_dir, tmp_path / "qwen3-reranker-tied", tie)
    path = convert(src, tmp_path / "r.gguf", outtype="f32")
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert {"cls.output.weight", "token_embd.weight"} <= names
    assert "output.weight" not in names
    want = eb.reference_scores("qwen3-reranker", src, eb.QUERY, eb.DOCUMENTS)
    for enc in _encoder(path):
        got = _llama_scores(enc, "qwen3-reranker", src)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) <= SCORE_TOL["f32"]
