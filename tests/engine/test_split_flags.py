"""Placement over several GPUs: the device list, the checks of split mode / main GPU / tensor
split against the GPUs that exist, where replicas go, and real loads of SmolLM2 with them.

The GPU tests need two GPUs and skip with ``requires_hardware`` elsewhere; the rest run on any
machine (on a CPU-only build every GPU index is one that is not there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufworker.engine import Engine
from ggufworker.engine._native import llama_cpp
from ggufworker.engine.devices import (
    Device,
    Placement,
    check_placement,
    gpu_devices,
    list_devices,
    replica_placements,
    threads_per_replica,
)
from ggufworker.engine.types import GenerationRequest, SamplingParams
from ggufworker.errors import InvalidRequestError
from tests.engine.agree import assert_greedy_agree

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
PROMPT = "The history of the printing press begins"


def _gpus(n: int) -> list[Device]:
    return [Device(i, f"CUDA{i}", "test GPU", "gpu", 1 << 34, 1 << 35) for i in range(n)]


def test_device_list_matches_offload_support() -> None:
    devices = list_devices()
    assert any(d.kind == "cpu" for d in devices)
    assert [d.index for d in devices] == list(range(len(devices)))
    # llama.cpp counts the RPC backend (remote devices) as offload support too
    offload = bool(gpu_devices()) or bool(llama_cpp.llama_supports_rpc())
    assert offload == bool(llama_cpp.llama_supports_gpu_offload())


@pytest.mark.parametrize(
    ("options", "n_gpus", "param"),
    [
        ({"main_gpu": 1}, 1, "main_gpu"),
        ({"main_gpu": 1}, 0, "main_gpu"),
        ({"main_gpu": -1}, 2, "main_gpu"),
        ({"tensor_split": [3, 1]}, 1, "tensor_split"),
        ({"tensor_split": [1]}, 0, "tensor_split"),
        ({"tensor_split": [0, 0]}, 2, "tensor_split"),
        ({"tensor_split": [1, -1]}, 2, "tensor_split"),
        ({"tensor_split": [3, 1], "split_mode": "none"}, 2, "tensor_split"),
        ({"split_mode": "diagonal"}, 2, "split_mode"),
    ],
)
def test_placement_errors(options: dict, n_gpus: int, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_placement(gpus=_gpus(n_gpus), **options)
    assert info.value.param == param
    assert "\n" not in str(info.value)


def test_missing_gpu_errors_say_what_is_there() -> None:
    with pytest.raises(InvalidRequestError, match=r"sees 2 GPU\(s\) \(0: CUDA0, 1: CUDA1\)"):
        check_placement(main_gpu=2, gpus=_gpus(2))
    with pytest.raises(InvalidRequestError, match="names 3 GPU.*sees no GPU"):
        check_placement(tensor_split=[1, 1, 1], gpus=[])


def test_placements_that_fit() -> None:
    check_placement(main_gpu=1, tensor_split=[3, 1], split_mode="row", gpus=_gpus(2))
    check_placement(main_gpu=0, gpus=[])  # the default index needs no GPU
    check_placement(split_mode="layer", gpus=[])


def test_replica_placements() -> None:
    two = _gpus(2)
    assert replica_placements(2, gpus=two) == [
        Placement("none", 0, None, "CUDA0"),
        Placement("none", 1, None, "CUDA1"),
    ]
    assert [p.main_gpu for p in replica_placements(2, main_gpu=1, gpus=_gpus(3))] == [1, 2]
    assert replica_placements(1, split_mode="layer", tensor_split=[3, 1], gpus=two) == [
        Placement("layer", None, (3, 1), "gpu")
    ]
    assert replica_placements(1, gpus=two[:1]) == [Placement(None, None, None, "CUDA0")]
    # no GPU, or layers kept on the CPU: CPU engines sharing the cores
    assert [p.device for p in replica_placements(3, gpus=[])] == ["cpu"] * 3
    assert [p.device for p in replica_placements(2, n_gpu_layers=0, gpus=two)] == ["cpu"] * 2
    for bad in (
        {"replicas": 3},
        {"replicas": 2, "main_gpu": 1},
        {"replicas": 2, "split_mode": "row"},
        {"replicas": 2, "tensor_split": [1, 1]},
        {"replicas": 0},
    ):
        with pytest.raises(InvalidRequestError):
            replica_placements(gpus=two, **bad)


def test_cpu_replicas_share_the_cores() -> None:
    import os

    cores = os.cpu_count() or 1
    assert threads_per_replica(None, 2) == max(1, cores // 2)
    assert threads_per_replica(3, 2) == 3
    assert threads_per_replica(None, 1) is None


def test_load_refuses_gpus_that_are_not_there(smollm2_path: Path) -> None:
    missing = len(gpu_devices())
    with pytest.raises(InvalidRequestError, match="main GPU"):
        Engine.load(smollm2_path, n_ctx=256, n_parallel=1, main_gpu=max(missing, 1))
    with pytest.raises(InvalidRequestError, match="tensor split"):
        Engine.load(
            smollm2_path, n_ctx=256, n_parallel=1, split_mode="layer",
            tensor_split=[1.0] * (missing + 1),
        )  # fmt: skip


def _greedy(path: Path, **placement: object) -> tuple[Engine, list[int], list[int]]:
    engine = Engine.load(path, n_ctx=512, n_parallel=1, **placement)  # type: ignore[arg-type]
    prompt = engine.tokenize(PROMPT)
    out = engine.generate(GenerationRequest(PROMPT, GREEDY))
    return engine, prompt, out.token_ids


@pytest.fixture(scope="module")
def default_run(smollm2_path: Path) -> Iterator[tuple[Engine, list[int], list[int]]]:
    """Today's load (no placement options) and its greedy tokens."""
    engine, prompt, ids = _greedy(smollm2_path)
    yield engine, prompt, ids
    engine.close()


def test_explicit_defaults_change_nothing(
    smollm2_path: Path, default_run: tuple[Engine, list[int], list[int]]
) -> None:
    """llama.cpp's defaults spelled out (split by layer, main GPU 0) and split mode none on
    the first device give today's tokens: the single-device path is unchanged."""
    for placement in ({"split_mode": "layer", "main_gpu": 0}, {"split_mode": "none"}):
        engine, _, ids = _greedy(smollm2_path, **placement)
        try:
            assert ids == default_run[2], placement
            assert engine.info.backend == default_run[0].info.backend
        finally:
            engine.close()


# --- two GPUs ---------------------------------------------------------------------------------

two_gpus = pytest.mark.requires_hardware("two GPUs")


def _need_two_gpus() -> None:
    if len(gpu_devices()) < 2:
        pytest.skip(f"needs two GPUs, this machine has {len(gpu_devices())}")


@two_gpus
@pytest.mark.parametrize(
    "placement",
    [
        {"split_mode": "layer"},
        {"split_mode": "row"},
        {"split_mode": "layer", "tensor_split": [3.0, 1.0]},
        {"split_mode": "none", "main_gpu": 1},
    ],
    ids=["layer", "row", "tensor-split-3-1", "second-gpu"],
)
def test_split_over_two_gpus_gives_one_gpus_tokens(smollm2_path: Path, placement: dict) -> None:
    _need_two_gpus()
    ref, prompt, ref_ids = _greedy(smollm2_path, split_mode="none", main_gpu=0)
    ref.close()
    engine, _, ids = _greedy(smollm2_path, **placement)
    try:
        assert len(ids) == GREEDY.max_tokens
        assert_greedy_agree(engine, prompt, ref_ids, ids, f"split {placement}", exact=False)
    finally:
        engine.close()
