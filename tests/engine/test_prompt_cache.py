"""The prompt cache's tiers (engine/cache_tiers.py): slot choice, host-RAM states, checkpoints,
the disk tier and slot files, on a dense (SmolLM2), a sliding-window (Gemma 3) and a hybrid
(a tiny Granite 4.0 H converted here) model.

A state restored from a tier is the bytes llama.cpp gave when it was stashed, so what follows it
must be exactly what follows the state left in its slot: those runs are compared exactly.
Against a cold run (the whole prompt prefilled at once) the cached part was computed in other
chunks, and ggml-cpu's kernels give a row other logits when its batch has another row count
(measured on SmolLM2 Q4_1: a 400-token prompt plus 3 tokens, prefilled as one chunk or as 400 +
3, differ by up to 0.5 in the last row's logits, however the chunk boundary is aligned). So a
warm turn and a cold one are compared as tests/engine/agree.py compares batch shapes: the same
tokens, or parted only where the two best candidates were within a near-tie.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters.st2gguf import convert
from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine.prompt_cache import PromptCacheOptions
from ggufworker.engine.state_files import SUFFIX
from ggufworker.errors import InvalidRequestError
from tests.converters import builders
from tests.engine.agree import assert_greedy_agree

FIRST = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
SUBJECTS = ("apples", "rivers", "engines", "violins", "glaciers", "lanterns", "comets", "maples")


def document(k: int, n: int = 45) -> str:
    """A different natural-text document per ``k`` (~18 tokens per sentence)."""
    thing = SUBJECTS[k % len(SUBJECTS)]
    return " ".join(
        f"Record {i} about {thing}: item {i * (k + 3)} was filed on day {i + k} by clerk {k}."
        for i in range(1, n)
    )


def opening(engine: Engine, k: int, n: int = 45) -> list[int]:
    """Turn 1 of conversation ``k``: a shared system prompt, then its own document."""
    messages = [
        {"role": "system", "content": "You are a careful archivist."},
        {"role": "user", "content": f"Read these records.\n{document(k, n)}\nWhat is record 3?"},
    ]
    return engine.tokenize(engine.render_chat(messages), parse_special=True)


def follow_up(engine: Engine, history: list[int], question: str) -> list[int]:
    """The next turn: the history as the engine left it, then a new question."""
    return history + engine.tokenize(f"\n{question}\n", add_special=False)


def run(
    engine: Engine, prompt: list[int], params: SamplingParams = GREEDY
) -> tuple[list[int], int]:
    done = engine.generate(GenerationRequest(prompt, params))
    return done.token_ids, done.usage.cached_tokens


def cold(engine: Engine, prompt: list[int]) -> list[int]:
    engine.clear_cache()
    return run(engine, prompt)[0]


def load(path: Path, **cache: object) -> Engine:
    """Two slots, and batches of a whole prompt (a cold run prefills in one chunk)."""
    opts = PromptCacheOptions(**cache)  # type: ignore[arg-type]
    return Engine.load(path, n_ctx=4096, n_parallel=2, n_batch=2048, n_threads=2, prompt_cache=opts)


def agrees_with_cold(engine: Engine, prompt: list[int], got: list[int], what: str) -> None:
    """``got`` is a cold run's output, or parts from it only at a near-tie."""
    assert_greedy_agree(engine, prompt, cold(engine, prompt), got, what, exact=False)


# --- dense: SmolLM2 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense(smollm2_path: Path) -> Iterator[Engine]:
    engine = load(smollm2_path, ram_mib=256)
    yield engine
    engine.close()


def test_two_conversations_keep_their_slots(smollm2_path: Path) -> None:
    """With 2 slots and no RAM tier, two conversations sharing only a system prompt each keep
    a slot: the second one's next turn reuses its whole history."""
    engine = load(smollm2_path, ram_mib=0)
    try:
        a1, b1 = opening(engine, 0), opening(engine, 1)
        ga, _ = run(engine, a1, FIRST)
        gb, b_cached = run(engine, b1, FIRST)
        a2 = follow_up(engine, a1 + ga, "And record 4?")
        b2 = follow_up(engine, b1 + gb, "And record 4?")
        _, a2_cached = run(engine, a2)
        _, b2_cached = run(engine, b2)
    finally:
        engine.close()
    assert b_cached == 0  # an empty slot, not the 20-odd system prompt tokens of a's slot
    assert a2_cached >= len(a1) and b2_cached >= len(b1)


def test_evicted_conversations_come_back_from_ram(dense: Engine) -> None:
    """Four conversations on 2 slots, in turn: every second turn is restored from the RAM
    tier, serves the whole history, and answers as a cold run does (up to near-ties)."""
    dense.clear_cache()
    firsts = [opening(dense, k, 30) for k in range(4)]
    seconds = []
    for prompt in firsts:
        gen, _ = run(dense, prompt, FIRST)
        seconds.append(follow_up(dense, prompt + gen, "Which clerk filed record 2?"))
    warm = [run(dense, p) for p in seconds]
    stats = dense.cache_stats()
    assert all(cached >= len(first) for (_, cached), first in zip(warm, firsts, strict=True))
    assert stats.hits["ram"] >= 2
    assert stats.bytes["ram"] <= stats.ram_cap
    for (tokens, _), prompt in zip(warm, seconds, strict=True):
        agrees_with_cold(dense, prompt, tokens, "a conversation restored from RAM")


def test_unified_pool_restores_too(smollm2_path: Path) -> None:
    """With one KV pool shared by the slots, a stashed state is restored into the cells the
    other slots leave free."""
    opts = PromptCacheOptions(ram_mib=256)
    engine = Engine.load(
        smollm2_path, n_ctx=4096, n_parallel=2, n_batch=2048, n_threads=2,
        kv_layout="unified", prompt_cache=opts,
    )  # fmt: skip
    try:
        assert engine.kv_layout == "unified"
        firsts = [opening(engine, k, 20) for k in range(3)]
        for prompt in firsts:
            run(engine, prompt, FIRST)
        again, cached = run(engine, firsts[0] + [42, 43])
        assert cached >= len(firsts[0]) and engine.cache_stats().hits["ram"] == 1
        agrees_with_cold(engine, firsts[0] + [42, 43], again, "restored into a unified pool")
    finally:
        engine.close()


def test_restored_state_equals_state_left_in_place(dense: Engine) -> None:
    """After generated tokens (decoded one at a time), a restored state continues exactly as
    the same state left in its slot."""
    first = opening(dense, 5, 30)
    dense.clear_cache()
    gen, _ = run(dense, first)
    second = follow_up(dense, first + gen, "Which clerk filed record 2?")
    in_place, kept = run(dense, second)
    dense.clear_cache()
    gen2, _ = run(dense, first)
    assert gen2 == gen
    for k in (6, 7):  # two other conversations take both slots: the first one is stashed
        run(dense, opening(dense, k, 30), FIRST)
    restored, cached = run(dense, second)
    assert cached == kept >= len(first)
    assert restored == in_place


def test_ram_cap_holds_under_many_conversations(smollm2_path: Path) -> None:
    """A 24 MiB tier (one state of ~580 tokens: 13 MiB) never holds more than its cap; the
    most recently stashed conversation is the one it keeps."""
    engine = load(smollm2_path, ram_mib=24)
    try:
        prompts = [opening(engine, k, 25) for k in range(8)]
        for prompt in prompts:
            run(engine, prompt, FIRST)
            stats = engine.cache_stats()
            assert stats.bytes["ram"] <= 24 << 20
        assert 1 <= stats.entries["ram"] <= 3
        _, cached_recent = run(engine, prompts[5] + [42, 43])
        _, cached_old = run(engine, prompts[0] + [42, 43])
    finally:
        engine.close()
    assert cached_old < len(prompts[0]) // 2  # long dropped
    assert cached_recent >= len(prompts[5])  # still in the RAM tier


def test_slot_files_save_restore_erase(dense: Engine, tmp_path: Path) -> None:
    dense.clear_cache()
    prompt = opening(dense, 2, 25)
    run(dense, prompt, FIRST)
    holder = next(i for i in range(2) if _holds(dense, i, prompt))
    saved = dense.save_slot(holder, tmp_path / "a.state")
    assert saved.n_tokens >= len(prompt) and saved.n_bytes == (tmp_path / "a.state").stat().st_size
    assert dense.erase_slot(holder) == saved.n_tokens
    dense.clear_cache()
    restored = dense.restore_slot(1 - holder, tmp_path / "a.state")
    assert restored.n_tokens == saved.n_tokens
    after, cached = run(dense, prompt + [42, 43, 44])
    assert cached >= len(prompt)
    agrees_with_cold(dense, prompt + [42, 43, 44], after, "a slot restored from a file")
    with pytest.raises(InvalidRequestError):
        dense.restore_slot(0, tmp_path / "missing.state")
    with pytest.raises(InvalidRequestError):
        dense.save_slot(7, tmp_path / "b.state")


def _holds(engine: Engine, slot: int, prompt: list[int]) -> bool:
    cache = engine._sched.slots[slot].cache
    return len(cache) >= len(prompt) and cache[: len(prompt)] == prompt


def test_disk_tier_survives_a_restart_and_refuses_bad_files(
    smollm2_path: Path, gemma3_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "prompt-cache"
    first = load(smollm2_path, disk_dir=store)
    try:
        prompt = opening(first, 3, 30)
        extended = prompt + [42, 43, 44]
        ref, _ = run(first, extended)
        first.clear_cache()
        run(first, prompt, FIRST)
    finally:
        first.close()  # writes the slots' states
    (model_dir,) = [p for p in store.iterdir() if p.is_dir()]
    (saved,) = list(model_dir.glob(f"*{SUFFIX}"))

    second = load(smollm2_path, disk_dir=store)
    try:
        warm, cached = run(second, extended)
    finally:
        second.close()
    assert cached >= len(prompt)

    # a file of another model in this model's folder, and a corrupt copy of the real one
    other = load(gemma3_path, disk_dir=tmp_path / "gemma-cache")
    try:
        run(other, opening(other, 3, 30), FIRST)
    finally:
        other.close()
    (foreign,) = list((tmp_path / "gemma-cache").glob(f"*/*{SUFFIX}"))
    data = bytearray(saved.read_bytes())
    data[-1000] ^= 0xFF
    for path in model_dir.glob(f"*{SUFFIX}"):
        path.unlink()
    shutil.copy(foreign, model_dir / f"foreign{SUFFIX}")
    (model_dir / f"corrupt{SUFFIX}").write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="ggufworker.engine.state_files")
    third = load(smollm2_path, disk_dir=store)
    try:
        again, cached = run(third, extended)
        assert_greedy_agree(third, extended, ref, warm, "restored from disk", exact=False)
    finally:
        third.close()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "another model" in messages and "checksum" in messages
    assert cached == 0 and again == ref


# --- memory that cannot be cut back: sliding window (Gemma 3), hybrid (Granite 4.0 H) ----------


@pytest.fixture(scope="module")
def tiny_granite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded Granite 4.0 H (Mamba-2 layers around attention layers), converted."""
    import transformers as tf

    tok = builders.train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    config = tf.GraniteMoeHybridConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2,
        mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16,
        intermediate_size=64, shared_intermediate_size=96, num_local_experts=0,
        layer_types=["mamba", "attention", "mamba", "attention"],
    )  # fmt: skip
    src = builders.build_tiny(
        "granitehybrid", tmp_path_factory.mktemp("granite"), tok, config=config
    )
    return convert(src, src / "model.f32.gguf", outtype="f32", pre_tokenizer="gpt-2")


@pytest.fixture(scope="module", params=["gemma3-swa", "gemma3-swa-full", "granite-hybrid"])
def uncuttable(
    request: pytest.FixtureRequest, gemma3_path: Path, tiny_granite: Path
) -> Iterator[Engine]:
    opts = PromptCacheOptions(ram_mib=256, checkpoint_every=256)
    if request.param == "granite-hybrid":
        engine = Engine.load(
            tiny_granite, n_ctx=2048, n_parallel=2, n_batch=128, n_threads=2, prompt_cache=opts
        )
    else:
        engine = Engine.load(
            gemma3_path, n_ctx=2048, n_parallel=2, n_batch=256, n_threads=2, prompt_cache=opts,
            swa_full=request.param == "gemma3-swa-full",
        )  # fmt: skip
    yield engine
    engine.close()


def _long_prompt(engine: Engine, k: int) -> list[int]:
    """Longer than Gemma 3's 512-token window; the tiny model's vocabulary makes ~1,100."""
    if engine.info.memory == "kv":
        return opening(engine, k, 40)
    return engine.tokenize(document(k, 25))


def full_window(engine: Engine) -> bool:
    """A full-size sliding-window cache: a slot keeps the cells its window no longer sees, a
    saved state does not, so attention runs over other cells after a restore (same tokens up
    to near-ties, not the same bits)."""
    return engine._opts.swa_full and engine._sched.model.n_swa > 0


def unrelated(engine: Engine, k: int) -> list[int]:
    """A 300-token prompt sharing no more than a word or two with the others."""
    return engine.tokenize(f"{k} {k} {k} " + document(k + 3, 30))[:300]


def test_uncuttable_memory_takes_checkpoints(uncuttable: Engine) -> None:
    engine = uncuttable
    assert engine.info.memory != "kv" or engine._sched.model.n_swa > 0
    engine.clear_cache()
    prompt = _long_prompt(engine, 0)
    assert len(prompt) > 600
    run(engine, prompt, FIRST)
    held = engine.cache_stats()
    # every 256 tokens, 4 tokens before the end, the end, and the end of the turn
    assert held.entries["checkpoints"] >= 4 and held.bytes["checkpoints"] > 0


def test_extension_after_eviction_matches_cold(uncuttable: Engine) -> None:
    """The whole state comes back from RAM and the prompt extends it exactly."""
    engine = uncuttable
    engine.clear_cache()
    first = _long_prompt(engine, 1)
    gen, _ = run(engine, first, FIRST)
    second = first + gen + engine.tokenize(" And then the clerk left.", add_special=False)
    for k in (2, 3):
        run(engine, unrelated(engine, k), FIRST)
    warm, cached = run(engine, second)
    assert cached == len(first)  # the state consumed the prompt (the generated token is fed)
    assert engine.cache_stats().hits["ram"] >= 1
    engine.clear_cache()
    run(engine, first, FIRST)
    in_place, kept = run(engine, second)
    assert kept == cached
    if not full_window(engine):
        assert warm == in_place
    agrees_with_cold(engine, second, warm, "extension of a restored state")


def test_divergence_resumes_from_a_checkpoint(uncuttable: Engine) -> None:
    """A prompt that leaves a cached one 2 tokens before its end resumes from the checkpoint
    taken 4 tokens before it (in place, and after a trip through the RAM tier), not from 0."""
    engine = uncuttable
    engine.clear_cache()
    first = _long_prompt(engine, 4)
    run(engine, first, FIRST)
    edited = first[:-2] + engine.tokenize(" Also, record 9 was lost.", add_special=False)
    in_place, cached = run(engine, edited)
    # a sliding window still holding the cells before the cut is cut directly
    assert len(first) - 4 <= cached <= len(first) - 2
    run(engine, first, FIRST)
    for k in (5, 6):
        run(engine, unrelated(engine, k), FIRST)
    restored, cached = run(engine, edited)
    assert cached == len(first) - 4
    if engine.info.memory != "kv":  # both resumed from the same checkpoint
        assert restored == in_place
    agrees_with_cold(engine, edited, in_place, "resumed in place")
    agrees_with_cold(engine, edited, restored, "resumed after the RAM tier")
