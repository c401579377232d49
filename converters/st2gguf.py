"""SafeTensors checkpoint -> GGUF, without torch.

Library use::

    from converters.st2gguf import convert
    convert("path/to/hf-checkpoint", "model.f16.gguf", outtype="f16")

Command line::

    python -m converters.st2gguf SRC_DIR [--outfile PATH] [--outtype TYPE] [--force] [--verify]
    python -m converters.st2gguf ADAPTER_DIR --lora --base BASE_DIR_OR_GGUF [-o PATH]
        [--outtype f32|f16|q8_0]     (a PEFT LoRA adapter, see converters/lora.py)

The output is written to a temporary file beside the target, read back and checked, and only
then renamed into place: an interrupted or failed conversion leaves nothing at the target.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from converters import verify as _verify
from converters.archs import get_converter, supported_architectures
from converters.checkpoint import Checkpoint
from converters.lora import convert_lora
from converters.quantize import (
    LLAMA_TYPES,
    OUTTYPES,
    RAW_TYPES,
    llama_quantize,
    resolve_outtype,
)
from converters.writer import write_gguf
from ggufworker.errors import ConversionError, DiskFullError

logger = logging.getLogger(__name__)


def default_outfile(src: Path, outtype: str) -> Path:
    """``<src>/<folder name>.<OUTTYPE>.gguf``."""
    return src / f"{src.resolve().name}.{outtype.upper()}.gguf"


def _temp_beside(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}.{os.getpid()}.tmp")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    outtype: str = "auto",
    force: bool = False,
    verify: bool = False,
    pre_tokenizer: str | None = None,
    progress: bool = False,
) -> Path:
    """Convert a Hugging Face SafeTensors checkpoint folder to a GGUF file.

    Args:
        src: checkpoint folder (config.json, *.safetensors, tokenizer files).
        dst: output path; default ``<src>/<name>.<OUTTYPE>.gguf``.
        outtype: ``auto`` (source precision), f32, f16, bf16, q8_0, q4_0, or a llama.cpp
            quant type (q4_k_m, q5_k_m, q6_k, ...).
        force: replace an existing file at ``dst``.
        verify: also load the result in llama.cpp and compare its tokenization of a varied
            text set with the Hugging Face tokenizer's.
        pre_tokenizer: ``tokenizer.ggml.pre`` to write when the BPE pre-tokenizer's hash is
            not recognised.
        progress: show a progress bar.

    Returns:
        The path written.

    Raises:
        UnsupportedArchitectureError: config.json names an architecture not listed in
            :func:`converters.archs.supported_architectures`.
        ConversionError: bad input, existing target without ``force``, unknown pre-tokenizer.
        VerificationError: the written file does not match its source.
        DiskFullError: the disk filled up; nothing is left at ``dst``.
    """
    src_path = Path(src)
    ckpt = Checkpoint(src_path)
    conv = get_converter(ckpt.architecture).for_checkpoint(ckpt)(ckpt)
    quant = ckpt.config.get("quantization_config")
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else quant
    if quant and method not in conv.prequantized_methods:
        raise ConversionError(
            f"checkpoint is pre-quantized ({method}); convert the original float weights"
        )
    source_type = ckpt.source_float_type()
    out = resolve_outtype(outtype, source_type)
    target = Path(dst) if dst is not None else default_outfile(src_path, out)
    if target.is_dir():
        target = target / default_outfile(src_path, out).name
    if not target.parent.is_dir():
        raise ConversionError(f"output folder {target.parent} does not exist")
    if target.exists() and not force:
        raise ConversionError(f"{target} exists; pass --force (force=True) to replace it")

    plans = conv.plan()
    raw = sorted({p.dtype for p in plans if p.dtype in RAW_TYPES})
    if raw and out in LLAMA_TYPES:
        # llama_model_quantize refuses to requantize them (and should not: they are the release)
        raise ConversionError(
            f"{out} cannot be made from a checkpoint with {'/'.join(raw)} tensors; choose "
            "f32, f16, bf16 or q8_0 (those tensors are kept as they are)"
        )
    embd = next((p for p in plans if p.name == "token_embd.weight"), None)
    if embd is None:
        raise ConversionError("checkpoint has no token embedding")
    vocab = conv.load_vocab(src_path, embd.shape[0], pre_tokenizer=pre_tokenizer)
    name = str(ckpt.config.get("_name_or_path") or src_path.resolve().name)

    tmp = _temp_beside(target, "part")
    intermediate = _temp_beside(target, "f") if out in LLAMA_TYPES else None
    try:
        if intermediate is not None:
            base = resolve_outtype("auto", source_type)
            write_gguf(intermediate, conv, plans, vocab, base, name=name, progress=progress)
            llama_quantize(intermediate, tmp, out)
            intermediate.unlink()
            _verify.check_structure(tmp, None, expected_names=[p.name for p in plans])
        else:
            expected = write_gguf(tmp, conv, plans, vocab, out, name=name, progress=progress)
            _verify.check_structure(tmp, expected)
        if verify:
            _verify.check_tokenization(tmp, src_path)
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while writing {target}; nothing was written") from exc
        raise
    finally:
        for leftover in (tmp, intermediate):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
    logger.info("wrote %s (%s, %d tensors)", target, out, len(plans))
    return target


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the converter's arguments to ``parser`` (or a new one)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m converters.st2gguf",
        description="Convert a Hugging Face SafeTensors checkpoint to GGUF (no torch needed).",
    )
    p.add_argument("src", type=Path, help="checkpoint folder (config.json, *.safetensors)")
    p.add_argument("-o", "--outfile", type=Path, help="output path (default: inside SRC)")
    p.add_argument("--outtype", default="auto", choices=OUTTYPES, metavar="TYPE",
                   help="auto (source precision), " + ", ".join(OUTTYPES[1:]))  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--verify", action="store_true",
                   help="also compare llama.cpp's tokenization with the HF tokenizer")  # fmt: skip
    p.add_argument("--pre-tokenizer", metavar="NAME",
                   help="llama.cpp pre-tokenizer name to use when the hash is unknown")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--lora", action="store_true",
                   help="SRC is a PEFT LoRA adapter folder: write a GGUF LoRA adapter")  # fmt: skip
    p.add_argument("--base", metavar="BASE_DIR_OR_GGUF",
                   help="with --lora: the base model's checkpoint folder or GGUF file")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    """Run a conversion from parsed arguments; returns the exit code."""
    if args.lora or args.base:
        if not (args.lora and args.base):
            raise ConversionError("--lora and --base go together (a PEFT adapter and its base)")
        outtype = "f32" if args.outtype == "auto" else args.outtype
        print(convert_lora(args.src, args.outfile, base=args.base, outtype=outtype,
                           force=args.force))  # fmt: skip
        return 0
    path = convert(
        args.src, args.outfile, outtype=args.outtype, force=args.force, verify=args.verify,
        pre_tokenizer=args.pre_tokenizer, progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip
    print(path)
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converters.st2gguf`` entry point."""
    args = build_parser().parse_args(argv)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the temp file beside the target is removed too.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)
    try:
        return run(args)
    except (ConversionError, DiskFullError) as exc:
        print(f"st2gguf: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("st2gguf: interrupted; nothing written", file=sys.stderr)
        return 130


__all__ = ["convert", "convert_lora", "main", "supported_architectures"]

if __name__ == "__main__":
    sys.exit(main())
