"""Backend sampling through the server and the openai client: a seeded chat reply is the same
with ``--backend-sampling on`` (llama.cpp's graph cuts each row to its top-k, the host draws)
as with ``off`` (the host samples the copied logits), sent alone or with other requests, and
``/v1/models`` says which one runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOLLM2
from tests.server.conftest import ServerProcess, cached_server, chat_reply, running

PROMPTS = [
    "Tell me about the sea.",
    "Name a colour and say why you like it.",
    "Write one line of a poem about rain.",
    "What do cats do all day?",
]


def _reply(server: ServerProcess, content: str, seed: int) -> str:
    return chat_reply(
        server, content, temperature=0.9, top_p=0.95, seed=seed, max_tokens=24,
        extra_body={"top_k": 40, "min_p": 0.05},
    )  # fmt: skip


def _replies(server: ServerProcess) -> tuple[list[str], list[str], str]:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda i: _reply(server, PROMPTS[i], 10 + i), range(len(PROMPTS))))
    alone = [_reply(server, PROMPTS[0], 10)]
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    meta = next(m for m in models if m["id"] == SMOLLM2)["meta"]
    return together, alone, meta["sampling"]


@pytest.mark.slow
def test_seeded_replies_are_the_same_with_backend_sampling_on_and_off(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    results = {}
    reseeded: list[str] = []
    for mode in ("on", "off"):
        proc = cached_server(
            tmp_path_factory, f"sampling-{mode}", model_cache, "--parallel", "4",
            "--backend-sampling", mode,
        )  # fmt: skip
        with running(proc):
            results[mode] = _replies(proc)
            if mode == "on":
                reseeded = [_reply(proc, p, 99 + i) for i, p in enumerate(PROMPTS)]
    on, off = results["on"], results["off"]
    assert on[2] == "backend" and off[2] == "host"
    assert on[0] == off[0]
    assert on[1][0] == on[0][0]  # alone as among the others
    assert len(set(on[0])) == len(PROMPTS)
    # the seed matters: other seeds, another reply for at least one prompt
    assert reseeded != on[0]
