"""Every vendored llama.cpp template: render call history through it, parse it back with
the format the detector picks, get the same calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufworker import chat_formats as cf
from ggufworker.engine.chat import TemplateError

from .helpers import CALLS, TOOLS, rendered_turn

# Templates that cannot render an assistant turn with calls, with why; the detector's pick
# for each is asserted below so the list stays honest.
NOT_RENDERING = {
    "fireworks-ai-llama-3-firefunction-v2": "generic",  # needs a `functions` variable
    # renders no calls for an assistant message with empty content
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseek_r1",
    # call syntaxes with no parser yet (<|open|>call tool=...; ]<]minimax[>[ separators)
    "Kimi-K3": "generic",
    "MiniMax-M3": "hermes",
}


# Templates that write only the first of several calls (GigaChat, GPT-OSS), or each further
# call as a new message that ends the turn (Muse): the first call must parse.
ONE_CALL_PER_TURN = {
    "GigaChat3-10B-A1.8B",
    "GigaChat3.1-10B-A1.8B",
    "openai-gpt-oss-120b",
    "muse-glimmer",
}


def _templates(models_dir: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((models_dir / "templates").glob("*.jinja"))}


@pytest.fixture(scope="module")
def templates(llama_cpp_models_dir: Path) -> dict[str, str]:
    found = _templates(llama_cpp_models_dir)
    assert len(found) >= 70
    return found


def test_round_trip_every_template(templates: dict[str, str]) -> None:
    failures: dict[str, str] = {}
    single: set[str] = set()
    rendered = 0
    for stem, source in templates.items():
        fmt = cf.detect_format(source)
        for n in (1, 2):
            try:
                prompt, text = rendered_turn(source, fmt, n)
            except TemplateError as exc:
                if n == 2 and "single tool-call" in str(exc):
                    single.add(stem)  # the template itself refuses parallel calls
                    continue
                failures[stem] = f"render: {exc}"
                break
            parser = cf.OutputParser(
                fmt, None, tools=TOOLS, split_thinking=False, lead=fmt.output_lead(prompt)
            )
            got = [(c.name, json.loads(c.arguments)) for c in parser.parse(text).tool_calls]
            want = [(name, args) for name, args in CALLS[:n]]
            if n == 2 and stem in ONE_CALL_PER_TURN:
                want = want[:1]
            if got != want:
                failures[stem] = f"{fmt.name} parsed {got} from {text!r}"
                break
        else:
            rendered += 1
    unexpected = {k: v for k, v in failures.items() if k not in NOT_RENDERING}
    assert not unexpected, "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    for stem, fmt_name in NOT_RENDERING.items():
        assert stem in failures, f"{stem} renders now: take it off NOT_RENDERING"
        assert cf.detect_format_name(templates[stem]) == fmt_name
    assert rendered == len(templates) - len(NOT_RENDERING)
