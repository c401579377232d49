"""The thinking budget: a cap on reasoning tokens, after which the engine writes the end marker.

Reference: the same greedy request without a budget. Up to the cap the two outputs are the
same tokens; then the capped one holds the end marker and goes on to an answer. A cap the
model never reaches changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufworker import chat_formats as cf
from ggufworker.engine import Engine
from ggufworker.engine.budget import ThinkingBudget
from ggufworker.engine.types import GenerationRequest, ReasoningBudget, SamplingParams
from ggufworker.server.core.chat import ChatRequest, plan_chat

# a template whose generation prompt opens the thinking block ("<think>\n"): SmolLM2 never
# closes it by itself, so without a cap it thinks until max_tokens
R1 = "llama-cpp-deepseek-r1"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def engine(smollm2_path: Path) -> Iterator[Engine]:
    eng = Engine.load(smollm2_path, n_ctx=2048, n_parallel=2, n_batch=256)
    yield eng
    eng.close()


def _run(
    engine: Engine, template: str, budget: int | None, max_tokens: int
) -> tuple[str, list[int]]:
    req = ChatRequest(
        messages=ASK,
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        reasoning_budget=budget,
    )
    plan = plan_chat(req, template=template, bos_token="", eos_token="<|im_end|>")
    assert plan.parser.forced_open
    out = engine.generate(
        GenerationRequest(prompt=plan.prompt, params=plan.params, parse_special=True)
    )
    return out.text, out.token_ids


def test_budget_closes_the_block_after_the_cap(engine: Engine, llama_cpp_models_dir: Path) -> None:
    template = (llama_cpp_models_dir / "templates" / f"{R1}.jinja").read_text()
    free_text, free_ids = _run(engine, template, None, 48)
    assert "</think>" not in free_text  # the reference thinks to max_tokens
    cap = 12
    text, ids = _run(engine, template, cap, 48)
    end = engine.tokenize("</think>", add_special=False, parse_special=True)
    # the first `cap` tokens are the model's own, exactly as without a budget
    assert ids[:cap] == free_ids[:cap]
    # then the end marker, written by the engine in place of what the model drew
    assert ids[cap : cap + len(end)] == end
    assert text.count("</think>") == 1
    spec = cf.detect_reasoning(template)
    reasoning, answer = cf.split_reasoning(text, spec, forced_open=True, partial=False)
    assert len(engine.tokenize(reasoning, add_special=False)) <= cap + 1
    assert answer.strip()  # the model went on to answer


def test_budget_of_zero_skips_thinking(engine: Engine, llama_cpp_models_dir: Path) -> None:
    template = (llama_cpp_models_dir / "templates" / f"{R1}.jinja").read_text()
    text, ids = _run(engine, template, 0, 24)
    end = engine.tokenize("</think>", add_special=False, parse_special=True)
    assert ids[: len(end)] == end
    assert text.startswith("</think>")


def test_unreached_budget_changes_nothing(engine: Engine, llama_cpp_models_dir: Path) -> None:
    template = (llama_cpp_models_dir / "templates" / f"{R1}.jinja").read_text()
    free = _run(engine, template, None, 24)
    assert _run(engine, template, 1000, 24) == free


def _pieces(*texts: str) -> tuple[list[int], dict[int, str]]:
    table = dict(enumerate(texts))
    return list(table), table


def test_tracker_waits_for_the_model_to_open_the_block() -> None:
    ids, table = _pieces("<th", "ink>", " a", " b", " c", " d", "x")
    budget = ThinkingBudget(ReasoningBudget(2, "<think>", "</think>"), [100, 101], table.get)  # type: ignore[arg-type]
    written = [budget.step(t)[0] for t in ids]
    # opened by the first two pieces; two thinking tokens; then the end marker's two tokens
    assert written == [0, 1, 2, 3, 100, 101, 6]
    assert budget.output == written


def test_tracker_leaves_an_answer_without_thinking_alone() -> None:
    ids, table = _pieces("Hello", " world", " a", " b")
    budget = ThinkingBudget(ReasoningBudget(1, "<think>", "</think>"), [100], table.get)  # type: ignore[arg-type]
    assert [budget.step(t)[0] for t in ids] == ids


def test_tracker_sees_the_model_close_the_block_itself() -> None:
    ids, table = _pieces(" a", "</", "think>", " b", " c", " d")
    budget = ThinkingBudget(
        ReasoningBudget(3, "<think>", "</think>", open_at_start=True),
        [100],
        table.get,  # type: ignore[arg-type]
    )
    assert [budget.step(t)[0] for t in ids] == ids
