"""Support-matrix evidence: tests record what they proved per model family.

A family test calls :func:`record` with the figure it checked and whether the check passed,
*before* asserting, so a failure is recorded too. Records are JSON lines in
``$GGUFWORKER_SUPPORT_RESULTS`` (default ``.cache/support-results/<backend>.jsonl`` in the
checkout). The matrix generator reads these files; docs/MODEL_SUPPORT.md is never edited by hand.

Checks in use (one column each): ``converter``, ``tokenizer``, ``f32``, ``f16``, ``bf16``,
``q8_0``, ``q4_k_m``, ``engine`` (batched generation), ``server`` (served through the real
OpenAI client). ``value`` is the relative error where a check has one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def backend() -> str:
    """``cuda``/``metal``/... when llama.cpp offloads to a GPU here, else ``cpu``."""
    from ggufworker.engine.devices import gpu_devices

    # not llama_supports_gpu_offload(): a CPU-only build with the RPC backend says true there
    if not gpu_devices():
        return "cpu"
    return os.environ.get("GGUFWORKER_SUPPORT_BACKEND", "gpu")


def results_file() -> Path:
    env = os.environ.get("GGUFWORKER_SUPPORT_RESULTS")
    if env:
        return Path(env)
    return REPO / ".cache" / "support-results" / f"{backend()}.jsonl"


def record(
    family: str,
    check: str,
    *,
    passed: bool,
    value: float | None = None,
    detail: str = "",
) -> None:
    """Append one piece of evidence for ``family`` (a models.yaml architecture name)."""
    path = results_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {
        "family": family,
        "check": check,
        "passed": bool(passed),
        "value": None if value is None else float(value),
        "detail": detail,
        "backend": backend(),
        "date": _dt.date.today().isoformat(),
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
