"""The Ollama API end to end: a real `ggufworker serve`, the real SmolLM2 GGUF, the official
`ollama` client. References: the same model through /v1 (openai client), the GGUF file read
with gguf-py, the tool's JSON schema (jsonschema)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import gguf
import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.conftest import SMOLLM2
from tests.server.conftest import DISTINCT_PROMPTS, KEYS, ServerProcess
from tests.server.ollama_fixtures import BROKEN_NAME, PULL_ALIAS, PULL_NAME

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # models.yaml
ALIAS = "smollm2:135m"  # models.yaml's Ollama-style alias of SMOLLM2
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}  # what /v1 does with temperature 0
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}


def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _metric(server: ServerProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    m = re.search(rf"^{name}{{[^}}]*{re.escape(labels)}[^}}]*}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_liveness_version_list_show_ps(ollama_server: ServerProcess, smollm2_path: Path) -> None:
    assert httpx.get(ollama_server.url).text == "Ollama is running"
    assert httpx.head(f"{ollama_server.url}/api/tags").status_code == 200
    c = client(ollama_server)
    version = httpx.get(f"{ollama_server.url}/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)

    listed = {m.model: m for m in c.list().models}
    smol = listed[SMOLLM2]
    assert smol.size == smollm2_path.stat().st_size
    assert smol.digest == SMOLLM2_SHA256
    assert smol.details.format == "gguf" and smol.details.family == "llama"
    assert smol.details.quantization_level == "Q4_1"

    reader = gguf.GGUFReader(smollm2_path)
    shown = c.show(ALIAS)
    for key in ("llama.context_length", "llama.block_count", "llama.embedding_length"):
        assert shown.modelinfo[key] == reader.fields[key].contents(), key
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.template == reader.fields["tokenizer.chat_template"].contents()
    # tools through the generic JSON call format (ChatML has no call syntax), no thinking
    # markers in the template, no FIM tokens in SmolLM2's vocabulary
    assert shown.capabilities == ["completion", "tools", "embedding"]
    assert "num_ctx 4096" in shown.parameters

    loaded = {m.model: m for m in c.ps().models}
    assert loaded[SMOLLM2].context_length == 4096
    assert loaded[SMOLLM2].digest == SMOLLM2_SHA256
    assert loaded[SMOLLM2].size > 0
    assert loaded[SMOLLM2].details.family == "llama"


def test_chat_stream_and_not_match_v1(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    opts = {**GREEDY, "num_predict": 12}
    whole = c.chat(model=ALIAS, messages=user("Name a color."), options=opts, stream=False)
    chunks = list(c.chat(model=ALIAS, messages=user("Name a color."), options=opts, stream=True))
    assert "".join(ch.message.content or "" for ch in chunks) == whole.message.content
    assert [ch.done for ch in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    for r in (whole, last):
        assert r.done_reason in ("stop", "length")
        assert r.eval_count == whole.eval_count and 1 <= r.eval_count <= 12
        assert r.prompt_eval_count > 5
        assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
        assert r.eval_duration > 0
    reference = openai.OpenAI(base_url=f"{ollama_server.url}/v1", api_key="x").chat.completions
    v1 = reference.create(
        model=SMOLLM2, messages=user("Name a color."), temperature=0, max_tokens=12
    )
    assert whole.message.content == v1.choices[0].message.content
    assert whole.prompt_eval_count == v1.usage.prompt_tokens
    assert whole.eval_count == v1.usage.completion_tokens


def test_generate_template_raw_system_and_context(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    opts = {**GREEDY, "num_predict": 10}
    chat = c.chat(
        model=SMOLLM2,
        messages=[{"role": "system", "content": "Be brief."}, *user("Say hi.")],
        options=opts,
    )
    gen = c.generate(model=SMOLLM2, prompt="Say hi.", system="Be brief.", options=opts)
    assert gen.response == chat.message.content
    assert len(gen.context) == gen.prompt_eval_count + gen.eval_count
    prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n"
    raw = c.generate(
        model=SMOLLM2, prompt=prompt + "<|im_start|>assistant\n", raw=True, options=opts
    )
    assert raw.response == gen.response
    streamed = list(c.generate(model=SMOLLM2, prompt="Say hi.", system="Be brief.",
                               options=opts, stream=True))  # fmt: skip
    assert "".join(s.response for s in streamed) == gen.response
    assert streamed[-1].context == gen.context


def test_options_map_to_sampling(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    capped = c.generate(
        model=ALIAS,
        prompt="Count from one to twenty in words.",
        options={**GREEDY, "num_predict": 5, "ignore_eos": True, "mirostat": 1},
    )
    assert (capped.eval_count, capped.done_reason) == (5, "length")
    full = c.generate(model=ALIAS, prompt="Count from one to ten in words.",
                      options={**GREEDY, "num_predict": 40})  # fmt: skip
    word = full.response.split()[2]
    stopped = c.generate(model=ALIAS, prompt="Count from one to ten in words.",
                         options={**GREEDY, "num_predict": 40, "stop": [word]})  # fmt: skip
    assert stopped.done_reason == "stop" and word not in stopped.response
    assert full.response.startswith(stopped.response)
    sampled = {"temperature": 1.0, "top_k": 100, "top_p": 1.0, "seed": 42, "num_predict": 16}
    a = c.generate(model=ALIAS, prompt="Tell me a story.", options=sampled)
    b = c.generate(model=ALIAS, prompt="Tell me a story.", options=sampled)
    assert a.response == b.response
    limited = c.generate(model=ALIAS, prompt="Tell me a story.",
                         options={**GREEDY, "num_ctx": 40})  # fmt: skip
    assert limited.prompt_eval_count + limited.eval_count <= 40


def test_embed_matches_v1(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    texts = ["The cat sat.", "Stocks fell today."]
    ours = c.embed(model=ALIAS, input=texts)
    v1 = openai.OpenAI(base_url=f"{ollama_server.url}/v1", api_key="x").embeddings.create(
        model=SMOLLM2, input=texts
    )
    assert len(ours.embeddings) == 2 and ours.prompt_eval_count > 0
    for mine, ref in zip(ours.embeddings, v1.data, strict=True):
        assert mine == pytest.approx(ref.embedding, abs=1e-6)
    legacy = c.embeddings(model=ALIAS, prompt=texts[0])
    assert legacy.embedding == pytest.approx(ours.embeddings[0], abs=1e-6)
    short = c.embed(model=ALIAS, input=texts[0], dimensions=64).embeddings[0]
    assert len(short) == 64 and sum(v * v for v in short) == pytest.approx(1.0, abs=1e-5)


def test_format_schema_validates(ollama_server: ServerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    c = client(ollama_server)
    r = c.chat(model=ALIAS, messages=user("Invent a person. Reply in JSON."), format=schema,
               options={**GREEDY, "num_predict": 60})  # fmt: skip
    assert r.done_reason == "stop", r.message.content
    jsonschema.validate(json.loads(r.message.content), schema)
    any_json = c.generate(model=ALIAS, prompt="Describe a cat in JSON.", format="json",
                          options={**GREEDY, "num_predict": 60})  # fmt: skip
    if any_json.done_reason == "stop":
        assert isinstance(json.loads(any_json.response), dict)
    else:
        assert any_json.response.lstrip().startswith("{")


def test_forced_tool_call(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    choice = {"type": "function", "function": {"name": "get_weather"}}
    opts = {**GREEDY, "num_predict": 60, "tool_choice": choice}
    r = c.chat(model=ALIAS, messages=user("What is the weather in Paris?"), tools=[WEATHER],
               options=opts)  # fmt: skip
    assert r.message.tool_calls
    for call in r.message.tool_calls:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)  # an object, as Ollama sends it
        jsonschema.validate(dict(call.function.arguments), WEATHER["function"]["parameters"])
    chunks = list(c.chat(model=ALIAS, messages=user("What is the weather in Paris?"),
                         tools=[WEATHER], options=opts, stream=True))  # fmt: skip
    with_calls = [ch for ch in chunks if ch.message.tool_calls]
    assert len(with_calls) == 1  # the call arrives whole, in one chunk
    assert with_calls[0].message.tool_calls == r.message.tool_calls
    assert chunks[-1].done and chunks[-1].eval_count == r.eval_count


def test_keep_alive_zero_unloads_and_next_request_reloads(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    c.generate(model=ALIAS, prompt="Hi", options={**GREEDY, "num_predict": 2}, keep_alive=0)
    assert SMOLLM2 not in [m.model for m in c.ps().models]
    again = c.generate(model=ALIAS, prompt="Hi", options={**GREEDY, "num_predict": 2},
                       keep_alive="10m")  # fmt: skip
    assert again.load_duration > 0
    (entry,) = [m for m in c.ps().models if m.model == SMOLLM2]
    left = entry.expires_at.timestamp() - time.time()
    assert 9 * 60 < left <= 10 * 60
    unloaded = c.generate(model=ALIAS, prompt="", keep_alive=0)
    assert (unloaded.done, unloaded.done_reason) == (True, "unload")
    assert SMOLLM2 not in [m.model for m in c.ps().models]
    loaded = c.generate(model=ALIAS, prompt="", keep_alive=-1)
    assert loaded.done_reason == "load"
    (entry,) = [m for m in c.ps().models if m.model == SMOLLM2]
    assert entry.expires_at.year > time.gmtime().tm_year + 100  # negative: kept loaded


def test_pull_copy_delete(ollama_server: ServerProcess, smollm2_path: Path) -> None:
    c = client(ollama_server)
    progress = list(c.pull(PULL_ALIAS, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    size = smollm2_path.stat().st_size
    bytes_lines = [p for p in progress if p.completed is not None]
    assert bytes_lines and all(p.total == size for p in bytes_lines)
    done = [p.completed for p in bytes_lines]
    assert done == sorted(done) and done[-1] == size
    assert bytes_lines[0].digest == f"sha256:{SMOLLM2_SHA256}"
    cached = ollama_server.log_path.parent / "home" / "models" / PULL_NAME / "pull-test.gguf"
    assert cached.read_bytes() == smollm2_path.read_bytes()
    assert PULL_NAME in [m.model for m in c.list().models]
    answer = c.generate(model=PULL_ALIAS, prompt="Hi", options={**GREEDY, "num_predict": 4})
    reference = c.generate(model=SMOLLM2, prompt="Hi", options={**GREEDY, "num_predict": 4})
    assert answer.response == reference.response  # the same bytes, so the same output
    assert c.pull(PULL_NAME).status == "success"  # cached: nothing to fetch

    assert c.copy(PULL_ALIAS, "my-copy:v1").status == "success"
    copied = c.generate(model="my-copy:v1", prompt="Hi", options={**GREEDY, "num_predict": 4})
    assert copied.response == answer.response

    assert c.delete(PULL_ALIAS).status == "success"
    assert not cached.exists()
    assert PULL_NAME not in [m.model for m in c.list().models]
    with pytest.raises(ollama.ResponseError) as gone:
        c.delete(PULL_ALIAS)
    assert gone.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as unknown:
        c.pull("no-such-model:7b")
    assert unknown.value.status_code == 404


def test_failed_pull_ends_its_stream_with_an_error_line(ollama_server: ServerProcess) -> None:
    with httpx.stream("POST", f"{ollama_server.url}/api/pull", json={"model": BROKEN_NAME}) as r:
        assert r.status_code == 200  # the failure comes after the stream started
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"}
    assert set(lines[-1]) == {"error"} and "no such file" in lines[-1]["error"]
    c = client(ollama_server)
    with pytest.raises(ollama.ResponseError, match="no such file"):
        list(c.pull(BROKEN_NAME, stream=True))
    assert BROKEN_NAME not in [m.model for m in c.list().models]


def test_bad_input_gets_ollama_errors(ollama_server: ServerProcess) -> None:
    c = client(ollama_server)
    with pytest.raises(ollama.ResponseError) as missing:
        c.chat(model="no-such-model", messages=user("Hi"))
    assert missing.value.status_code == 404 and "no-such-model" in missing.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        list(c.chat(model="no-such-model", messages=user("Hi"), stream=True))
    assert streamed.value.status_code == 404
    r = httpx.post(f"{ollama_server.url}/api/chat", content=b"{not json",
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    # Ollama reads the body as JSON whatever its type (its docs use `curl -d`)
    form = httpx.post(f"{ollama_server.url}/api/generate",
                      content=json.dumps({"model": ALIAS, "prompt": "Hi", "stream": False,
                                          "options": {"num_predict": 2}}),
                      headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert form.status_code == 200 and form.json()["done"]
    r = httpx.post(f"{ollama_server.url}/api/generate", json={"prompt": "no model"})
    assert r.status_code == 400 and "model" in r.json()["error"]
    cases = [
        (dict(messages=[{"role": "user", "content": "Hi", "images": ["aGk="]}]), "images"),
        (dict(messages=user("Hi"), think=True), "thinking"),
        (dict(messages=user("Hi"), options={"temperature": "hot"}), "temperature"),
        (dict(messages=user("Hi"), keep_alive="soon"), "keep_alive"),
        (dict(messages=user("Hi"), options={"num_ctx": 4}), "num_ctx"),
    ]
    for kwargs, word in cases:
        with pytest.raises(ollama.ResponseError) as bad:
            c.chat(model=ALIAS, **kwargs)
        assert bad.value.status_code == 400 and word in bad.value.error, kwargs
    with pytest.raises(ollama.ResponseError) as fim:
        c.generate(model=ALIAS, prompt="def add(a, b):", suffix="    return c")
    assert fim.value.status_code == 400 and "insert" in fim.value.error
    # the server is still fine
    assert c.generate(model=ALIAS, prompt="Hi", options={"num_predict": 2}).done


def test_same_keys_body_limit_and_metrics_as_v1(
    ollama_server: ServerProcess, tight_server: ServerProcess
) -> None:
    with pytest.raises(ollama.ResponseError) as denied:
        client(tight_server).list()
    assert denied.value.status_code == 401
    keyed = ollama.Client(host=tight_server.url, headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert keyed.chat(model=SMOLLM2, messages=user("Hi"), options={"num_predict": 2}).done

    huge = {"model": ALIAS, "prompt": "x" * (9 * 1024 * 1024)}  # over the 8 MiB default
    assert httpx.post(f"{ollama_server.url}/api/generate", json=huge).status_code == 413

    ok = 'endpoint="/api/chat",status="200"'
    before = _metric(ollama_server, "ggufworker_requests_total", ok)
    tokens = _metric(ollama_server, "ggufworker_generation_tokens_total", f'model="{SMOLLM2}"')
    r = client(ollama_server).chat(model=ALIAS, messages=user("Hi"), options={"num_predict": 3})
    assert _metric(ollama_server, "ggufworker_requests_total", ok) == before + 1
    after = _metric(ollama_server, "ggufworker_generation_tokens_total", f'model="{SMOLLM2}"')
    assert after == tokens + r.eval_count


PROMPTS = DISTINCT_PROMPTS


def test_eight_clients_are_decoded_together(ollama_server: ServerProcess) -> None:
    """Eight official clients stream at once; once each has its first token (and none can have
    finished: EOS is ignored and 48 tokens take many steps), the engine reports all eight slots
    busy: one scheduler decodes them in one batch per step."""
    n, tokens = len(PROMPTS), 48
    opts = {**GREEDY, "num_predict": tokens, "ignore_eos": True}
    started = threading.Barrier(n + 1, timeout=120)
    results: dict[int, list[ollama.GenerateResponse]] = {}

    def one(i: int) -> None:
        stream = client(ollama_server).generate(model=ALIAS, prompt=PROMPTS[i], raw=True,
                                                options=opts, stream=True)  # fmt: skip
        chunks = [next(stream)]
        started.wait()
        chunks += list(stream)
        results[i] = chunks

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()
    busy = _metric(ollama_server, "ggufworker_busy_slots", f'model="{SMOLLM2}"')
    for t in threads:
        t.join(120)
    assert busy == n
    assert sorted(results) == list(range(n))
    assert all(chunks[-1].done and chunks[-1].eval_count == tokens for chunks in results.values())
