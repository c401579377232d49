"""The install step: build flags chosen for the machine, and the multi-token self-check."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def install():
    spec = importlib.util.spec_from_file_location("install_script", REPO / "scripts" / "install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAPPHIRE_RAPIDS = (
    "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512vbmi avx512_vnni "
    "avx512_bf16 avx_vnni amx_bf16 amx_int8 amx_tile\n"
)
HASWELL = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"


def test_x86_flags_never_enable_amx_or_native(install) -> None:
    args = install.x86_flags(SAPPHIRE_RAPIDS)
    assert "-DGGML_NATIVE=OFF" in args
    assert not any("AMX" in a for a in args)
    for opt in ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VBMI", "AVX512_VNNI"):
        assert f"-DGGML_{opt}=ON" in args


def test_x86_flags_follow_the_cpu(install) -> None:
    args = install.x86_flags(HASWELL)
    assert "-DGGML_AVX2=ON" in args
    assert "-DGGML_AVX512=OFF" in args
    assert "-DGGML_AVX512_BF16=OFF" in args


def test_user_cmake_args_win(install, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_VULKAN=ON")
    assert install.choose_cmake_args() == ("user", "-DGGML_VULKAN=ON")


def test_cuda_chosen_when_gpu_and_nvcc(install, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.setattr(install, "has_cuda", lambda: True)
    monkeypatch.setattr(install, "cuda_architectures", lambda: "90")
    monkeypatch.setattr(install.platform, "system", lambda: "Linux")
    monkeypatch.setattr(install.platform, "machine", lambda: "x86_64")
    backend, args = install.choose_cmake_args()
    assert backend == "cuda"
    assert "-DGGML_CUDA=ON" in args and "-DCMAKE_CUDA_ARCHITECTURES=90" in args
    assert "AMX" not in args
    assert "-DGGML_RPC=ON" in args  # rpc-worker is served from the same build


def test_metal_on_apple_silicon(install, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.setattr(install.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(install.platform, "machine", lambda: "arm64")
    assert install.choose_cmake_args() == ("metal", "-DGGML_METAL=ON -DGGML_RPC=ON")


def test_installed_build_passes_the_multi_token_self_check() -> None:
    # The check runs in a subprocess: a build with the AMX crash dies with SIGSEGV there.
    result = subprocess.run(
        [sys.executable, "-m", "ggufworker.engine.selfcheck"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "16-token prompt" in result.stdout
