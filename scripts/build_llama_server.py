#!/usr/bin/env python3
"""Build llama.cpp's ``llama-server`` from the pinned llama-cpp-python sdist, as a benchmark peer.

The same llama.cpp that ggufworker runs (the sdist vendors it), built with the same
machine-safe flags ``scripts/install.py`` picks (no AMX on x86; CUDA when a GPU and nvcc are
present), so ``ggufworker bench --http --targets ...,llama-server`` compares the servers and not
two llama.cpp versions. The binary is cached by version and flags:

    python3 scripts/build_llama_server.py            # prints the path of the binary
    python3 scripts/build_llama_server.py --sdist llama_cpp_python-0.3.36.tar.gz --jobs 16

No network is needed beyond the package index (the sdist; ``--sdist`` for none at all): the web
UI is not built and no prebuilt UI is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from install import build_cache_dir, choose_cmake_args, log, pinned_llama_version  # noqa: E402


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--quiet", "-d", str(into), f"llama-cpp-python=={version}",
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise SystemExit("build_llama_server: pip downloaded no llama-cpp-python sdist")
    return found[0]


def build(*, sdist: Path | None = None, jobs: int | None = None, rebuild: bool = False) -> Path:
    """Build (or reuse) ``llama-server``; returns its path.

    Raises:
        subprocess.CalledProcessError: cmake or the compiler failed.
    """
    version = pinned_llama_version()
    backend, cmake_args = choose_cmake_args()
    key = hashlib.sha256(f"{version}|{cmake_args}|{platform.machine()}".encode()).hexdigest()[:16]
    out = build_cache_dir() / f"llama-server-{version}-{key}"
    binary = out / "llama-server"
    if binary.is_file() and not rebuild:
        return binary
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        src = sdist or _download_sdist(version, work)
        with tarfile.open(src) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(work, members=members, filter="data")
        root = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work / "build"
        log(f"configuring llama-server ({backend}: {cmake_args or 'default flags'})")
        subprocess.run(
            [
                "cmake",
                "-S",
                str(root),
                "-B",
                str(build_dir),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                *cmake_args.split(),
            ],  # fmt: skip
            check=True,
            stdout=subprocess.DEVNULL,
        )
        n = str(jobs or os.cpu_count() or 2)
        log(f"building llama-server with {n} jobs; this takes minutes")
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", n],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        made = next(build_dir.rglob("bin/llama-server"))
        tmp_out = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.mkdir(parents=True)
        shutil.copy2(made, tmp_out / "llama-server")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp_out, out)
    log(f"llama-server built in {time.monotonic() - started:.0f} s: {binary}")
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, default=None, help="a local sdist (no download)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached binary")
    args = parser.parse_args(argv)
    try:
        path = build(sdist=args.sdist, jobs=args.jobs, rebuild=args.rebuild)
    except subprocess.CalledProcessError as exc:
        print(f"build_llama_server: {exc.cmd[0]} failed (exit {exc.returncode})", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
