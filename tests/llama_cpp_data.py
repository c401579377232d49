"""Test data from llama.cpp, fetched from the package index like the test models.

The pinned llama-cpp-python sdist vendors llama.cpp, whose ``models/`` folder holds real
vocabularies of many model families (``ggml-vocab-*.gguf`` with their test texts) and real chat
templates (``models/templates/*.jinja``). :func:`llama_cpp_models` downloads the sdist once with
pip, extracts only that folder into the test cache and returns its path; later runs reuse it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_MEMBER = re.compile(r"^[^/]+/vendor/llama\.cpp/models/(?P<rest>.+)$")


def pinned_llama_cpp_version() -> str:
    """The exact llama-cpp-python version pyproject.toml pins."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"llama-cpp-python==([^"]+)"', text)
    if found is None:
        raise RuntimeError("pyproject.toml pins no llama-cpp-python version")
    return found.group(1)


def llama_cpp_models(cache: Path) -> Path:
    """``vendor/llama.cpp/models`` of the pinned sdist, extracted under ``cache``.

    Raises:
        RuntimeError: the sdist could not be downloaded (the message names the command).
    """
    return _extracted(cache, "models", _MEMBER)


#: llama.cpp's own converters: the HF and LoRA scripts with the packages they import
_SCRIPTS = re.compile(
    r"^[^/]+/vendor/llama\.cpp/(?P<rest>convert_hf_to_gguf\.py|convert_lora_to_gguf\.py|"
    r"conversion/.+|gguf-py/.+)$"
)


def llama_cpp_converters(cache: Path) -> Path:
    """A folder with llama.cpp's ``convert_lora_to_gguf.py`` (and ``convert_hf_to_gguf.py``,
    ``conversion/``, ``gguf-py/``) from the pinned sdist: the peer of our converters. Run the
    scripts with ``PYTHONPATH=<folder>/gguf-py``.

    Raises:
        RuntimeError: the sdist could not be downloaded (the message names the command).
    """
    return _extracted(cache, "converters", _SCRIPTS)


def _extracted(cache: Path, what: str, members: re.Pattern[str]) -> Path:
    """The sdist's files matching ``members`` (their ``rest`` group kept as the path) in
    ``cache/llama.cpp-<what>-<version>``, downloaded and extracted once."""
    version = pinned_llama_cpp_version()
    target = cache / f"llama.cpp-{what}-{version}"
    if (target / ".complete").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".sdist-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--quiet", "-d", tmp, f"llama-cpp-python=={version}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        staging = Path(tmp) / what
        with tarfile.open(archives[0]) as tar:
            for member in tar:
                match = members.match(member.name)
                if match is None or not member.isfile():
                    continue
                dest = staging / match.group("rest")
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        (staging / ".complete").write_text(version)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
