"""Converted classic families served by a real `ggufworker serve`, driven by the `openai` client.

One family per quirk group: MPT (ALiBi, clip_qkv, 6 heads), Falcon-7B (multi-query attention,
parallel attention/MLP), Phi-2 (parallel residual, partial rotary). Their tiny checkpoints are
converted to f32 and served together by one server process. Greedy completions requested
concurrently must equal the same requests sent one at a time, and both must equal what the
engine generates for the prompt in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from converters.st2gguf import convert
from tests.server.conftest import ServerProcess, serving_files
from tests.support import record

from . import builders
from .reference import engine_greedy_text
from .test_families_classic import FAMILIES

SERVED = ("mpt-clip-6-heads", "falcon-7b", "phi2")
PROMPTS = ("def convert(src, dst):", "The output is written to a temporary file")
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def served_files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """variant -> its f32 GGUF (named after the variant: the served model name)."""
    files = {}
    for variant in SERVED:
        _family, make_config, edit = FAMILIES[variant]
        root = tmp_path_factory.mktemp(f"served-{variant}")
        src = builders.build_tiny(variant, root / "src", tiny_tokenizer, config=make_config())
        if edit is not None:
            edit(src)
        out = root / f"{variant}.gguf"
        files[variant] = convert(src, out, outtype="f32", pre_tokenizer="gpt-2")
    return files


@pytest.fixture(scope="module")
def server(served_files, model_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    with serving_files(
        tmp_path_factory, "classic-families", model_cache, served_files, "--parallel", "4"
    ) as proc:
        yield proc


async def _complete(client: openai.AsyncOpenAI, model: str, prompt: str):
    return await client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("variant", SERVED)
def test_served_greedy_equals_alone_and_engine(variant, server, served_files):
    family = FAMILIES[variant][0]
    model = served_files[variant].stem

    async def run() -> tuple[list, list]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        together = await asyncio.gather(*(_complete(client, model, p) for p in PROMPTS))
        alone = [await _complete(client, model, p) for p in PROMPTS]
        await client.close()
        return list(together), alone

    together, alone = asyncio.run(run())
    want = [engine_greedy_text(served_files[variant], p, MAX_TOKENS) for p in PROMPTS]
    got_together = [r.choices[0].text for r in together]
    got_alone = [r.choices[0].text for r in alone]
    lengths = [r.usage.completion_tokens for r in together + alone]
    ok = got_together == got_alone == want and lengths == [MAX_TOKENS] * len(lengths)
    record(family, "server", passed=ok, detail=variant)
    assert all(r.model == model for r in together + alone)
    assert got_together == got_alone == want
    assert lengths == [MAX_TOKENS] * len(lengths)
