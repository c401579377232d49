"""Benchmark: this converter vs llama.cpp's convert_hf_to_gguf.py on the same checkpoint.

Both run as child processes, alternately, several times; each run's wall time and peak
resident memory (``wait4`` rusage of that child) are recorded and the medians reported. The
two outputs are also compared tensor by tensor.

    python -m converters.bench make /tmp/llama1b --tokenizer-from CHECKPOINT_WITH_TOKENIZER
    python -m converters.bench run /tmp/llama1b \\
        --reference /path/to/llama.cpp/convert_hf_to_gguf.py --outtype f16 --runs 3

``make`` builds a random-weight Llama-3.2-1B-shaped bf16 checkpoint (needs torch and
transformers; the converter itself does not). The reference script needs torch too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LLAMA_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    },
}  # fmt: skip

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_checkpoint(out: Path, tokenizer_from: Path, *, seed: int = 0) -> Path:
    """Write a random Llama-3.2-1B-shaped bf16 checkpoint (torch + transformers needed)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {k: v for k, v in LLAMA_1B.items() if k != "model_type"}
    cfg = LlamaConfig(**kwargs)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, out / name)
    return out


def _measure(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in KiB, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
    return wall, int(usage.ru_maxrss), proc.returncode


def compare_outputs(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(identical tensors, tensors in common, names that differ)."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    common = sorted(ta.keys() & tb.keys())
    differ = [
        n for n in common
        if ta[n].tensor_type != tb[n].tensor_type
        or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))
    ]  # fmt: skip
    return len(common) - len(differ), len(common), differ + sorted(ta.keys() ^ tb.keys())


def run_bench(
    src: Path, reference: Path, *, outtype: str, runs: int, workdir: Path, python: str
) -> dict:
    """Alternate both converters ``runs`` times; return medians and the output comparison."""
    env = dict(os.environ)
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(repo), env.get("PYTHONPATH", "")])
    ours_out, ref_out = workdir / "ours.gguf", workdir / "reference.gguf"
    ours_cmd = [python, "-m", "converters.st2gguf", str(src), "--outfile", str(ours_out),
                "--outtype", outtype, "--force", "--no-progress"]  # fmt: skip
    ref_cmd = [python, str(reference), str(src), "--outfile", str(ref_out), "--outtype", outtype]
    results: dict[str, list[tuple[float, int]]] = {"ours": [], "reference": []}
    for i in range(runs):
        for name, cmd, out in (("ours", ours_cmd, ours_out), ("reference", ref_cmd, ref_out)):
            out.unlink(missing_ok=True)
            wall, rss, rc = _measure(cmd, env)
            if rc != 0:
                raise SystemExit(f"{name} failed (exit {rc})")
            results[name].append((wall, rss))
            print(f"run {i + 1} {name:9s} wall {wall:7.1f} s  peak RSS {rss / 1024:8.0f} MiB",
                  flush=True)  # fmt: skip
    same, common, differ = compare_outputs(ours_out, ref_out)
    summary: dict[str, Any] = {
        name: {
            "wall_s_median": statistics.median(w for w, _ in rows),
            "peak_rss_mib_median": statistics.median(r for _, r in rows) / 1024,
            "runs": [{"wall_s": round(w, 2), "peak_rss_mib": round(r / 1024)} for w, r in rows],
        }
        for name, rows in results.items()
    }
    summary["identical_tensors"] = f"{same}/{common}"
    summary["differing_tensors"] = differ[:20]
    summary["output_bytes"] = {"ours": ours_out.stat().st_size, "reference": ref_out.stat().st_size}
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converters.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m converters.bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="build a random Llama-3.2-1B-shaped bf16 checkpoint")
    mk.add_argument("out", type=Path)
    mk.add_argument("--tokenizer-from", type=Path, required=True,
                    help="checkpoint folder whose tokenizer files are copied")  # fmt: skip
    rb = sub.add_parser("run", help="time both converters on a checkpoint")
    rb.add_argument("src", type=Path)
    rb.add_argument("--reference", type=Path, required=True,
                    help="path to llama.cpp's convert_hf_to_gguf.py")  # fmt: skip
    rb.add_argument("--outtype", default="f16")
    rb.add_argument("--runs", type=int, default=3)
    rb.add_argument("--workdir", type=Path, help="where outputs go (default: a temp dir)")
    rb.add_argument("--python", default=sys.executable, help="interpreter for both converters")
    args = parser.parse_args(argv)
    if args.cmd == "make":
        print(make_checkpoint(args.out, args.tokenizer_from))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="st2gguf-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        summary = run_bench(args.src, args.reference, outtype=args.outtype, runs=args.runs,
                            workdir=workdir, python=args.python)  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
