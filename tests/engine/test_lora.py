"""LoRA adapters in the engine: per-request adapter sets batched per set, against llama.cpp's
own single-adapter path; prefix reuse keyed by set; adapters for another base refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from converters.lora import convert_lora
from converters.st2gguf import convert
from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.errors import GenerationError, InvalidRequestError, ModelNotFoundError
from tests.converters import builders
from tests.converters.lora_reference import make_adapter
from tests.converters.reference import random_prompt

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama-shape base (f32 GGUF) and two adapters on it, plus foreign adapters."""
    root = tmp_path_factory.mktemp("engine-lora")
    tok = builders.train_tiny_tokenizer(root)
    src = builders.build_tiny("llama", root / "src", tok)
    wide = builders.build_tiny("llama", root / "wide", tok, overrides={"hidden_size": 96})
    gemma = builders.build_tiny("gemma", root / "gemma", tok)
    out = {"tok": tok, "base": convert(src, root / "base.gguf", outtype="f32")}
    for name, base, seed in (("a", src, 7), ("b", src, 8), ("wide", wide, 7), ("gemma", gemma, 7)):
        peft_dir = make_adapter(base, root / f"peft-{name}", seed=seed)
        out[name] = convert_lora(peft_dir, root / f"{name}.gguf", base=base)
    return out


@pytest.fixture(scope="module")
def engine(files):
    eng = Engine.load(files["base"], n_ctx=1024, n_parallel=4, n_batch=64, flash_attn=False)
    eng.load_lora("a", files["a"])
    eng.load_lora("b", files["b"], scale=0.5)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(files) -> list[list[int]]:
    return [random_prompt(files["tok"], seed, 24) for seed in (1, 2, 3, 4)]


def _greedy(engine: Engine, prompt: list[int], lora, **kw) -> list[int]:
    req = GenerationRequest(prompt, SamplingParams(**{**GREEDY.__dict__, **kw}), add_bos=False,
                            lora=lora)  # fmt: skip
    return engine.generate(req).token_ids


def _llama_cpp_greedy(base: Path, adapter: Path | None, scale: float, prompt, n: int):
    """llama.cpp's own path (llama-cpp-python's Llama with lora_path), one sequence, greedy."""
    import llama_cpp

    kwargs = {"lora_path": str(adapter), "lora_scale": scale} if adapter else {}
    llm = llama_cpp.Llama(str(base), n_ctx=256, n_batch=64, n_threads=2, verbose=False,
                          flash_attn=False, logits_all=True, **kwargs)  # fmt: skip
    try:
        ids = list(prompt)
        out = []
        llm.eval(ids)
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(tok)
            llm.eval([tok])
        return out
    finally:
        llm.close()


def test_adapter_output_is_llama_cpps(engine, files, prompts):
    """Under an adapter (scale 1, scale 0.5) and on the base, the engine's greedy tokens are
    llama.cpp's with that adapter loaded the plain way; the adapters change the output."""
    p = prompts[0]
    engine.clear_cache()
    base = _greedy(engine, p, ())
    under_a = _greedy(engine, p, (("a", 1.0),))
    under_b = _greedy(engine, p, (("b", 0.5),))
    assert base == _llama_cpp_greedy(files["base"], None, 0, p, 16)
    assert under_a == _llama_cpp_greedy(files["base"], files["a"], 1.0, p, 16)
    assert under_b == _llama_cpp_greedy(files["base"], files["b"], 0.5, p, 16)
    assert under_a != base and under_b != base and under_a != under_b
    # ids and names are the same adapter; no list means the global scales (0: the base)
    assert _greedy(engine, p, ((0, 1.0),)) == under_a
    assert _greedy(engine, p, None) == base


def test_sets_decoded_together_equal_alone(engine, prompts):
    sets = [(), (("a", 1.0),), (("b", 0.5),), (("a", 1.0), ("b", 0.5))]
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    reqs = [
        GenerationRequest(p, greedy, add_bos=False, lora=s)
        for p, s in zip(prompts, sets, strict=True)
    ]
    handles = [engine.submit(r) for r in reqs]
    together = [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]
    alone = []
    for r in reqs:
        engine.clear_cache()
        alone.append(engine.generate(r).token_ids)
    assert together == alone
    assert len({tuple(t) for t in alone}) == 4


def test_prefix_reuse_is_keyed_by_set(engine, prompts):
    p = prompts[1]
    engine.clear_cache()
    first = engine.generate(GenerationRequest(p, GREEDY, add_bos=False, lora=(("a", 1.0),)))
    on_base = engine.generate(GenerationRequest(p, GREEDY, add_bos=False, lora=()))
    assert on_base.usage.cached_tokens == 0  # a's KV is never reused for the base
    again = engine.generate(GenerationRequest(p, GREEDY, add_bos=False, lora=(("a", 1.0),)))
    assert again.usage.cached_tokens > 0 or first.usage.cached_tokens == 0
    assert again.token_ids == first.token_ids
    at_half = engine.generate(GenerationRequest(p, GREEDY, add_bos=False, lora=(("a", 0.5),)))
    engine.clear_cache()
    fresh = engine.generate(GenerationRequest(p, GREEDY, add_bos=False, lora=(("a", 0.5),)))
    assert at_half.token_ids == fresh.token_ids


def test_sets_take_turns(engine, prompts):
    """Two sets with long generations progress together: neither waits for the other's end."""
    engine.clear_cache()
    long = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    sets = {"a": (("a", 1.0),), "base": ()}
    handles = {
        tag: engine.submit(GenerationRequest(prompts[2], long, add_bos=False, lora=lora))
        for tag, lora in sets.items()
    }
    times: dict[str, list[float]] = {tag: [] for tag in sets}

    def drain(tag: str) -> None:
        for ev in handles[tag]:
            if ev.token_id is not None:
                times[tag].append(time.perf_counter())

    threads = [threading.Thread(target=drain, args=(tag,)) for tag in sets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times["a"]) == len(times["base"]) == 60
    # round-robin: each set's first half is out before the other set's last token
    assert times["a"][30] < times["base"][-1] and times["base"][30] < times["a"][-1]


def test_turn_rule_alternates(engine):
    """The scheduler's rule itself: with sets A, B and the base busy, steps cycle A, B, base."""
    from ggufworker.engine.slots import Request, Slot

    sched = engine._sched
    keys = [(), ((0, 1.0),), ((1, 0.5),)]
    slots = []
    for i, key in enumerate(keys * 2):
        slot = Slot(seq=i)
        slot.req = Request(f"r{i}", [1], GREEDY, 0, None, lora_key=key)  # type: ignore[arg-type]
        slots.append(slot)

    def six_steps() -> list:
        served = []
        for _ in range(6):
            chosen = sched._turn(slots)
            assert len(chosen) == 2 and len({s.req.lora_key for s in chosen}) == 1
            served.append(chosen[0].req.lora_key)
        sched.use_lora(())
        return served

    served = engine.run_on_scheduler(six_steps)  # the context belongs to that thread
    assert served[:3] == served[3:] and sorted(served[:3]) == sorted(keys)


def test_adapter_for_another_base_is_refused(engine, files):
    with pytest.raises(InvalidRequestError, match=r"made for a base with embedding_length 96") as e:
        engine.load_lora("wide", files["wide"])
    assert "\n" not in str(e.value)
    with pytest.raises(InvalidRequestError, match=r"is for a gemma model, this base is llama"):
        engine.load_lora("gemma", files["gemma"])
    with pytest.raises(InvalidRequestError, match="not a LoRA adapter GGUF"):
        engine.load_lora("model", files["base"])
    assert [a.name for a in engine.loras()] == ["a", "b"]


def test_unknown_adapter_and_unload(files, prompts):
    with Engine.load(files["base"], n_ctx=512, n_parallel=2, n_batch=64) as eng:
        info = eng.load_lora("a", files["a"])
        assert info.id == 0 and info.size_bytes > 0
        with pytest.raises(ModelNotFoundError, match="no LoRA adapter named 'x'"):
            eng.submit(GenerationRequest(prompts[0], GREEDY, add_bos=False, lora=(("x", 1.0),)))
        long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        h = eng.submit(GenerationRequest(prompts[0], long, add_bos=False, lora=(("a", 1.0),)))
        next(iter(h))
        eng.unload_lora("a")
        with pytest.raises(GenerationError, match="unloaded"):
            for _ in h:
                pass
        assert eng.loras() == []
        with pytest.raises(ModelNotFoundError):
            eng.submit(GenerationRequest(prompts[0], GREEDY, add_bos=False, lora=((0, 1.0),)))
        # the base still answers, and a reload gets a new id
        assert len(_greedy(eng, prompts[0], ())) == 16
        assert eng.load_lora("a", files["a"]).id == 1


def test_base_shapes_of_a_split_model(tmp_path):
    """The adapter check reads every shard of a split base (NAME-0000i-of-0000N.gguf)."""
    import gguf

    from ggufworker.engine.lora import base_tensor_shapes

    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama", split_max_tensors=2)
    for i in range(5):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((3 + i, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    first = sorted(tmp_path.glob("m-*-of-*.gguf"))[0]
    assert first.name == "m-00001-of-00003.gguf"
    shapes = base_tensor_shapes(first)
    assert shapes == {f"blk.{i}.attn_q.weight": (3 + i, 8) for i in range(5)}


def test_request_whose_adapter_went_away_ends_with_an_error(engine, prompts, monkeypatch):
    """A request resolved to an adapter that is unloaded before the scheduler sees it ends with
    an error (never runs on the base, never stops the scheduler)."""
    monkeypatch.setattr(engine, "lora_key", lambda lora: ((99, 1.0),))
    handle = engine.submit(GenerationRequest(prompts[0], GREEDY, add_bos=False, lora=()))
    with pytest.raises(GenerationError, match="unloaded"):
        for _ in handle:
            pass
    monkeypatch.undo()
    assert len(_greedy(engine, prompts[0], (("a", 1.0),))) == 16
