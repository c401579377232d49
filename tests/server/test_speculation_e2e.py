"""Speculative decoding through a real server and the real clients.

``ggufworker serve --spec-type ngram`` answers an edit request (the model copies most of the
file it is given) with the same greedy text as a server without speculation, through the
``openai`` and ``anthropic`` clients; ``/metrics`` counts the drafts it verified and accepted
under llama-server's names; ``speculative: false`` in a request keeps it out of speculation (the
counters stay put); a draft model that does not share the vocabulary is one line and a non-zero
exit; a draft type without a draft model is a settings error.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOLLM2

from .conftest import ServerProcess, cached_server, running

CODE = (
    "def area(width, height):\n    return width * height\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n\n"
    "def volume(width, height, depth):\n    return width * height * depth\n"
)
EDIT = f"Rewrite this code with the function `area` renamed to `surface`:\n{CODE}"
LIST = "Repeat this list exactly:\n" + "\n".join(
    f"{i}. {w}" for i, w in enumerate("apples bread carrots dates eggs flour".split(), 1)
)


@pytest.fixture(scope="module")
def spec_server(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = cached_server(
        tmp_path_factory, "spec-server", model_cache, "--model", SMOLLM2, "--parallel", "2",
        "--spec-type", "ngram",
    )  # fmt: skip
    with running(server):
        yield server


@pytest.fixture(scope="module")
def plain_server(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = cached_server(
        tmp_path_factory, "plain-server", model_cache, "--model", SMOLLM2, "--parallel", "2"
    )
    with running(server):
        yield server


def _openai(server: ServerProcess, text: str, **extra: object) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    out = client.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=80,
        extra_body=extra or None,
    )
    return out.choices[0].message.content or ""


def _counters(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        m = re.search(rf'^ggufworker_spec_decode_{name}_total{{model="[^"]+"}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else -1.0
    return out


def test_ngram_server_answers_as_the_plain_one(
    spec_server: ServerProcess, plain_server: ServerProcess
) -> None:
    before = _counters(spec_server)
    for text in (EDIT, LIST):
        assert _openai(spec_server, text) == _openai(plain_server, text)
    after = _counters(spec_server)
    assert after["num_drafts"] > before["num_drafts"] >= 0
    assert after["num_accepted_tokens"] - before["num_accepted_tokens"] >= 10
    assert after["num_draft_tokens"] >= after["num_accepted_tokens"]


def test_anthropic_client_through_the_speculating_server(
    spec_server: ServerProcess, plain_server: ServerProcess
) -> None:
    import anthropic

    def ask(server: ServerProcess) -> str:
        client = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
        msg = client.messages.create(
            model=SMOLLM2, max_tokens=60, extra_body={"temperature": 0},
            messages=[{"role": "user", "content": LIST}],
        )  # fmt: skip
        return "".join(b.text for b in msg.content if b.type == "text")

    assert ask(spec_server) == ask(plain_server)


def test_a_request_can_turn_speculation_off(
    spec_server: ServerProcess, plain_server: ServerProcess
) -> None:
    before = _counters(spec_server)
    assert _openai(spec_server, EDIT, speculative=False) == _openai(plain_server, EDIT)
    assert _counters(spec_server) == before


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ggufworker", "serve", "--port", "0", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_draft_type_without_a_draft_model_is_a_settings_error() -> None:
    done = _serve("--spec-type", "draft")
    assert done.returncode != 0
    assert "draft model" in done.stderr
    assert "Traceback" not in done.stderr
