"""Install self-check: prove this llama.cpp build can run a multi-token prompt.

Some builds load a model and decode single tokens fine, then crash on the first prompt longer
than one token: a native build on Intel CPUs with AMX segfaults in ``ggml_backend_amx_mul_mat``
(llama.cpp #20824, ollama #17205). So the check builds a tiny random llama-architecture GGUF
with Q4_0 weights (a type the AMX kernels take), decodes a 16-token prompt and checks that the
logits are finite. Run it in a subprocess (``python -m ggufworker.engine.selfcheck``) so a crash
is reported instead of taking the caller down.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

N_EMBD = 256
N_FF = 512
N_HEAD = 4
N_LAYER = 2
N_PROMPT = 16


def write_tiny_gguf(path: Path, *, seed: int = 0) -> None:
    """Write a tiny random llama GGUF (byte-level SentencePiece vocab, Q4_0 matrices)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ggufworker-selfcheck")
    writer.add_context_length(512)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(N_LAYER)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    def q4(name: str, data: np.ndarray) -> None:
        qdata = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_0)
        writer.add_tensor(name, qdata, raw_dtype=gguf.GGMLQuantizationType.Q4_0)

    writer.add_tensor("token_embd.weight", mat(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    q4("output.weight", mat(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            q4(f"blk.{i}.{name}.weight", mat(N_EMBD, N_EMBD))
        q4(f"blk.{i}.ffn_gate.weight", mat(N_FF, N_EMBD))
        q4(f"blk.{i}.ffn_up.weight", mat(N_FF, N_EMBD))
        q4(f"blk.{i}.ffn_down.weight", mat(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def run_check() -> str:
    """Load the tiny model, decode a multi-token prompt, return a one-line summary.

    Raises:
        RuntimeError: the logits are not finite or llama.cpp reports an error.
    """
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="ggufworker-selfcheck-") as tmp:
        path = Path(tmp) / "tiny.gguf"
        write_tiny_gguf(path)
        llm = llama_cpp.Llama(
            str(path), n_ctx=128, n_batch=N_PROMPT, n_threads=2, logits_all=True, verbose=False
        )
        try:
            prompt = [1] + [3 + (i * 37) % 256 for i in range(N_PROMPT - 1)]
            llm.eval(prompt)
            logits = np.asarray(llm.scores[: len(prompt)])
            if not np.isfinite(logits).all():
                raise RuntimeError("llama.cpp produced non-finite logits")
        finally:
            llm.close()
    return (
        f"llama-cpp-python {llama_cpp.__version__}: decoded a {N_PROMPT}-token prompt "
        f"(Q4_0, {N_LAYER} layers), logits finite"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    try:
        print(f"self-check ok: {run_check()}")
    except Exception as exc:  # report any failure as one line
        print(f"self-check failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
