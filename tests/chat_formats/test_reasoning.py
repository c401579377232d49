"""Reasoning split on real templates: the prompt is rendered by the template (which may open
the thinking block itself), the model's text is written in the family's syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufworker import chat_formats as cf

from .test_streaming import stream_all

THOUGHT, ANSWER = "Two plus two is four.", "The answer is 4."
ASK = [{"role": "user", "content": "What is 2+2?"}]


def _template(models_dir: Path, stem: str) -> str:
    return (models_dir / "templates" / f"{stem}.jinja").read_text()


def _setup(models_dir: Path, stem: str, **kwargs: object) -> tuple[cf.OutputParser, str]:
    source = _template(models_dir, stem)
    fmt, spec = cf.detect_format(source), cf.detect_reasoning(source)
    rendered = cf.render_with_tools(
        source, ASK, fmt=fmt, tools=None, bos_token="<s>", eos_token="</s>", reasoning=spec,
        template_kwargs=kwargs or None,
    )  # fmt: skip
    parser = cf.OutputParser(fmt, spec, forced_open=rendered.forced_open, parse_tools=False)
    return parser, rendered.prompt


@pytest.mark.parametrize(
    ("stem", "forced"),
    [
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", False),  # this copy closes the block
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", True),
        ("Qwen-Qwen3-0.6B", False),
        ("HuggingFaceTB-SmolLM3-3B", False),
    ],
)
def test_think_block_split_streamed_and_not(llama_cpp_models_dir: Path, stem: str, forced: bool):
    parser, prompt = _setup(llama_cpp_models_dir, stem)
    assert parser.forced_open is forced, prompt[-40:]
    spec = parser.reasoning
    assert spec is not None
    text = ("" if forced else f"{spec.start}\n") + f"{THOUGHT}\n{spec.end}\n\n{ANSWER}"
    result = parser.parse(text)
    assert (result.reasoning, result.content) == (THOUGHT, ANSWER)
    for pieces in [[text[:k], text[k:]] for k in range(len(text) + 1)] + [list(text)]:
        _, got = stream_all(parser, pieces)
        assert (got["reasoning"], got["content"]) == (THOUGHT, ANSWER), pieces
    # reasoning_format none: everything stays in content
    plain = cf.OutputParser(parser.fmt, spec, forced_open=forced, parse_tools=False,
                            split_thinking=False)  # fmt: skip
    assert plain.parse(text).content == text.strip() and plain.parse(text).reasoning == ""


def test_unfinished_thought_is_all_reasoning(llama_cpp_models_dir: Path) -> None:
    parser, _ = _setup(llama_cpp_models_dir, "deepseek-ai-DeepSeek-R1-Distill-Llama-8B")
    result = parser.parse("Still thinking about")
    assert (result.reasoning, result.content) == ("Still thinking about", "")


def test_enable_thinking_false_reaches_the_template(llama_cpp_models_dir: Path) -> None:
    _, on = _setup(llama_cpp_models_dir, "Qwen-Qwen3-0.6B")
    parser, off = _setup(llama_cpp_models_dir, "Qwen-Qwen3-0.6B", enable_thinking=False)
    assert on != off and off.rstrip().endswith("</think>")
    assert parser.parse(ANSWER).content == ANSWER and parser.parse(ANSWER).reasoning == ""


def test_gpt_oss_harmony_channels(llama_cpp_models_dir: Path) -> None:
    parser, prompt = _setup(llama_cpp_models_dir, "openai-gpt-oss-120b")
    assert parser.fmt.name == "harmony" and prompt.endswith("<|start|>assistant")
    text = (
        f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{ANSWER}"
    )
    assert (parser.parse(text).reasoning, parser.parse(text).content) == (THOUGHT, ANSWER)
    for pieces in [[text[:k], text[k:]] for k in range(len(text) + 1)] + [list(text)]:
        _, got = stream_all(parser, pieces)
        assert (got["reasoning"], got["content"]) == (THOUGHT, ANSWER), pieces
    call = (
        f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>commentary"
        ' to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    )
    with_tools = cf.OutputParser(parser.fmt, None, tools=[])
    result = with_tools.parse(call)
    assert result.reasoning == THOUGHT
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
