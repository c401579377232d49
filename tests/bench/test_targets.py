"""The HTTP bench's stream reader: event-stream lines end only at CR and LF.

A sampled token can be U+2028 or U+0085, which a server's UTF-8 JSON carries unescaped (both
ours and llama-server do); a reader that splits lines at every Unicode line boundary (as
``httpx``'s ``aiter_lines`` does) then cuts a JSON chunk in two.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from ggufworker.bench.targets import _http_stream

TEXTS = ["a", "\u2028", "b\u0085c", "\r\n", "d"]


def _body() -> bytes:
    events = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in TEXTS]
    events.append({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    events.append({"choices": [], "usage": {"completion_tokens": len(TEXTS)}})
    raw = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    return (raw + "data: [DONE]\n\n").encode("utf-8")


def test_stream_reader_keeps_unicode_line_separators_inside_events() -> None:
    body = _body()
    assert "\u2028".encode() in body

    def handler(request: httpx.Request) -> httpx.Response:
        # delivered in small pieces: lines and UTF-8 characters split across reads
        async def pieces():  # type: ignore[no-untyped-def]
            for i in range(0, len(body), 7):
                yield body[i : i + 7]

        return httpx.Response(200, content=pieces(), headers={"content-type": "text/event-stream"})

    async def run():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await _http_stream(client, "http://test/v1/completions", {})

    stream = asyncio.run(run())
    assert stream.tokens == len(TEXTS)
    assert len(stream.token_times) == len(TEXTS)
    assert stream.completed
