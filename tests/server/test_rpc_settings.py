"""`--rpc` and `ggufworker rpc-worker` input checks, without a model: endpoints, which model
an entry splits, probes of a port, the worker's bind rules and the typed 503."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ggufworker.config import ServerSettings
from ggufworker.engine.child import pack_error, unpack_error
from ggufworker.errors import (
    ContextLengthExceededError,
    GenerationError,
    InvalidRequestError,
    RegistryError,
    RpcWorkerUnavailableError,
    error_spec,
)
from ggufworker.registry import load_registry
from ggufworker.rpc_worker import check_bind
from ggufworker.server.core.loading import rpc_endpoints
from ggufworker.server.core.models import ModelSpec
from ggufworker.server.core.rpc_split import (
    parse_endpoint,
    parse_rpc_entry,
    probe,
    rpc_assignments,
)
from ggufworker.settings_sources import resolve_settings
from tests.conftest import REPO

from .conftest import free_port


def test_endpoints_are_host_and_port() -> None:
    assert parse_endpoint(" 10.0.0.2:50052 ") == "10.0.0.2:50052"
    assert parse_endpoint("[fd00::2]:7000") == "[fd00::2]:7000"
    for bad in ("10.0.0.2", ":50052", "host:0", "host:70000", "host:port"):
        with pytest.raises(InvalidRequestError, match="HOST:PORT"):
            parse_endpoint(bad)


def test_an_entry_names_its_model_or_means_the_first() -> None:
    assert parse_rpc_entry("a:1,b:2") == (None, ("a:1", "b:2"))
    assert parse_rpc_entry("smollm2:135m=a:1") == ("smollm2:135m", ("a:1",))
    with pytest.raises(InvalidRequestError, match="no worker"):
        parse_rpc_entry("m=")
    with pytest.raises(InvalidRequestError, match="twice"):
        parse_rpc_entry("a:1,a:1")


def test_assignments_follow_the_served_models() -> None:
    settings = ServerSettings(
        models=["/m/big.gguf", "small"], rpc=["10.0.0.2:1,10.0.0.3:2", "small=10.0.0.4:3"]
    )
    assert rpc_assignments(settings) == {
        "big": ("10.0.0.2:1", "10.0.0.3:2"),
        "small": ("10.0.0.4:3",),
    }
    with pytest.raises(InvalidRequestError, match="'other' is not served"):
        rpc_assignments(ServerSettings(models=["small"], rpc=["other=a:1"]))
    with pytest.raises(InvalidRequestError, match="twice"):
        rpc_assignments(ServerSettings(models=["small"], rpc=["a:1", "small=b:2"]))
    with pytest.raises(InvalidRequestError, match="worker b:2 is named for 'big' and 'small'"):
        rpc_assignments(ServerSettings(models=["big", "small"], rpc=["a:1,b:2", "small=b:2"]))


def test_rpc_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    # one env value is one entry: its commas separate workers
    monkeypatch.setenv("GGUFWORKER_RPC", "127.0.0.1:5001,127.0.0.1:5002")
    assert resolve_settings({}).rpc == ["127.0.0.1:5001,127.0.0.1:5002"]
    assert resolve_settings({"rpc": ["m=a:1"]}).rpc == ["m=a:1"]


def test_probe_tells_a_closed_port_from_a_listening_one() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert probe(f"127.0.0.1:{port}")
    assert not probe(f"127.0.0.1:{free_port()}")


def test_worker_binds_loopback_unless_allowed() -> None:
    assert check_bind("localhost", free_port()) == "127.0.0.1"
    with pytest.raises(InvalidRequestError, match="--allow-remote"):
        check_bind("10.1.2.3", free_port())
    with pytest.raises(InvalidRequestError, match="IPv4"):
        check_bind("::1", free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(InvalidRequestError, match="cannot listen"):
            check_bind("127.0.0.1", taken.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "--allow-remote"),
        (["--port", "0"], "--port must be in 1..65535"),
        (["--device", "NOPE"], "no device 'NOPE' here"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_worker_cli_bad_input_is_one_line(args: list[str], message: str) -> None:
    port = [] if "--port" in args else ["--port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-m", "ggufworker", "rpc-worker", *port, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_worker_unavailable_is_a_503_naming_the_worker() -> None:
    exc = RpcWorkerUnavailableError("worker 10.0.0.2:1 down", workers=("10.0.0.2:1",))
    spec = error_spec(exc)
    assert (spec.status, spec.code) == (503, "rpc_worker_unavailable")
    # typed errors cross the child's pipe by name
    back = unpack_error(pack_error(exc))
    assert type(back) is RpcWorkerUnavailableError and str(back) == str(exc)
    ctx = unpack_error(pack_error(ContextLengthExceededError("too long")))
    assert type(ctx) is ContextLengthExceededError and ctx.param == "messages"
    assert type(unpack_error(("KeyError", "x", None))) is GenerationError


REGISTRY = """
version: 1
default_model: big
architectures:
  llama: {gguf_arch: llama, hf_architectures: [LlamaForCausalLM], converter: true}
models:
  - name: big
    architecture: llama
    quantization: Q4_1
    filename: big.gguf
    license: apache-2.0
    sources: [{type: hf, repo: someone/big, filename: big.gguf}]
    rpc: [10.8.0.2:50052, 10.8.0.3:50052]
"""


def test_registry_entry_names_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "models.yaml"
    registry.write_text(REGISTRY)
    monkeypatch.setenv("GGUFWORKER_REGISTRY", str(registry))
    spec = ModelSpec("big", "big")
    assert rpc_endpoints(spec, ServerSettings(models=["big"])) == (
        "10.8.0.2:50052",
        "10.8.0.3:50052",
    )
    # --rpc for the model wins; a model served by path has no registry entry
    assert rpc_endpoints(spec, ServerSettings(models=["big"], rpc=["big=10.8.0.9:1"])) == (
        "10.8.0.9:1",
    )
    assert rpc_endpoints(ModelSpec("x", "/m/x.gguf"), ServerSettings(models=["/m/x.gguf"])) == ()
    registry.write_text(REGISTRY.replace("10.8.0.3:50052", "10.8.0.3"))
    with pytest.raises(RegistryError, match=r"models\[0\]\.rpc\[1\]"):
        load_registry()
