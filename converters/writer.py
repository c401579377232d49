"""Stream planned tensors into a GGUF file, one chunk of rows at a time.

gguf-py's ``GGUFWriter`` writes the header, key/values and tensor table (its tensor table is
filled from the plans' shapes and types, so no data is needed up front); the tensor data is then
written here chunk by chunk, so memory holds at most one source tensor's pages plus one encoded
chunk, never the model.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from converters.archs.base import ArchConverter, TensorPlan
from converters.checkpoint import release_pages
from converters.quantize import NUMPY_TYPES, RAW_TYPES, encode, stored_nbytes, tensor_type
from converters.tokenizer import Vocab, write_vocab

logger = logging.getLogger(__name__)

#: float32 bytes converted per chunk; bounds the working memory of one conversion step.
CHUNK_BYTES = 16 << 20


def write_gguf(
    path: Path,
    conv: ArchConverter,
    plans: list[TensorPlan],
    vocab: Vocab,
    outtype: str,
    *,
    name: str,
    progress: bool = False,
) -> dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]]:
    """Write a complete GGUF at ``path`` (numpy-encodable ``outtype`` only).

    Returns:
        GGUF tensor name -> (numpy shape, stored type), for read-back verification.
    """
    qtype, ftype = NUMPY_TYPES[outtype]
    w = gguf.GGUFWriter(path, conv.arch_name)
    expected: dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]] = {}
    try:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        conv.add_metadata(w)
        write_vocab(w, vocab, conv.ckpt.dir)
        sizes = []
        for plan in plans:
            ttype = RAW_TYPES.get(plan.dtype) or tensor_type(qtype, plan.shape, plan.keep_f32)
            nbytes = stored_nbytes(ttype, plan.shape)
            w.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), nbytes, raw_dtype=ttype)
            expected[plan.name] = (plan.shape, ttype)
            sizes.append(nbytes)
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        fout = w.fout[0]
        bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, disable=not progress)
        workers = max(1, min(4, os.cpu_count() or 1))
        with bar, ThreadPoolExecutor(workers, thread_name_prefix="st2gguf") as pool:
            for plan, nbytes in zip(plans, sizes, strict=True):
                w.write_padding(fout, fout.tell())
                written = _write_tensor(fout, plan, expected[plan.name][1], bar, pool, workers + 1)
                if written != nbytes:
                    raise AssertionError(f"{plan.name}: wrote {written} bytes, planned {nbytes}")
                logger.debug("%s %s -> %s", plan.name, plan.shape, expected[plan.name][1].name)
            w.write_padding(fout, fout.tell())
        fout.flush()
    finally:
        w.close()
    return expected


def _write_tensor(
    fout,
    plan: TensorPlan,
    ttype: gguf.GGMLQuantizationType,
    bar: tqdm,
    pool: ThreadPoolExecutor,
    window: int,
) -> int:
    """Encode a tensor chunk by chunk on ``pool`` (numpy releases the GIL) and write in order."""
    data = plan.load()
    # pre-encoded blocks (RAW_TYPES) come as bytes: their shape is the byte shape
    want = plan.shape
    if plan.dtype in RAW_TYPES:
        want = tuple(gguf.quant_shape_to_byte_shape(plan.shape, ttype))
    if tuple(data.shape) != want:
        raise AssertionError(f"{plan.name}: loader gave {data.shape}, planned {want}")
    rows = data.reshape(-1, want[-1]) if data.ndim > 1 else data.reshape(1, -1)
    step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * 4))
    starts = iter(range(0, rows.shape[0], step))
    pending: deque[Future[np.ndarray]] = deque()

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append(pool.submit(encode, rows[start : start + step], plan.dtype, ttype))

    # At most `window` chunks in flight: bounded memory, every worker busy.
    for _ in range(window):
        submit_next()
    written = 0
    try:
        while pending:
            chunk = pending.popleft().result()
            submit_next()
            fout.write(np.ascontiguousarray(chunk).data)
            written += chunk.nbytes
            bar.update(chunk.nbytes)
            release_pages(data)
    finally:
        for fut in pending:
            fut.cancel()
    return written
