#!/usr/bin/env python3
"""Install ggufworker with a llama.cpp build that is safe for this machine.

llama-cpp-python ships llama.cpp as source and compiles it on install. Its default native build
segfaults on Intel CPUs with AMX as soon as a prompt has more than one token (llama.cpp #20824,
ollama #17205), and pip caches the built wheel by version only, not by build flags. So this
script:

1. picks CMake flags for the machine: Metal on Apple silicon, CUDA when an NVIDIA GPU and nvcc
   are present, otherwise the CPU's own SIMD features named one by one, never AMX; a
   user's ``CMAKE_ARGS`` wins;
2. builds the pinned llama-cpp-python wheel once per (version, flags) into its own cache;
3. installs that wheel and then the project (editable) with the chosen extras;
4. runs a self-check that decodes a multi-token prompt in a subprocess;
5. with ``--dev``, installs Debian's ``chromium`` with apt-get when it is missing (the web
   page's browser test drives it; no browser is ever downloaded by the test tools). Machines
   without apt-get (macOS) skip this step; the browser test then fails, naming what is missing.

Standard library only: it runs before anything is installed. Usage::

    python3 scripts/install.py [--dev] [--venv .venv] [--rebuild]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# /proc/cpuinfo flag -> llama.cpp CMake option. AMX is deliberately absent.
X86_FEATURES = (
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
    ("avx_vnni", "GGML_AVX_VNNI"),
)


def log(msg: str) -> None:
    print(f"[install] {msg}", flush=True)


def pinned_llama_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"llama-cpp-python==([^"]+)"', text)
    if not match:
        raise SystemExit("install: pyproject.toml does not pin llama-cpp-python==VERSION")
    return match.group(1)


def cuda_architectures() -> str | None:
    """Compute capability of the visible GPUs (e.g. "90"), or None when unknown."""
    if os.environ.get("CMAKE_CUDA_ARCHITECTURES"):
        return os.environ["CMAKE_CUDA_ARCHITECTURES"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    caps = sorted({line.strip().replace(".", "") for line in out.splitlines() if line.strip()})
    return ";".join(caps) or None


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None and (
        shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
    )


def x86_flags(cpuinfo: str | None = None) -> list[str]:
    """CMake options for the x86 SIMD features in ``cpuinfo`` (default: /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    present: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present.update(line.split(":", 1)[1].split())
            break
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{opt}={'ON' if flag in present else 'OFF'}" for flag, opt in X86_FEATURES]
    return args


def choose_cmake_args() -> tuple[str, str]:
    """Return (backend, CMAKE_ARGS) for this machine; a user's CMAKE_ARGS wins."""
    user = os.environ.get("CMAKE_ARGS", "").strip()
    if user:
        return "user", user
    # The RPC backend is built in everywhere: `ggufworker rpc-worker` serves it from the same
    # build, and the protocol needs client and worker from one source line.
    rpc = "-DGGML_RPC=ON"
    system, machine = platform.system(), platform.machine().lower()
    if system == "Darwin" and machine == "arm64":
        return "metal", f"-DGGML_METAL=ON {rpc}"
    if has_cuda():
        args = ["-DGGML_CUDA=ON", rpc]
        arch = cuda_architectures()
        if arch:
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
        # The CPU part of a CUDA build must not pick up AMX either.
        if machine in {"x86_64", "amd64"}:
            args += x86_flags()
        return "cuda", " ".join(args)
    if machine in {"x86_64", "amd64"}:
        return "cpu", " ".join([*x86_flags(), rpc])
    return "cpu", rpc


def run(cmd: list[str], **kwargs: object) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def ensure_python(venv_dir: Path | None) -> Path:
    """The interpreter to install into: the active venv, or a new one at venv_dir."""
    if venv_dir is None:
        if sys.prefix == sys.base_prefix:
            raise SystemExit("install: not in a virtualenv; pass --venv DIR (default .venv)")
        return Path(sys.executable)
    python = venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        log(f"creating virtualenv {venv_dir}")
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    return python


def build_cache_dir() -> Path:
    base = os.environ.get("GGUFWORKER_HOME")
    if base:
        return Path(base) / "build"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ggufworker" / "build"


def build_wheel(python: Path, version: str, cmake_args: str, *, rebuild: bool) -> Path:
    key = hashlib.sha256(f"{version}|{cmake_args}|{platform.machine()}".encode()).hexdigest()[:16]
    out = build_cache_dir() / f"llama-cpp-python-{version}-{key}"
    wheels = sorted(out.glob("llama_cpp_python-*.whl")) if out.exists() else []
    if wheels and not rebuild:
        log(f"reusing llama-cpp-python wheel built with these flags: {wheels[-1]}")
        return wheels[-1]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, CMAKE_ARGS=cmake_args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    log(f"building llama-cpp-python {version} (CMAKE_ARGS={cmake_args!r}); this takes minutes")
    started = time.monotonic()
    # --no-cache-dir: pip's cache is keyed by version, not flags, and may hold an unsafe build.
    run(
        [
            str(python),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "--no-binary",
            "llama-cpp-python",
            "-w",
            str(tmp),
            f"llama-cpp-python=={version}",
        ],
        env=env,
    )
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"built in {time.monotonic() - started:.0f} s")
    return sorted(out.glob("llama_cpp_python-*.whl"))[-1]


CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> bool:
    """Install Debian's chromium with apt-get when it is missing (``--dev``: the web page's
    browser test). Never fails the install: without apt-get, root or the package, it says so
    and returns False.
    """
    if CHROMIUM.exists():
        return True
    apt = shutil.which("apt-get")
    if apt is None:
        log(f"no apt-get: {CHROMIUM} not installed (the web page's browser test needs it)")
        return False
    prefix: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            log("not root and no sudo: chromium not installed (apt-get install chromium)")
            return False
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, apt, "install", "-y", "-q", "chromium"]
    log("installing chromium with apt-get (for the browser test)")
    try:
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            # a fresh machine has no package lists yet
            subprocess.run([*prefix, apt, "update", "-q"], env=env, stdout=subprocess.DEVNULL)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL)
    except OSError as exc:
        log(f"apt-get failed: {exc}")
    if not CHROMIUM.exists():
        log("chromium could not be installed; the browser test will fail until it is")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install ggufworker with a safe llama.cpp build.")
    parser.add_argument(
        "--venv",
        type=Path,
        default=Path(".venv"),
        help="virtualenv to create/use (default .venv; 'active' = current env)",
    )
    parser.add_argument("--dev", action="store_true", help="also install test and lint tools")
    parser.add_argument("--rebuild", action="store_true", help="rebuild llama-cpp-python")
    parser.add_argument("--skip-check", action="store_true", help="skip the self-check")
    args = parser.parse_args(argv)

    venv_dir = None if str(args.venv) == "active" else (ROOT / args.venv)
    python = ensure_python(venv_dir)
    version = pinned_llama_version()
    backend, cmake_args = choose_cmake_args()
    log(f"backend {backend}; llama-cpp-python {version}")
    try:
        run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        wheel = build_wheel(python, version, cmake_args, rebuild=args.rebuild)
        run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--force-reinstall",
                str(wheel),
            ]
        )
        extras = "[dev]" if args.dev else ""
        run([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}{extras}"])
    except subprocess.CalledProcessError as exc:
        print(
            f"install: command failed with exit code {exc.returncode}: {exc.cmd[2:5]}",
            file=sys.stderr,
        )
        return 1
    if args.dev:
        ensure_chromium()
    if not args.skip_check:
        check = subprocess.run([str(python), "-m", "ggufworker.engine.selfcheck"])
        if check.returncode != 0:
            print(
                f"install: the llama.cpp build failed its self-check (exit {check.returncode}); "
                "rebuild with other CMAKE_ARGS and --rebuild",
                file=sys.stderr,
            )
            return 1
    log(f"done: {python.parent / 'ggufworker'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
