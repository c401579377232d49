"""``/openapi.json`` tells the truth: schemathesis against a real `ggufworker serve`.

Every operation of the served schema gets its examples and a bounded number of generated
requests (valid and invalid, fixed seed). Each response must be no 5xx, a status the schema
documents for that operation, a documented content type, and a body that matches the documented
schema (errors: OpenAI's envelope). Generation lengths are capped so the run stays short; the
server answers a greedy request exactly as before the run afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import COMMON, ServerProcess, running

EXAMPLES_PER_OPERATION = 12
MAX_NEW_TOKENS = 4
REQUEST_TIMEOUT_S = 120
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
PROBE = {
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 12,
    "temperature": 0,
}

SETTINGS: dict[str, Any] = {
    "derandomize": True,  # a fixed seed: the same cases on every run
    "deadline": None,
    "phases": [Phase.explicit, Phase.generate],
    "suppress_health_check": list(HealthCheck),
    "database": None,
}

calls: dict[str, int] = {"cases": 0, "slowest_ms": 0}  # requests sent by the schema run


@pytest.fixture(scope="module")
def fuzz_server(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    """SmolLM2 served from its file (so Ollama's /api/delete cannot touch the shared cache),
    with a fresh cache root of its own; the probe's answer taken before any fuzzing."""
    logs = tmp_path_factory.mktemp("fuzz-server")
    server = ServerProcess(
        [
            *COMMON,
            "--model", str(smollm2_path),
            "--parallel", "2",
            "--max-queue", "8",
            "--offline",
        ],
        logs / "server.log",
        home=logs / "home",
    )  # fmt: skip
    with running(server):
        before = httpx.post(f"{server.url}/v1/chat/completions", json=PROBE, timeout=60).json()
        yield server, before


def _cap(body: Any, path: str) -> None:
    """Keep generations short: cap (or set) the token limit of a well-formed body."""
    if not isinstance(body, dict):
        return
    if path.startswith("/api/"):
        options = body.get("options", {})
        if isinstance(options, dict):
            n = options.get("num_predict")
            if n is None or (isinstance(n, int) and (n > MAX_NEW_TOKENS or n < 0)):
                options["num_predict"] = MAX_NEW_TOKENS
            if "options" not in body:
                body["options"] = options
        return
    names = ("max_output_tokens",) if path.startswith("/v1/responses") else ("max_tokens",)
    keys = [k for k in (*names, "max_completion_tokens") if k in body]
    if not keys:
        body[names[0]] = MAX_NEW_TOKENS
    for key in keys:
        value = body[key]
        # null means "no limit" (up to the context): as long as an unlimited request
        unlimited = value is None
        too_long = isinstance(value, int) and not isinstance(value, bool) and value > MAX_NEW_TOKENS
        if unlimited or too_long:
            body[key] = MAX_NEW_TOKENS


def _check(case: Any, failures: list[str]) -> None:
    if case.method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
        _cap(case.body, case.path)
    calls["cases"] += 1
    started = time.perf_counter()
    try:
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
    except Exception as exc:  # collect every violation, report them together
        failures.append(f"{case.method} {case.path}: {exc}"[:2000])
    calls["slowest_ms"] = max(calls["slowest_ms"], int((time.perf_counter() - started) * 1000))


@pytest.mark.slow
def test_responses_match_the_schema(fuzz_server: tuple[ServerProcess, dict[str, Any]]) -> None:
    server, before = fuzz_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        for example in schema.get_strategies_from_examples(operation):
            given(case=example)(settings(max_examples=1, **SETTINGS)(
                lambda case: _check(case, failures)))()  # fmt: skip
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            try:
                given(case=strategy)(settings(max_examples=EXAMPLES_PER_OPERATION, **SETTINGS)(
                    lambda case: _check(case, failures)))()  # fmt: skip
            except Unsatisfiable:
                # nothing to get wrong (GET /health has no parameters): no invalid request exists
                assert mode is GenerationMode.NEGATIVE, operation.label
    print(
        f"schemathesis: {calls['cases']} cases over {len(operations)} operations, "
        f"slowest {calls['slowest_ms']} ms"
    )
    assert not failures, "\n\n".join(failures[:20])
    assert calls["cases"] >= 300

    # afterwards the server is up and answers exactly as before the run (greedy)
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    after = httpx.post(f"{server.url}/v1/chat/completions", json=PROBE, timeout=60).json()
    assert after["choices"][0]["message"]["content"]
    assert after["choices"][0]["message"] == before["choices"][0]["message"]


@pytest.mark.parametrize("token", [-258, 10**6])
def test_out_of_vocabulary_detokenize_is_a_400(
    token: int, fuzz_server: tuple[ServerProcess, dict[str, Any]]
) -> None:
    # found by the schema run: llama.cpp aborted the whole process on such an id
    server, _ = fuzz_server
    response = httpx.post(f"{server.url}/detokenize", json={"tokens": [1, token]}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tokens"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
