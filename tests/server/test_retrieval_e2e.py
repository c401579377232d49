"""Retrieval models served by a real `ggufworker serve`: embeddings through the `openai`
client and Ollama's client, rerank through /v1/rerank, each equal to transformers'
(sentence-transformers' pooling) output for the tiny checkpoint the converter turned into the
served GGUF.

Bars (issue #28): embeddings cosine >= 0.9999 at f32 (>= 0.999 at q8_0); rerank scores within
5e-3 of the largest score and in the same order. Inputs of concurrent requests share decodes in
the server; each must still equal its reference.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests.converters import encoder_builders as eb
from tests.server.conftest import ServerProcess, cached_server, running

EMBEDDERS = (
    "bert",
    "xlm-roberta",
    "nomic-bert",
    "modernbert",
    "gemma-embedding",
    "qwen3-embedding",
)
RERANKERS = ("xlm-roberta-reranker", "qwen3-reranker")
TEXTS = [
    "The cat sat on the mat.",
    "Ships carry containers across the sea.",
    "A compiler turns source code into machine code.",
    "Rain fell on the quiet town all night.",
    "Retrieval models rank documents for a query.",
]
QUERY = "how does a compiler work?"
DOCUMENTS = [
    "A compiler translates source code into machine code.",
    "The weather was sunny and warm.",
    "Interpreters run programs line by line.",
    "Bread is baked from flour, water and yeast.",
    "Code generation is the last phase of a compiler.",
]


@pytest.fixture(scope="module")
def files(model_cache: Path) -> dict[str, tuple[Path, Path]]:
    """family -> (served GGUF, checkpoint); embedders at f32 and one at q8_0."""
    out = {f: eb.encoder_gguf(f, "f32", model_cache) for f in EMBEDDERS + RERANKERS}
    out["bert-q8"] = eb.encoder_gguf("bert", "q8_0", model_cache)
    return out


@pytest.fixture(scope="module")
def server(files, model_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    args = [a for gguf, _ in files.values() for a in ("--embedding-model", str(gguf))]
    args += ["--embedding-parallel", "8", "--embedding-batch-size", "256"]
    with running(cached_server(tmp_path_factory, "retrieval", model_cache, *args)) as proc:
        yield proc


def _name(files, family: str) -> str:
    return files[family][0].stem


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    return (got * want).sum(axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("family", EMBEDDERS)
def test_openai_embeddings_equal_reference(family, files, server) -> None:
    gguf, hf_dir = files[family]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    r = client.embeddings.create(model=gguf.stem, input=TEXTS)
    got = np.array([d.embedding for d in r.data])
    want = eb.reference_embeddings(family, hf_dir, TEXTS)
    assert got.shape == want.shape
    assert _cosines(got, want).min() >= 0.9999
    assert r.usage.prompt_tokens > len(TEXTS)


@pytest.mark.slow
def test_q8_0_embeddings_equal_reference(files, server) -> None:
    gguf, hf_dir = files["bert-q8"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    got = np.array(
        [d.embedding for d in client.embeddings.create(model=gguf.stem, input=TEXTS).data]
    )
    assert _cosines(got, eb.reference_embeddings("bert", hf_dir, TEXTS)).min() >= 0.999


@pytest.mark.slow
def test_concurrent_requests_equal_reference(files, server) -> None:
    family = "qwen3-embedding"
    gguf, hf_dir = files[family]
    want = eb.reference_embeddings(family, hf_dir, TEXTS)

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        out = await asyncio.gather(
            *(client.embeddings.create(model=gguf.stem, input=t) for t in TEXTS * 2)
        )
        await client.close()
        return out

    got = np.array([r.data[0].embedding for r in asyncio.run(run())])
    assert _cosines(got, np.concatenate([want, want])).min() >= 0.9999


@pytest.mark.slow
def test_token_ids_base64_and_dimensions(files, server) -> None:
    gguf, hf_dir = files["bert"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    floats = client.embeddings.create(model=gguf.stem, input=TEXTS[:2]).data
    # token ids as the HF tokenizer makes them (special tokens included) embed the same
    ids = [eb.hf_token_ids(hf_dir, t) for t in TEXTS[:2]]
    by_ids = client.embeddings.create(model=gguf.stem, input=ids).data
    assert (
        _cosines(
            np.array([d.embedding for d in by_ids]), np.array([d.embedding for d in floats])
        ).min()
        > 0.99999
    )
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": gguf.stem, "input": TEXTS[:2], "encoding_format": "base64"},
    ).json()["data"]
    for d, f in zip(raw, floats, strict=True):
        blob = base64.b64decode(d["embedding"])
        decoded = struct.unpack(f"<{len(blob) // 4}f", blob)
        assert np.allclose(decoded, f.embedding, atol=1e-7)
    short = client.embeddings.create(model=gguf.stem, input=TEXTS[0], dimensions=16).data[0]
    want = np.array(floats[0].embedding[:16])
    assert len(short.embedding) == 16
    assert np.allclose(short.embedding, want / np.linalg.norm(want), atol=1e-6)


@pytest.mark.slow
def test_ollama_embed_equals_reference(files, server) -> None:
    gguf, hf_dir = files["xlm-roberta"]
    c = ollama.Client(host=server.url)
    got = np.array(c.embed(model=gguf.stem, input=TEXTS).embeddings)
    assert _cosines(got, eb.reference_embeddings("xlm-roberta", hf_dir, TEXTS)).min() >= 0.9999
    legacy = np.array([c.embeddings(model=gguf.stem, prompt=TEXTS[0]).embedding])
    assert _cosines(legacy, got[:1])[0] > 0.99999


@pytest.mark.slow
@pytest.mark.parametrize("family", RERANKERS)
def test_rerank_scores_equal_reference(family, files, server) -> None:
    gguf, hf_dir = files[family]
    want = eb.reference_scores(family, hf_dir, QUERY, DOCUMENTS)
    r = httpx.post(
        f"{server.url}/v1/rerank",
        json={"model": gguf.stem, "query": QUERY, "documents": DOCUMENTS},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert [x["index"] for x in results] == list(np.argsort(-want, kind="stable"))
    got = np.array([x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])])
    assert np.abs(got - want).max() <= 5e-3 * max(1.0, np.abs(want).max())
    assert all(x["document"]["text"] == DOCUMENTS[x["index"]] for x in results)
    assert body["usage"]["prompt_tokens"] > len(DOCUMENTS)
    # Cohere's v2 path and the object form of documents; top_n and no documents echoed
    top = httpx.post(
        f"{server.url}/v2/rerank",
        json={
            "model": gguf.stem,
            "query": QUERY,
            "documents": [{"text": d} for d in DOCUMENTS],
            "top_n": 2,
            "return_documents": False,
        },
        timeout=120,
    ).json()["results"]
    assert [x["index"] for x in top] == [x["index"] for x in results[:2]]
    assert all("document" not in x for x in top)


@pytest.mark.slow
def test_models_capabilities_and_wrong_kind_errors(files, server) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert cards[_name(files, "bert")]["capabilities"] == ["embedding"]
    assert cards[_name(files, "xlm-roberta-reranker")]["capabilities"] == ["rerank"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="is an embedding model"):
        client.chat.completions.create(
            model=_name(files, "bert"), messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError, match="is a reranker"):
        client.embeddings.create(model=_name(files, "xlm-roberta-reranker"), input="hi")
    r = httpx.post(
        f"{server.url}/v1/rerank",
        json={"model": _name(files, "bert"), "query": "q", "documents": ["d"]},
    )
    assert r.status_code == 400 and "is not a reranker" in r.json()["error"]["message"]


@pytest.mark.slow
def test_long_input_named_or_truncated(files, server) -> None:
    name = _name(files, "bert")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    long_text = " ".join(["retrieval"] * 400)  # past the tiny model's trained context
    with pytest.raises(openai.BadRequestError, match="input 1 is .* tokens") as err:
        client.embeddings.create(model=name, input=[TEXTS[0], long_text])
    assert err.value.code == "context_length_exceeded"
    cut = client.embeddings.create(
        model=name, input=[TEXTS[0], long_text], extra_body={"truncate": True}
    )
    assert len(cut.data) == 2
    # Ollama truncates by default, as Ollama does
    assert len(ollama.Client(host=server.url).embed(model=name, input=long_text).embeddings) == 1
