"""Reference computations for converter tests: transformers (torch) vs llama.cpp logits."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def llama_logits(gguf_path: Path, ids: list[int], **options: Any) -> np.ndarray:
    """Logits llama.cpp computes for every position of ``ids`` (shape: len(ids) x n_vocab);
    ``options`` go to ``llama_cpp.Llama`` as well (an adapter, flash attention)."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llm = llama_cpp.Llama(
        str(gguf_path), n_ctx=max(32, len(ids)), n_batch=max(32, len(ids)),
        n_ubatch=max(32, len(ids)), logits_all=True, n_threads=2, verbose=False,
        type_k=0, type_v=0,  # f32 KV cache: the default f16 cache rounds activations
        **options,
    )  # fmt: skip
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits transformers computes (float32, eager attention) for ``ids``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return out.float().numpy()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.max(np.abs(got - want)) / max(1e-6, float(np.max(np.abs(want)))))


def batched_and_alone(
    path: Path, prompts: list[list[int]], *, n_ctx: int = 512, max_tokens: int = 12
) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy tokens of ``prompts`` decoded together by the engine, and each decoded alone on a
    cleared cache (continuous batching's promise: the two are equal)."""
    from ggufworker.engine import Engine, GenerationRequest, SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine = Engine.load(path, n_ctx=n_ctx, n_parallel=len(prompts), n_batch=64)
    try:
        handles = [engine.submit(GenerationRequest(p, greedy, add_bos=False)) for p in prompts]
        together = [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]
        alone = []
        for p in prompts:
            engine.clear_cache()
            alone.append(engine.generate(GenerationRequest(p, greedy, add_bos=False)).token_ids)
    finally:
        engine.close()
    return together, alone


def random_prompt(tokenizer_dir: Path, seed: int, n: int = 40) -> list[int]:
    """``n`` seeded random token ids of the tiny tokenizer (past its special tokens)."""
    from tokenizers import Tokenizer

    n_vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    return np.random.default_rng(seed).integers(3, n_vocab, size=n).tolist()


def transformers_config(name: str, **kwargs: Any) -> Callable[[], Any]:
    """A maker of ``transformers.<name>(**kwargs)``, built only when a test needs it (importing
    transformers and building configs at collection time would slow every run)."""

    def make() -> Any:
        import transformers

        return getattr(transformers, name)(**kwargs)

    return make


def gguf_fields(path: Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file with its value."""
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


def family_builder(
    tmp_path_factory: Any,
    tokenizer_dir: Path,
    prompt: list[int],
    families: dict[str, tuple[str, Callable[[], Any], Callable[[Path], None] | None]],
    prefix: str,
    outtypes: Iterable[str],
    **options: Any,
) -> Callable[[str], tuple[Path, dict[str, Path], np.ndarray]]:
    """``get(variant)`` -> (checkpoint, {outtype: GGUF path}, reference logits), each variant
    built, edited, run through transformers and converted once (``families[variant]`` is
    (family, config maker, checkpoint edit or None))."""
    from . import builders

    @functools.cache
    def get(variant: str) -> tuple[Path, dict[str, Path], np.ndarray]:
        family, make_config, edit = families[variant]
        root = tmp_path_factory.mktemp(f"{prefix}{list(families).index(variant)}")
        src = builders.build_tiny(variant, root / "src", tokenizer_dir, config=make_config())
        if edit is not None:
            edit(src)
        want = hf_logits(src, prompt)
        return src, convert_recorded(family, variant, src, root, outtypes, **options), want

    return get


def convert_recorded(
    family: str, variant: str, src: Path, root: Path, outtypes: Iterable[str], **options: Any
) -> dict[str, Path]:
    """Convert ``src`` to each outtype under ``root``, recording the family's ``converter``
    evidence (a refusal is recorded as failed, then re-raised)."""
    from converters.st2gguf import convert
    from ggufworker.errors import ConversionError
    from tests.support import record

    outs: dict[str, Path] = {}
    try:
        for outtype in outtypes:
            outs[outtype] = convert(src, root / f"{outtype}.gguf", outtype=outtype, **options)
    except ConversionError as exc:
        record(family, "converter", passed=False, detail=f"{variant}: {exc}")
        raise
    record(family, "converter", passed=True, detail=variant)
    return outs


def engine_greedy_text(path: Path, prompt: str, max_tokens: int) -> str:
    """The text one engine sequence generates greedily for ``prompt`` (EOS ignored)."""
    from ggufworker.engine import Engine, GenerationRequest, SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine = Engine.load(path, n_ctx=256, n_parallel=1)
    try:
        return engine.generate(GenerationRequest(prompt, greedy)).text
    finally:
        engine.close()


def recorded_errors(
    family: str,
    variant: str,
    outs: dict[str, Path],
    want: np.ndarray,
    ids: list[int],
    bounds: dict[str, float],
) -> dict[str, float]:
    """Relative error of each converted file's logits against ``want``, each recorded as the
    family's evidence for that outtype (passed when under its bound)."""
    from tests.support import record

    errors = {}
    for outtype, path in outs.items():
        got = llama_logits(path, ids)
        err = rel_err(got, want) if got.shape == want.shape else float("inf")
        errors[outtype] = err
        record(family, outtype, passed=err < bounds[outtype], value=err, detail=variant)
    return errors
