"""`ggufworker bench --lora-adapters`: the LoRA mode runs end to end on a real model with tiny
settings (made-up adapters, two clients) and reports both phases, their ratio and the memory
per adapter. The numbers themselves are measured on a quiet machine (docs/benchmarks/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_lora_bench_runs(smollm2_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ggufworker", "bench", "--model", str(smollm2_path),
         "--lora-adapters", "2", "--lora-clients", "2", "--tokens", "4", "--runs", "1",
         "--threads", "1", "--ctx-size", "256", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["adapters"] == 2 and result["clients"] == 2
    assert result["base"]["aggregate_tps"] > 0 and result["lora"]["aggregate_tps"] > 0
    assert result["ratio"] == result["lora"]["aggregate_tps"] / result["base"]["aggregate_tps"]
    # SmolLM2-135M: 30 layers x 7 projections, rank 8, f32
    assert result["adapter_bytes"][0] > 5 << 20
