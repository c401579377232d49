"""The support-matrix generator: evidence lines -> rows, merging runs, the generated page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufworker import support_matrix as sm
from ggufworker.registry.schema import Registry


def _registry() -> Registry:
    arch = {"hf_architectures": ["XForCausalLM"], "converter": True}
    return Registry.model_validate({
        "default_model": "m",
        "architectures": {
            "good": {**arch, "gguf_arch": "llama"},
            "bad": {**arch, "gguf_arch": "olmo"},
            "untested": {**arch, "gguf_arch": "mpt", "converter": False},
            "claimed": {**arch, "gguf_arch": "gpt2"},
            "logits-only": {**arch, "gguf_arch": "qwen2"},
        },
        "models": [{"name": "m", "architecture": "good", "quantization": "Q8_0",
                    "filename": "m.gguf", "license": "mit",
                    "sources": [{"type": "hf", "repo": "a/b", "filename": "m.gguf"}]}],
    })  # fmt: skip


def _line(family: str, check: str, passed: bool = True, value: float | None = None, *,
          backend: str = "cpu", date: str = "2026-01-02", detail: str = "") -> str:  # fmt: skip
    return json.dumps({"family": family, "check": check, "passed": passed, "value": value,
                       "detail": detail or family, "backend": backend, "date": date,
                       "test": "t"})  # fmt: skip


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_from_evidence(tmp_path):
    lines = [
        _line("good", "converter"), _line("good", "tokenizer"),
        _line("good", "f32", value=3e-7), _line("good", "f32", value=9e-7, detail="variant"),
        _line("good", "f16", value=1e-3), _line("good", "q8_0", value=2e-2),
        _line("good", "engine"), _line("good", "server"),
        _line("bad", "converter"), _line("bad", "f32", value=5e-7),
        _line("bad", "q8_0", False, 0.2, date="2026-01-03"),
        _line("bad", "engine", False),
        _line("logits-only", "f32", value=1e-6),
    ]  # fmt: skip
    recs = sm.read_evidence([_write(tmp_path / "cpu.jsonl", lines)])
    rows, backends = sm.build_rows(_registry(), recs)
    assert backends == ["cpu"]
    by = {r.family: r for r in rows}
    assert [r.family for r in rows] == ["good", "bad", "untested", "claimed", "logits-only"]
    good = by["good"]
    assert (good.converter, good.tokenizer, good.f32) == ("yes", "identical", "9.0e-07")
    assert good.quants == {"f16": "yes (1.0e-03)", "q8_0": "yes (2.0e-02)"}
    assert good.served == "engine + server"
    assert good.backends == {"cpu": "2026-01-02"}
    bad = by["bad"]
    assert bad.quants == {"f16": sm.NOT_TESTED, "q8_0": "FAILED (2.0e-01)"}
    assert bad.served == "engine FAILED"
    assert bad.backends == {"cpu": "2026-01-03 (failed: engine, q8_0)"}
    untested = by["untested"]
    assert (untested.converter, untested.f32, untested.served) == ("no", "—", "—")
    assert untested.backends == {"cpu": "—"}
    assert by["claimed"].converter == "untested"
    assert by["logits-only"].converter == "yes"


def test_later_run_replaces_a_check_and_a_new_backend_adds_a_column(tmp_path):
    evidence = tmp_path / "docs" / "support"
    first = _write(tmp_path / "run1" / "cpu.jsonl", [
        _line("good", "f32", False, 0.5, date="2026-01-01"), _line("good", "engine"),
    ])  # fmt: skip
    sm.merge_results([first], evidence)
    again = _write(
        tmp_path / "run2" / "cpu.jsonl", [_line("good", "f32", True, 4e-7, date="2026-01-05")]
    )
    cuda = _write(
        tmp_path / "run3" / "cuda.jsonl",
        [_line("good", "f32", True, 6e-7, backend="cuda", date="2026-02-01")],
    )
    out = sm.generate(
        results=[again, cuda],
        evidence_dir=evidence,
        output=tmp_path / "docs" / "MODEL_SUPPORT.md",
        registry=_registry(),
    )
    assert sorted(p.name for p in evidence.iterdir()) == ["cpu.jsonl", "cuda.jsonl"]
    cpu = sm.read_evidence([evidence / "cpu.jsonl"])
    assert {(r.check, r.passed) for r in cpu} == {("f32", True), ("engine", True)}
    text = out.read_text()
    first_line = text.splitlines()[0]
    assert sm.COMMAND in first_line and "do not edit" in first_line
    good = next(line for line in text.splitlines() if line.startswith("| `good`"))
    cells = [c.strip() for c in good.strip("|").split("|")]
    assert cells[4] == "6.0e-07"  # the largest over backends
    assert cells[-2:] == ["2026-01-05", "2026-02-01"]
    assert any(line.startswith("| `untested`") for line in text.splitlines())


def test_bad_evidence_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "cpu.jsonl", [_line("good", "f32"), '{"family": "x"}'])
    with pytest.raises(ValueError, match=r"cpu\.jsonl:2"):
        sm.read_evidence([path])


def test_cli_reports_bad_evidence_in_one_line(tmp_path, capsys):
    bad = _write(tmp_path / "r" / "cpu.jsonl", ["not json"])
    code = sm.main(["--results", str(bad), "--evidence", str(tmp_path / "ev"),
                    "--output", str(tmp_path / "out.md")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("support_matrix: error:") and "\n" not in err
    assert not (tmp_path / "out.md").exists()
