"""Conversion safety and input handling: --force, interruption, sharding, clear errors, K-quants."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from converters import writer
from converters.st2gguf import convert
from converters.tokenizer import UnknownPreTokenizerError
from converters.verify import check_structure
from ggufworker.errors import (
    ConversionError,
    DiskFullError,
    UnsupportedArchitectureError,
    VerificationError,
)

from . import builders
from .reference import hf_logits, llama_logits, rel_err

REPO = builders.REPO


def _dir_listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_existing_target_needs_force(tiny_checkpoint, tmp_path):
    target = tmp_path / "out.gguf"
    target.write_bytes(b"keep me")
    with pytest.raises(ConversionError, match="force"):
        convert(tiny_checkpoint("qwen2"), target, outtype="f16")
    assert target.read_bytes() == b"keep me"
    convert(tiny_checkpoint("qwen2"), target, outtype="f16", force=True)
    assert gguf.GGUFReader(target).tensors


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_conversion_leaves_no_file(
    tiny_checkpoint, tmp_path, monkeypatch, exc, outtype
):
    """Ctrl-C (or a crash) half-way: no target, no temp or intermediate file; an existing
    target survives."""
    real = writer._write_tensor
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise exc("stop")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "_write_tensor", flaky)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(exc):
        convert(tiny_checkpoint("llama"), out_dir / "m.gguf", outtype=outtype)
    assert _dir_listing(out_dir) == []

    (out_dir / "m.gguf").write_bytes(b"old")
    calls.clear()
    with pytest.raises(exc):
        convert(tiny_checkpoint("llama"), out_dir / "m.gguf", outtype=outtype, force=True)
    assert _dir_listing(out_dir) == ["m.gguf"]
    assert (out_dir / "m.gguf").read_bytes() == b"old"


def test_sharded_input_gives_the_same_file(tiny_tokenizer, tiny_checkpoint, tmp_path):
    sharded = builders.build_tiny(
        "llama", tmp_path / "sharded", tiny_tokenizer, max_shard_size="40KB"
    )
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a = convert(sharded, tmp_path / "a.gguf", outtype="f32")
    b = convert(tiny_checkpoint("llama"), tmp_path / "b.gguf", outtype="f32")
    ta = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(b).tensors}
    assert ta.keys() == tb.keys()
    for name in ta:
        assert np.array_equal(ta[name], tb[name]), name


def test_missing_shard_is_a_clear_error(tiny_tokenizer, tmp_path):
    src = builders.build_tiny("llama", tmp_path / "s", tiny_tokenizer, max_shard_size="40KB")
    shard = sorted(src.glob("*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ConversionError, match="missing"):
        convert(src, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_lists_supported(tiny_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("llama"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["FooBarForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as info:
        convert(src, tmp_path / "x.gguf")
    msg = str(info.value)
    assert "FooBarForCausalLM" in msg
    for name in ("LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert name in msg

    proc = subprocess.run(
        [sys.executable, "-m", "converters.st2gguf", str(src), "--outfile", str(tmp_path / "y")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "FooBarForCausalLM" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "y").exists()


def _with_digit_split_pre_tokenizer(src: Path, dst: Path) -> Path:
    """Copy a checkpoint, making its pre-tokenizer "split digits, then GPT-2 byte level"."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True},
        ],
    }  # fmt: skip
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


def test_unknown_pre_tokenizer_names_hash_and_override(tiny_checkpoint, tmp_path):
    src = _with_digit_split_pre_tokenizer(tiny_checkpoint("llama"), tmp_path / "src")
    with pytest.raises(UnknownPreTokenizerError) as info:
        convert(src, tmp_path / "x.gguf")
    msg = str(info.value)
    assert "--pre-tokenizer" in msg
    assert re.search(r"\b[0-9a-f]{64}\b", msg), msg
    assert not (tmp_path / "x.gguf").exists()
    # "smollm" is llama.cpp's name for exactly this scheme: with the override the result
    # tokenizes like the HF tokenizer (verify=True compares a varied text set).
    out = convert(src, tmp_path / "x.gguf", pre_tokenizer="smollm", verify=True)
    assert out.is_file()


def test_wrong_pre_tokenizer_fails_verification(tiny_checkpoint, tmp_path):
    src = _with_digit_split_pre_tokenizer(tiny_checkpoint("llama"), tmp_path / "src")
    with pytest.raises(VerificationError, match="tokenize differently"):
        convert(src, tmp_path / "x.gguf", pre_tokenizer="gpt-2", verify=True)
    assert _dir_listing(tmp_path) == ["src"]


def test_read_back_check_catches_a_missing_tensor(tiny_checkpoint, tmp_path):
    out = convert(tiny_checkpoint("gemma"), tmp_path / "g.gguf", outtype="f16")
    expected = {
        t.name: (tuple(int(d) for d in reversed(t.shape)), t.tensor_type)
        for t in gguf.GGUFReader(out).tensors
    }
    check_structure(out, expected)
    expected["blk.9.attn_q.weight"] = ((64, 64), gguf.GGMLQuantizationType.F16)
    with pytest.raises(VerificationError, match="missing"):
        check_structure(out, expected)


def test_k_quant_output_loads_and_generates(tiny_tokenizer, tmp_path):
    """q4_k_m through llama.cpp's quantizer: K-quant tensors, no intermediate left, runs."""
    import llama_cpp

    src = builders.build_tiny(
        "llama", tmp_path / "src", tiny_tokenizer,
        overrides={"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4},
    )  # fmt: skip
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = convert(src, out_dir / "m.gguf", outtype="q4_k_m")
    assert _dir_listing(out_dir) == ["m.gguf"]
    reader = gguf.GGUFReader(out)
    ftype = int(reader.fields["general.file_type"].parts[-1][0])
    assert ftype == gguf.LlamaFileType.MOSTLY_Q4_K_M
    types = {t.tensor_type for t in reader.tensors}
    assert gguf.GGMLQuantizationType.Q4_K in types

    ids = list(range(3, 30))
    got, want = llama_logits(out, ids), hf_logits(src, ids)
    # 4-bit weights of a random model: check the logits still track transformers' closely
    # (a wrong layout gives correlation near 0).
    corr = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
    assert corr > 0.9, f"q4_k_m logits correlation {corr:.3f} (rel err {rel_err(got, want):.2e})"
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False, n_threads=2)
    try:
        result = llm.create_completion("def convert", max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    assert result["usage"]["completion_tokens"] > 0


def test_disk_full_is_a_clear_error(tiny_checkpoint, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_tensor", no_space)
    with pytest.raises(DiskFullError, match="disk full"):
        convert(tiny_checkpoint("qwen3"), tmp_path / "q.gguf", outtype="f16")
    assert _dir_listing(tmp_path) == []


def test_ggufworker_convert_subcommand(tiny_checkpoint, tmp_path):
    """``ggufworker convert`` runs the same conversion (and refuses to overwrite)."""
    out = tmp_path / "m.gguf"
    cmd = [sys.executable, "-m", "ggufworker", "convert", str(tiny_checkpoint("phi3")),
           "--outfile", str(out), "--outtype", "q8_0", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    types = {t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert gguf.GGMLQuantizationType.Q8_0 in types
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 1 and "--force" in again.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_conversion_leaves_nothing(tiny_checkpoint, tmp_path, sig):
    """A real Ctrl-C / kill of the CLI process while tensors are being written."""
    # Slow the writer down so the signal lands mid-file.
    code = (
        "import signal, sys, time\n"
        # A shell starts background jobs with SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler; restore the interactive default so the test sees Ctrl-C.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from converters import writer, st2gguf\n"
        "real = writer._write_tensor\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.3)\n"
        "    return real(*a, **k)\n"
        "writer._write_tensor = slow\n"
        "sys.exit(st2gguf.main(sys.argv[1:]))\n"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_checkpoint("llama")),
         "--outfile", str(out_dir / "m.gguf"), "--outtype", "f16"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(p.suffix == ".tmp" for p in out_dir.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert _dir_listing(out_dir) == []


def test_mistral_consolidated_file_is_ignored(tiny_checkpoint, tmp_path):
    """Mistral repos hold consolidated.safetensors (own tensor names) beside the HF weights."""
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("mistral"), src)
    save_file({"layers.0.attention.wq.weight": np.zeros((4, 4), np.float32)},
              str(src / "consolidated.safetensors"))  # fmt: skip
    out = convert(src, tmp_path / "m.gguf", outtype="f16")
    assert "blk.0.attn_q.weight" in {t.name for t in gguf.GGUFReader(out).tensors}
