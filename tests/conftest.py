"""Shared fixtures.

Every test runs with GGUFWORKER_* and caches pointed at its own tmp_path. Real models come from
the registry (PyPI sources work offline from the hub) into one session cache that persists across
runs (``.cache/test-models`` in the checkout, or $GGUFWORKER_TEST_CACHE), so a suite run downloads
each model at most once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"
# where tests/support.py writes evidence; a run may point it elsewhere, so it is kept
KEEP_SUPPORT = "GGUFWORKER_SUPPORT_RESULTS"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("GGUFWORKER_") and key not in ("GGUFWORKER_TEST_CACHE", KEEP_SUPPORT):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("GGUFWORKER_HOME", str(tmp_path / "ggufworker-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    env = os.environ.get("GGUFWORKER_TEST_CACHE")
    return Path(env) if env else REPO / ".cache" / "test-models"


def _pull(name: str, cache: Path) -> Path:
    from ggufworker.registry import pull

    return pull(name, home=cache, progress=False)


@pytest.fixture(scope="session")
def smollm2_path(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama arch, BPE), the default model."""
    return _pull(SMOLLM2, model_cache)


@pytest.fixture(scope="session")
def gemma3_path(model_cache: Path) -> Path:
    """Gemma-3-270m Q4_K_M (gemma3 arch, SentencePiece)."""
    return _pull(GEMMA3, model_cache)


@pytest.fixture(scope="session")
def llama_cpp_models_dir(model_cache: Path) -> Path:
    """llama.cpp's ``models/`` folder (vocabularies, chat templates) from the pinned sdist."""
    from .llama_cpp_data import llama_cpp_models

    return llama_cpp_models(model_cache)


# --- skips fail the run ---------------------------------------------------------------------
# A skipped test proves nothing, so a skip fails the session unless the test is marked
# ``requires_hardware`` (a GPU test on a CPU machine). Expected failures (xfail) are not skips.


class SkipGuard:
    """Collects skips that no ``requires_hardware`` marker allows."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a whole module skipped (importorskip, module-level skip)
            self.skipped.append(f"{report.nodeid}: {report.longrepr}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if "requires_hardware" in report.keywords:
            return
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        self.skipped.append(f"{report.nodeid}: {reason}")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            terminalreporter.section("skipped without requires_hardware (fails the run)")
            for line in self.skipped:
                terminalreporter.write_line(line)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(), "ggufworker-skip-guard")


@pytest.fixture(scope="session")
def smollm2_with_template(
    smollm2_path: Path, llama_cpp_models_dir: Path, model_cache: Path
) -> Callable[[str], Path]:
    """A factory: SmolLM2 with the chat template of another family (a name from llama.cpp's
    ``models/templates``, without ``.jinja``), so native tool-call and thinking formats can be
    served by a real model. Made once per template into the test cache."""
    import subprocess
    import sys

    def make(template: str) -> Path:
        source = llama_cpp_models_dir / "templates" / f"{template}.jinja"
        target = model_cache / "retemplated" / f"smollm2-{template}.gguf"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gguf.scripts.gguf_new_metadata",
                "--force",
                "--chat-template-file",
                str(source),
                str(smollm2_path),
                str(partial),
            ],
            check=True,
            capture_output=True,
        )
        os.replace(partial, target)
        return target

    return make
