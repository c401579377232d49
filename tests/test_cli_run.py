"""`ggufworker run`, `ps`, `show`, `rm`, `stop`, `cp` and `completion` as a user types them:
real processes against a real `ggufworker serve`, and `run` in-process without one; the
interactive chat driven through a pseudo-terminal (pexpect).

The server gets a cache root of its own holding a link to SmolLM2's cached file, so `rm`
deletes that link, never the session's model cache.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import REPO, SMOLLM2
from tests.server.conftest import COMMON, ServerProcess, free_port, running

ENV_PATH = os.pathsep.join([str(REPO / "src"), str(REPO)])
# a 1x1 PNG, to check that images are refused by a model that cannot see
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def private_home(smollm2_path: Path, home: Path) -> Path:
    """A cache root holding SmolLM2 (a hard link, and its verification marker)."""
    from ggufworker.registry import load_registry
    from ggufworker.registry.cache import marker_path, model_path

    target = model_path(home, load_registry().get(SMOLLM2))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(smollm2_path, target)
    shutil.copy2(marker_path(smollm2_path), marker_path(target))
    return home


@pytest.fixture(scope="module")
def server(
    smollm2_path: Path, gemma3_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("cli-server")
    home = private_home(smollm2_path, logs / "cache")
    proc = ServerProcess(
        [
            *COMMON,
            "--model", SMOLLM2,
            "--model", str(gemma3_path),
            "--parallel", "2",
            "--offline",
            "--home", str(home),
        ],
        logs / "server.log",
        home=home,
    )  # fmt: skip
    with running(proc):
        yield proc


def env_for(url: str | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ENV_PATH, env.get("PYTHONPATH", "")])
    env["GGUFWORKER_HOST"] = url or f"http://127.0.0.1:{free_port()}"  # nobody there
    env.update(extra)
    return env


def cli(
    *args: str, url: str | None, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ggufworker", *args],
        env=env_for(url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command prints (nothing else on stderr, no traceback)."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def greedy_reply(server: ServerProcess, model: str, content: str, max_tokens: int) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    return str(response.json()["choices"][0]["message"]["content"])


def busy_slots(server: ServerProcess, model: str) -> int:
    slots = httpx.get(f"{server.url}/slots", params={"model": model}, timeout=10).json()
    return sum(s["is_processing"] for s in slots)


# --- run, one prompt ----------------------------------------------------------------------------


def test_run_with_a_prompt_answers_through_the_server(server: ServerProcess) -> None:
    prompt = "Name a colour of the sky."
    result = cli("run", SMOLLM2, prompt, "--max-tokens", "16", "--temperature", "0", url=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # the server's own greedy answer to the same chat: the command really asked it
    assert result.stdout.strip() == greedy_reply(server, SMOLLM2, prompt, 16).strip()


def test_run_with_a_prompt_in_process(model_cache: Path) -> None:
    # no server answers at GGUFWORKER_HOST: the model is loaded in the command itself
    result = cli(
        "run", SMOLLM2, "Say hello.", "--max-tokens", "12", "--temperature", "0",
        "--offline", "--threads", "1",
        url=None,
        GGUFWORKER_HOME=str(model_cache),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_run_reads_the_prompt_from_stdin(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ggufworker", "run", SMOLLM2, "--max-tokens", "8"],
        input="Say yes.\n",
        env=env_for(server.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_run_bad_input_is_one_line(server: ServerProcess) -> None:
    assert "no-such-model" in error_line(cli("run", "no-such-model", "hi", url=server.url))
    dead = f"http://127.0.0.1:{free_port()}"
    line = error_line(cli("run", SMOLLM2, "hi", "--host", dead, url=server.url))
    assert "no ggufworker server answers" in line


# --- run, interactive ---------------------------------------------------------------------------


def spawn(server: ServerProcess, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "ggufworker", "run", SMOLLM2, *args],
        env=env_for(server.url),
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
        cwd=str(REPO),
    )


def turn(child: pexpect.spawn, text: str) -> str:
    """Send a line, wait for the next prompt; what the program printed in between."""
    child.sendline(text)
    child.expect_exact(text)  # the terminal's echo
    child.expect_exact(">>> ")
    return str(child.before)


def test_interactive_chat(server: ServerProcess, tmp_path: Path) -> None:
    child = spawn(server, "--temperature", "0", "--max-tokens", "24")
    try:
        child.expect_exact(">>> ")
        first = turn(child, "What is the capital of France?")
        assert first.strip()
        second = turn(child, "And of Italy?")
        assert second.strip()

        assert "Set parameter 'temperature' to '0.7'." in turn(
            child, "/set parameter temperature 0.7"
        )
        assert "Set system message." in turn(child, "/set system You answer briefly.")
        shown = turn(child, "/show parameters")
        assert "temperature" in shown and "0.7" in shown
        info = turn(child, "/show info")
        assert "architecture" in info and "llama" in info
        assert "unknown parameter" in turn(child, "/set parameter warmth 3")

        # a multi-line message between triple quotes
        child.sendline('"""Say two words:')
        child.expect_exact("... ")
        child.sendline('red and blue."""')
        child.expect_exact('blue."""')
        child.expect_exact(">>> ")
        assert str(child.before).strip()

        # images: this model cannot see, so the message is refused in one line
        image = tmp_path / "dot.png"
        image.write_bytes(PNG)
        refused = turn(child, f"What is in {image}?")
        assert "cannot see images" in refused and "dot.png" in refused

        # Ctrl-C stops an answer without leaving the chat
        assert "num_predict" in turn(child, "/set parameter num_predict 2000")
        story = "Write a very long story about a dragon, a knight and a river."
        child.sendline(story)
        child.expect_exact(story)
        deadline = time.monotonic() + 30
        while busy_slots(server, SMOLLM2) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        child.expect(r"\w", timeout=30)  # the answer is streaming
        assert busy_slots(server, SMOLLM2) == 1
        child.sendintr()
        child.expect_exact(">>> ", timeout=30)
        deadline = time.monotonic() + 10
        while busy_slots(server, SMOLLM2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy_slots(server, SMOLLM2) == 0  # the server stopped generating too
        assert "Use Ctrl + d" not in str(child.before)

        # and the chat goes on
        turn(child, "/set parameter num_predict 12")
        assert turn(child, "Say hello.").strip()
        assert "Cleared" in turn(child, "/clear")

        # Ctrl-C at the prompt only says how to leave
        child.sendintr()
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        child.expect_exact(">>> ")

        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


# --- ps, show, stop, cp, rm, completion --------------------------------------------------------


def test_ps_lists_loaded_models(server: ServerProcess) -> None:
    result = cli("ps", url=server.url)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["NAME", "STATUS", "SIZE"] and "UNTIL" in header
    row = next(r for r in rows if r.startswith(SMOLLM2))
    assert "loaded" in row and "4096" in row and "Forever" in row
    dead = f"http://127.0.0.1:{free_port()}"
    assert "no ggufworker server answers" in error_line(cli("ps", "--host", dead, url=None))


def test_show_describes_a_model(server: ServerProcess) -> None:
    result = cli("show", SMOLLM2, url=server.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("Model", "architecture", "llama", "quantization", "Q4_1", "Capabilities",
                 "completion", "Template", "<|im_start|>", "License", "apache-2.0"):  # fmt: skip
        assert text in out, out
    template = cli("show", SMOLLM2, "--template", url=server.url)
    assert template.returncode == 0 and "add_generation_prompt" in template.stdout
    assert "not-a-model" in error_line(cli("show", "not-a-model", url=server.url))


def test_show_without_a_server_reads_the_cache(model_cache: Path) -> None:
    result = cli("show", SMOLLM2, url=None, GGUFWORKER_HOME=str(model_cache))
    assert result.returncode == 0, result.stderr
    assert "llama" in result.stdout and "context length" in result.stdout


def test_stop_unloads_a_model(server: ServerProcess, gemma3_path: Path) -> None:
    gemma = gemma3_path.stem
    httpx.post(f"{server.url}/models/load", json={"model": gemma}, timeout=120)
    before = cli("ps", url=server.url).stdout
    assert gemma in before
    result = cli("stop", gemma, url=server.url)
    assert result.returncode == 0, result.stderr
    assert f"stopped '{gemma}'" in result.stdout
    assert gemma not in cli("ps", url=server.url).stdout
    assert "nope" in error_line(cli("stop", "nope", url=server.url))


def test_cp_serves_a_model_under_another_name(server: ServerProcess) -> None:
    result = cli("cp", SMOLLM2, "my-assistant", url=server.url)
    assert result.returncode == 0, result.stderr
    assert "copied" in result.stdout
    assert greedy_reply(server, "my-assistant", "Hi", 4)
    assert "nope" in error_line(cli("cp", "nope", "other", url=server.url))


def test_completion_scripts() -> None:
    bash = cli("completion", "bash", url=None)
    assert bash.returncode == 0 and "complete" in bash.stdout and "ggufworker" in bash.stdout
    assert "run" in bash.stdout and "--max-tokens" in bash.stdout
    zsh = cli("completion", "zsh", url=None)
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef ggufworker")
    completion = subprocess.run(
        ["bash", "-c", "source /dev/stdin; complete -p ggufworker"],
        input=bash.stdout,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completion.returncode == 0 and "ggufworker" in completion.stdout


def test_rm_refuses_a_loaded_model_unless_forced(server: ServerProcess) -> None:
    from ggufworker.registry import load_registry
    from ggufworker.registry.cache import model_path

    cached = model_path(server.log_path.parent / "cache", load_registry().get(SMOLLM2))
    assert cached.is_file()
    refused = cli("rm", SMOLLM2, url=server.url)
    assert "in use" in error_line(refused) and "--force" in refused.stderr
    assert cached.is_file()
    result = cli("rm", SMOLLM2, "--force", url=server.url)
    assert result.returncode == 0, result.stderr
    assert f"deleted '{SMOLLM2}'" in result.stdout
    assert not cached.exists()
    assert SMOLLM2 in error_line(cli("rm", SMOLLM2, url=server.url))
