"""LoRA adapters through a real `ggufworker serve --lora` driven by the `openai` client: adapter
model ids (BASE:NAME) and the base answered concurrently equal their alone outputs and the
engine's greedy output under the same adapter; the per-request ``lora`` field, runtime load and
unload (vLLM's routes), llama-server's ``/lora-adapters``, ``/v1/models``, ``/api/tags`` and
``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from converters.lora import convert_lora
from converters.st2gguf import convert
from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from tests.converters import builders
from tests.converters.lora_reference import make_adapter

from .conftest import ServerProcess, cached_server, running

PROMPTS = ("def convert(src, dst):", "The output is written to a temporary file")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-served")
    tok = builders.train_tiny_tokenizer(root)
    src = builders.build_tiny("llama", root / "src", tok)
    wide = builders.build_tiny("llama", root / "wide", tok, overrides={"hidden_size": 96})
    out = {"base": convert(src, root / "tiny.gguf", outtype="f32", pre_tokenizer="gpt-2")}
    for name, base, seed in (("a", src, 7), ("b", src, 8), ("wide", wide, 7)):
        out[name] = convert_lora(make_adapter(base, root / f"peft-{name}", seed=seed),
                                 root / f"{name}.gguf", base=base)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def server(files, model_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = cached_server(
        tmp_path_factory, "lora-server", model_cache,
        "--model", str(files["base"]), "--parallel", "4",
        "--lora", f"a={files['a']}", "--lora", f"b={files['b']}:0.5",
    )  # fmt: skip
    with running(proc) as started:
        yield started


def _engine_texts(files: dict[str, Path], lora: tuple | None) -> list[str]:
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with Engine.load(files["base"], n_ctx=256, n_parallel=1) as engine:
        engine.load_lora("a", files["a"])
        engine.load_lora("b", files["b"])
        return [engine.generate(GenerationRequest(p, greedy, lora=lora)).text for p in PROMPTS]


async def _complete(client: openai.AsyncOpenAI, model: str, prompt: str, **extra: Any) -> str:
    out = await client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"ignore_eos": True, **extra},
    )  # fmt: skip
    assert out.model == model
    return out.choices[0].text


def _client(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


MODELS = {"tiny": (), "tiny:a": (("a", 1.0),), "tiny:b": (("b", 0.5),)}


def test_adapter_ids_and_base_together_equal_alone_and_engine(server, files):
    async def run() -> tuple[list[str], list[str]]:
        client = _client(server)
        jobs = [(m, p) for m in MODELS for p in PROMPTS]
        together = await asyncio.gather(*(_complete(client, m, p) for m, p in jobs))
        alone = [await _complete(client, m, p) for m, p in jobs]
        await client.close()
        return list(together), alone

    together, alone = asyncio.run(run())
    assert together == alone
    want = [t for lora in MODELS.values() for t in _engine_texts(files, lora)]
    assert together == want
    by_model = [tuple(together[i : i + len(PROMPTS)]) for i in range(0, len(together), 2)]
    assert len(set(by_model)) == 3  # the adapters change the output


def test_request_lora_field_equals_adapter_ids(server):
    async def run() -> list[str]:
        client = _client(server)
        p = PROMPTS[0]
        outs = [
            await _complete(client, "tiny", p, lora=[{"name": "a", "scale": 1.0}]),
            await _complete(client, "tiny:a", p),
            await _complete(client, "tiny", p, lora=[{"id": 1, "scale": 0.5}]),
            await _complete(client, "tiny:b", p),
            await _complete(client, "tiny:a", p, lora=[]),  # an explicit list wins
            await _complete(client, "tiny", p),
        ]
        await client.close()
        return outs

    outs = asyncio.run(run())
    assert outs[0] == outs[1] and outs[2] == outs[3] and outs[4] == outs[5]
    assert outs[0] != outs[5]


def test_chat_carries_the_lora_field(server):
    async def run() -> list[str]:
        client = _client(server)
        outs = []
        for model, extra in (("tiny:a", {}), ("tiny", {"lora": [{"name": "a", "scale": 1}]})):
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPTS[1]}],
                max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True, **extra},
            )  # fmt: skip
            outs.append(r.choices[0].message.content or "")
        await client.close()
        return outs

    via_id, via_field = asyncio.run(run())
    assert via_id == via_field


def test_adapters_are_listed(server, files):
    cards = {c["id"]: c for c in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert cards["tiny:a"]["parent"] == "tiny" and cards["tiny:b"]["parent"] == "tiny"
    assert cards["tiny:a"]["root"] == str(files["a"])
    assert cards["tiny"]["parent"] is None
    tags = {m["name"]: m for m in httpx.get(f"{server.url}/api/tags").json()["models"]}
    assert tags["tiny:a"]["details"]["parent_model"] == "tiny"
    assert tags["tiny:a"]["size"] > tags["tiny"]["size"]
    items = httpx.get(f"{server.url}/lora-adapters").json()
    assert [(i["id"], i["name"], i["path"], i["scale"]) for i in items] == [
        (0, "a", str(files["a"]), 0.0),
        (1, "b", str(files["b"]), 0.0),
    ]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'ggufworker_lora_adapter_info{adapter="a",global_scale="0.0",id="0",model="tiny"' in (
        metrics
    )


def test_global_scales(server):
    """llama-server's POST /lora-adapters: requests without a lora list run under them."""
    url = server.url

    async def base_text() -> str:
        client = _client(server)
        try:
            return await _complete(client, "tiny", PROMPTS[0])
        finally:
            await client.close()

    plain = asyncio.run(base_text())
    r = httpx.post(f"{url}/lora-adapters", json=[{"id": 0, "scale": 1.0}])
    assert r.status_code == 200 and r.json()[0]["scale"] == 1.0
    try:
        scaled = asyncio.run(base_text())
    finally:
        httpx.post(f"{url}/lora-adapters", json=[{"id": 0, "scale": 0.0}])
    assert asyncio.run(base_text()) == plain

    async def adapter_text() -> str:
        client = _client(server)
        try:
            return await _complete(client, "tiny:a", PROMPTS[0])
        finally:
            await client.close()

    assert scaled == asyncio.run(adapter_text()) != plain
    missing = httpx.post(f"{url}/lora-adapters", json=[{"id": 9, "scale": 1.0}])
    assert missing.status_code == 404 and "no LoRA adapter with id 9" in missing.text


def test_runtime_load_and_unload(server, files):
    url = server.url
    r = httpx.post(f"{url}/v1/load_lora_adapter",
                   json={"lora_name": "c", "lora_path": str(files["a"])})  # fmt: skip
    assert r.status_code == 200, r.text
    ids = [c["id"] for c in httpx.get(f"{url}/v1/models").json()["data"]]
    assert "tiny:c" in ids

    async def texts(*models: str) -> list[str]:
        client = _client(server)
        try:
            return [await _complete(client, m, PROMPTS[0]) for m in models]
        finally:
            await client.close()

    c, a = asyncio.run(texts("tiny:c", "tiny:a"))
    assert c == a
    wrong = httpx.post(f"{url}/v1/load_lora_adapter",
                       json={"lora_name": "w", "lora_path": str(files["wide"])})  # fmt: skip
    assert wrong.status_code == 400
    err = wrong.json()["error"]
    assert "made for a base with embedding_length 96, this base has 64" in err["message"]
    assert "\n" not in err["message"]
    again = httpx.post(f"{url}/v1/load_lora_adapter",
                       json={"lora_name": "c", "lora_path": str(files["a"])})  # fmt: skip
    assert again.status_code == 400 and "already" in again.json()["error"]["message"]
    gone = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "nope"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "c"}).status_code == 200
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny:c", prompt=PROMPTS[0], max_tokens=2)
    assert "tiny:c" not in [c["id"] for c in httpx.get(f"{url}/v1/models").json()["data"]]


def test_ollama_generate_on_an_adapter_model(server):
    """Ollama's /api/generate on BASE:NAME runs under the adapter: its output is not the base's
    and is the same on every call (text is compared within the Ollama API: the tiny model emits
    stray bytes, which each API turns into text in its own way)."""

    def generate(model: str) -> dict[str, Any]:
        r = httpx.post(
            f"{server.url}/api/generate",
            json={"model": model, "prompt": PROMPTS[0], "raw": True, "stream": False,
                  "options": {"temperature": 0, "num_predict": MAX_TOKENS}},
            timeout=120,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()

    first, base, again = generate("tiny:a"), generate("tiny"), generate("tiny:a")
    assert first["model"] == "tiny:a"
    assert first["response"] == again["response"] != base["response"]
