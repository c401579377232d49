"""The prompt cache through a real server: conversations evicted from their slot come back with
their history cached (``usage.prompt_tokens_details.cached_tokens`` through the ``openai``
client), ``/metrics`` reports it, llama-server's ``POST /slots/{id}?action=save|restore|erase``
works, and a restarted server reads the states its predecessor left in ``--prompt-cache-dir``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SMOLLM2

from .conftest import ServerProcess, cached_server, running

SUBJECTS = ("apples", "rivers", "engines", "violins", "lanterns", "comets")


def _document(k: int) -> str:
    return " ".join(
        f"Record {i} about {SUBJECTS[k]}: item {i * (k + 3)} was filed on day {i + k}."
        for i in range(1, 22)
    )


def _opening(k: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a careful archivist."},
        {"role": "user", "content": f"Read these records.\n{_document(k)}\nWhat is record 3?"},
    ]


def _chat(server: ServerProcess, messages: list[dict[str, str]]) -> Any:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    return client.chat.completions.create(
        model=SMOLLM2,
        messages=messages,
        temperature=0,
        max_tokens=8,  # type: ignore[arg-type]
    )


def _turn_two(server: ServerProcess, k: int) -> tuple[list[dict[str, str]], int]:
    """Turn 1 of conversation ``k``; returns turn 2's messages and turn 1's prompt tokens."""
    first = _chat(server, _opening(k))
    answer = first.choices[0].message.content or ""
    messages = [
        *_opening(k),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Which day was record 2 filed?"},
    ]
    return messages, first.usage.prompt_tokens


def _cached(reply: Any) -> int:
    return int(reply.usage.prompt_tokens_details.cached_tokens)


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt-cache")
    return {"slots": root / "slots", "cache": root / "cache"}


@pytest.fixture(scope="module")
def server(
    smollm2_path: Path,
    model_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
    store: dict[str, Path],
) -> Iterator[ServerProcess]:
    store["slots"].mkdir(parents=True)
    proc = cached_server(
        tmp_path_factory, "prompt-cache-server", model_cache,
        "--model", SMOLLM2, "--parallel", "2", "--cache-ram", "128",
        "--slot-save-path", str(store["slots"]), "--prompt-cache-dir", str(store["cache"]),
    )  # fmt: skip
    with running(proc) as started:
        yield started


def test_evicted_conversations_keep_their_history(server: ServerProcess) -> None:
    """Four conversations on two slots, in turn: each second turn finds its whole first turn
    cached (restored from the RAM tier for the two that lost their slot)."""
    turns = [_turn_two(server, k) for k in range(4)]
    for messages, first_prompt in turns:
        assert _cached(_chat(server, messages)) >= first_prompt
    assert _metric(server, "ggufworker_prompt_cache_hits_total", tier="ram") >= 2
    held = _metric(server, "ggufworker_prompt_cache_bytes", tier="ram")
    assert 0 < held <= _metric(server, "ggufworker_prompt_cache_ram_limit_bytes")
    assert 0 < _metric(server, "ggufworker_prompt_cache_hit_ratio", tier="all") <= 1


def test_slot_save_erase_restore(server: ServerProcess, store: dict[str, Path]) -> None:
    """A new conversation's state lives only in its slot: saved to a file, erased, restored,
    its next turn finds its history cached again."""
    messages, first_prompt = _turn_two(server, 4)
    saved = {}
    for slot in (0, 1):
        url = f"{server.url}/slots/{slot}"
        body = {"filename": f"slot{slot}.bin"}
        saved[slot] = httpx.post(url, params={"action": "save"}, json=body).json()
        assert saved[slot]["id_slot"] == slot and saved[slot]["filename"] == body["filename"]
        assert saved[slot]["n_saved"] > 0 and saved[slot]["timings"]["save_ms"] > 0
        assert saved[slot]["n_written"] == (store["slots"] / body["filename"]).stat().st_size
    assert max(s["n_saved"] for s in saved.values()) >= first_prompt
    for slot in (0, 1):
        erased = httpx.post(f"{server.url}/slots/{slot}", params={"action": "erase"}).json()
        assert erased == {"id_slot": slot, "n_erased": saved[slot]["n_saved"]}
    for slot in (0, 1):
        body = {"filename": f"slot{slot}.bin"}
        r = httpx.post(f"{server.url}/slots/{slot}", params={"action": "restore"}, json=body)
        assert r.json()["n_restored"] == saved[slot]["n_saved"]
        assert r.json()["n_read"] == saved[slot]["n_written"]
    assert _cached(_chat(server, messages)) >= first_prompt

    url = f"{server.url}/slots/0"
    for params, payload in (
        ({"action": "save"}, {"filename": "../escape.bin"}),
        ({"action": "restore"}, {"filename": "missing.bin"}),
        ({"action": "save"}, {}),
        ({"action": "defrag"}, {}),
    ):
        r = httpx.post(url, params=params, json=payload)
        assert r.status_code == 400 and r.json()["error"]["message"], (params, r.text)
    r = httpx.post(f"{server.url}/slots/99", params={"action": "erase"})
    assert r.status_code == 400 and "slot" in r.json()["error"]["message"]


def test_restarted_server_reads_the_prompt_cache_dir(
    server: ServerProcess,
    smollm2_path: Path,
    model_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
    store: dict[str, Path],
) -> None:
    messages, first_prompt = _turn_two(server, 5)
    server.stop()  # writes the slots' and the RAM tier's states to --prompt-cache-dir
    assert list(store["cache"].glob("*/*.gstate"))
    again = cached_server(
        tmp_path_factory, "prompt-cache-restart", model_cache,
        "--model", SMOLLM2, "--parallel", "2",
        "--prompt-cache-dir", str(store["cache"]),
    )  # fmt: skip
    with running(again):
        assert _cached(_chat(again, messages)) >= first_prompt
        assert _metric(again, "ggufworker_prompt_cache_hits_total", tier="disk") == 1
        # without --slot-save-path, slot files are off
        r = httpx.post(
            f"{again.url}/slots/0", params={"action": "save"}, json={"filename": "x.bin"}
        )
        assert r.status_code == 400 and "--slot-save-path" in r.json()["error"]["message"]
