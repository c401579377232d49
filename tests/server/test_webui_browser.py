"""The web chat page in a real browser: Debian's chromium driven by Playwright, headless,
against a real `ggufworker serve` with an API key, SmolLM2 and Gemma 3.

The browser must be the one `scripts/install.py --dev` installs (/usr/bin/chromium); no
browser is downloaded. Without it the test fails (a skipped test would prove nothing).
A screenshot of the page is kept under the test's tmp dir and .cache/test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, SMOLLM2

from .conftest import ServerProcess, cached_server, running

CHROMIUM = Path("/usr/bin/chromium")
KEY = "browser-test-key"
ARTIFACTS = REPO / ".cache" / "test-artifacts"
XSS = (
    "Here is <script>window.__xss = 'script'</script> and "
    "<img src=x onerror=\"window.__xss = 'img'\"> and **bold** text and "
    "[a link](javascript:window.__xss='link')"
)


@pytest.fixture(scope="module")
def server(
    smollm2_path: Path,
    gemma3_path: Path,
    model_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    proc = cached_server(
        tmp_path_factory,
        "webui-server",
        model_cache,
        "--model", SMOLLM2,
        "--model", str(gemma3_path),
        "--parallel", "2",
        "--api-key", KEY,
    )  # fmt: skip
    with running(proc):
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
        "(`python3 scripts/install.py --dev` installs it with apt-get)"
    )
    with sync_playwright() as p:
        instance = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield instance
        instance.close()


def busy(server: ServerProcess, model: str) -> int:
    slots = httpx.get(
        f"{server.url}/slots",
        params={"model": model},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ).json()
    return sum(s["is_processing"] for s in slots)


def assistant_messages(page: Any) -> Any:
    return page.locator("#messages .message.assistant")


def wait_done(page: Any, count: int) -> Any:
    """The ``count``-th assistant message once it has finished streaming."""
    message = assistant_messages(page).nth(count - 1)
    message.wait_for(timeout=60_000)
    page.wait_for_function(
        "n => { const m = document.querySelectorAll('#messages .message.assistant');"
        " return m.length >= n && m[n - 1].dataset.state !== 'streaming'; }",
        arg=count,
        timeout=60_000,
    )
    return message


def test_chat_page(server: ServerProcess, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error":
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        # a browser at / lands on the page, which asks for the API key once
        page.goto(server.url + "/")
        assert page.url.endswith("/ui")
        page.locator("#key-dialog").wait_for(state="visible")
        page.fill("#key-input", KEY)
        page.click("#key-save")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
        options = page.locator("#model option").all_text_contents()
        assert any(SMOLLM2 in o for o in options) and any("gemma" in o for o in options)
        # SmolLM2 cannot see: no image button
        assert page.locator("#attach-label").is_hidden()

        # sampling settings: short greedy answers
        page.click("#settings-toggle")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "24")
        page.locator("#max-tokens").dispatch_event("change")
        page.locator("#temperature").dispatch_event("change")
        page.click("#settings-toggle")

        # a message typed and sent streams an answer into the page
        page.select_option("#model", SMOLLM2)
        page.fill("#input", "What is the capital of France?")
        page.press("#input", "Enter")
        first = wait_done(page, 1)
        assert first.get_attribute("data-state") == "done"
        assert first.locator(".content").inner_text().strip()
        assert SMOLLM2 in first.locator(".meta").inner_text()

        # the stop button stops a long answer, in the page and on the server
        page.click("#settings-toggle")
        page.fill("#max-tokens", "2000")
        page.locator("#max-tokens").dispatch_event("change")
        page.click("#settings-toggle")
        page.fill("#input", "Write a very long story about a dragon, a knight and a river.")
        page.press("#input", "Enter")
        page.wait_for_function(
            "() => { const m = document.querySelector('.message[data-state=\"streaming\"]');"
            " return m && m.querySelector('.content').textContent.length > 0; }",
            timeout=60_000,
        )
        assert busy(server, SMOLLM2) == 1
        page.click("#stop")
        stopped = wait_done(page, 2)
        assert stopped.get_attribute("data-state") == "stopped"
        assert stopped.locator(".content").inner_text().strip()
        deadline = time.monotonic() + 10
        while busy(server, SMOLLM2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy(server, SMOLLM2) == 0

        # switching models: the next answer comes from Gemma 3
        page.click("#settings-toggle")
        page.fill("#max-tokens", "16")
        page.locator("#max-tokens").dispatch_event("change")
        page.click("#settings-toggle")
        gemma = next(o for o in options if "gemma" in o).split(" ")[0]
        page.select_option("#model", gemma)
        page.fill("#input", "Say hello.")
        page.press("#input", "Enter")
        third = wait_done(page, 3)
        assert third.get_attribute("data-state") == "done"
        assert gemma in third.locator(".meta").inner_text()

        # a reload keeps the conversation, and does not ask for the key again
        before = page.locator("#messages .message").all_inner_texts()
        page.reload()
        page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
        assert page.locator("#messages .message").all_inner_texts() == before
        assert not page.locator("#key-dialog").is_visible()
        assert page.locator("#conversations li").count() == 1

        # model output is untrusted: an assistant message edited to hold HTML shows as text
        assistant_messages(page).nth(2).locator("[data-action=edit]").click()
        page.fill("#messages textarea.editor", XSS)
        page.click("#messages [data-action=save]")
        edited = assistant_messages(page).nth(2).locator(".content")
        check_inert(page, edited)

        # and so does a stored conversation (as another page or an old version left it)
        stored = {
            "id": "stored",
            "title": "stored",
            "model": SMOLLM2,
            "messages": [
                {"role": "user", "content": "<b>hi</b><script>window.__xss='user'</script>"},
                {"role": "assistant", "content": XSS, "model": SMOLLM2, "state": "done"},
            ],
        }
        page.evaluate(
            "conv => { const all = JSON.parse(localStorage.getItem('ggufworker.conversations'));"
            " all.unshift(conv); localStorage.setItem('ggufworker.conversations',"
            " JSON.stringify(all)); localStorage.setItem('ggufworker.current', conv.id); }",
            stored,
        )
        page.reload()
        page.wait_for_function("document.querySelectorAll('#messages .message').length == 2")
        check_inert(page, assistant_messages(page).first.locator(".content"))
        assert "<script>" in page.locator("#messages .message.user").first.inner_text()

        # regenerate answers again in the first conversation
        page.locator("#conversations li button.open").nth(1).click()
        page.wait_for_function("document.querySelectorAll('#messages .message').length == 6")
        assistant_messages(page).nth(2).locator("[data-action=regenerate]").click()
        regenerated = wait_done(page, 3)
        assert regenerated.get_attribute("data-state") == "done"

        shot = tmp_path / "webui.png"
        page.screenshot(path=str(shot), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "webui.png")
        assert shot.stat().st_size > 10_000
        assert not problems, "\n".join(problems)
    finally:
        context.close()


def check_inert(page: Any, content: Any) -> None:
    """The HTML in the message is shown as its characters, and nothing of it ran."""
    text = content.inner_text()
    assert "<script>" in text and "<img src=x onerror=" in text
    assert content.locator("script, img, iframe").count() == 0
    assert content.locator("strong").inner_text() == "bold"  # Markdown still renders
    assert content.locator("a").count() == 0  # a javascript: link stays text
    assert page.evaluate("() => window.__xss") is None
    assert json.dumps(page.evaluate("() => document.scripts.length")) == "2"
