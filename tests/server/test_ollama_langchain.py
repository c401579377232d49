"""LangChain's ChatOllama (langchain-ollama) against a real `ggufworker serve`, unchanged:
invoke and stream, compared with the official `ollama` client's answer to the same chat."""

from __future__ import annotations

import ollama
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_ollama import ChatOllama

from tests.server.conftest import ServerProcess

MODEL = "smollm2:135m"
OPTIONS = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 12}


def _chat_model(server: ServerProcess) -> ChatOllama:
    return ChatOllama(
        model=MODEL, base_url=server.url, temperature=0, repeat_penalty=1.0, num_predict=12
    )


def test_chat_ollama_invoke_and_stream(ollama_server: ServerProcess) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage("Name a fruit.")]
    reference = ollama.Client(host=ollama_server.url).chat(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a fruit."},
        ],
        options=OPTIONS,
    )
    llm = _chat_model(ollama_server)

    answer = llm.invoke(messages)
    assert isinstance(answer, AIMessage)
    assert answer.content == reference.message.content
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == reference.prompt_eval_count
    assert answer.usage_metadata["output_tokens"] == reference.eval_count
    assert answer.response_metadata["done_reason"] == reference.done_reason

    chunks = list(llm.stream(messages))
    assert len(chunks) > 2  # streamed token by token, not in one piece
    assert "".join(str(c.content) for c in chunks) == reference.message.content
