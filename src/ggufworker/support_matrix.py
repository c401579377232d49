"""docs/MODEL_SUPPORT.md, generated from models.yaml and the evidence the test suite records.

Family tests append one JSON line per check to ``.cache/support-results/<backend>.jsonl``
(``tests/support.py``)::

    {"family": "olmo", "check": "f32", "passed": true, "value": 7.5e-07, "detail": "olmo",
     "backend": "cpu", "date": "2026-12-01", "test": "tests/...::test_x[olmo]"}

``python -m ggufworker.support_matrix`` merges those results into the committed evidence files
(``docs/support/<backend>.jsonl``: a later run replaces the records of the checks it repeated
and keeps the rest, so a CUDA run adds its column without re-running the CPU suite) and renders
one table row per models.yaml architecture. A family without evidence is listed as untested; a
failed check is shown as failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ggufworker.errors import RegistryError
from ggufworker.registry.schema import Registry, load_registry

COMMAND = "python -m ggufworker.support_matrix"
DEFAULT_RESULTS = Path(".cache/support-results")
DEFAULT_EVIDENCE = Path("docs/support")
DEFAULT_OUTPUT = Path("docs/MODEL_SUPPORT.md")

#: checks shown as "within tolerance" columns, in order
QUANT_CHECKS = ("f16", "q8_0")
SERVED_CHECKS = ("engine", "server")
LOGIT_CHECKS = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
NOT_TESTED = "—"


@dataclass(frozen=True)
class Evidence:
    """One recorded check (a line of an evidence file)."""

    family: str
    check: str
    passed: bool
    backend: str
    date: str
    value: float | None = None
    detail: str = ""
    test: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What a later record of the same check replaces."""
        return (self.backend, self.family, self.check, self.detail)

    def to_json(self) -> str:
        return json.dumps(
            {"family": self.family, "check": self.check, "passed": self.passed,
             "value": self.value, "detail": self.detail, "backend": self.backend,
             "date": self.date, "test": self.test},
            ensure_ascii=False,
        )  # fmt: skip


@dataclass
class Row:
    """One family's line of the matrix (cells already formatted)."""

    family: str
    gguf_arch: str
    converter: str
    tokenizer: str
    f32: str
    quants: dict[str, str] = field(default_factory=dict)
    served: str = NOT_TESTED
    backends: dict[str, str] = field(default_factory=dict)
    pooling: str = ""  # embedding and rerank families (models.yaml)
    notes: str = ""


def read_evidence(paths: Iterable[Path]) -> list[Evidence]:
    """Records of the given JSON-lines files, in file order (later lines are newer).

    Raises:
        ValueError: a line is not a JSON object with the recorder's fields (names the line).
    """
    out: list[Evidence] = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(Evidence(
                    family=str(d["family"]), check=str(d["check"]), passed=bool(d["passed"]),
                    backend=str(d["backend"]), date=str(d["date"]),
                    value=None if d.get("value") is None else float(d["value"]),
                    detail=str(d.get("detail") or ""), test=str(d.get("test") or ""),
                ))  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an evidence record ({exc})") from exc
    return out


def latest(records: Iterable[Evidence]) -> list[Evidence]:
    """Keep the newest record of each (backend, family, check, detail), in a stable order."""
    newest: dict[tuple[str, str, str, str], Evidence] = {}
    for rec in records:
        newest[rec.key] = rec
    return sorted(newest.values(), key=lambda r: r.key)


def merge_results(results: Sequence[Path], evidence_dir: Path) -> list[Path]:
    """Fold fresh test results into ``evidence_dir/<backend>.jsonl``; returns the files written."""
    fresh = read_evidence(results)
    written = []
    for backend in sorted({r.backend for r in fresh}):
        target = evidence_dir / f"{backend}.jsonl"
        old = read_evidence([target]) if target.is_file() else []
        merged = latest([*old, *(r for r in fresh if r.backend == backend)])
        evidence_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text("".join(r.to_json() + "\n" for r in merged), encoding="utf-8")
        tmp.replace(target)
        written.append(target)
    return written


def _fmt(x: float) -> str:
    return f"{x:.1e}"


def _figure(recs: list[Evidence]) -> str:
    """A check with a relative error: the largest, marked when any record failed."""
    if not recs:
        return NOT_TESTED
    values = [r.value for r in recs if r.value is not None]
    worst = _fmt(max(values)) if values else ""
    if not all(r.passed for r in recs):
        return f"FAILED {worst}".strip()
    return worst or "yes"


def _within(recs: list[Evidence]) -> str:
    if not recs:
        return NOT_TESTED
    values = [r.value for r in recs if r.value is not None]
    worst = f" ({_fmt(max(values))})" if values else ""
    return ("yes" if all(r.passed for r in recs) else "FAILED") + worst


def build_rows(registry: Registry, records: Iterable[Evidence]) -> tuple[list[Row], list[str]]:
    """Matrix rows (models.yaml order) and the backends seen, from the newest records."""
    recs = latest(records)
    backends = sorted({r.backend for r in recs})
    rows = []
    for family, arch in registry.architectures.items():
        mine = [r for r in recs if r.family == family]

        def of(check: str, mine: list[Evidence] = mine) -> list[Evidence]:
            return [r for r in mine if r.check == check]

        # a logits check implies its file was converted
        conv = of("converter") or [r for r in mine if r.check in LOGIT_CHECKS and r.passed]
        if not arch.converter:
            converter = "no"
        elif not conv:
            converter = "untested"  # models.yaml says so; no test has converted one
        else:
            converter = "yes" if all(r.passed for r in conv) else "FAILED"
        tok = of("tokenizer")
        tokenizer = NOT_TESTED if not tok else ("identical" if all(r.passed for r in tok)
                                               else "FAILED")  # fmt: skip
        served_parts = []
        for check in SERVED_CHECKS:
            got = of(check)
            if got:
                served_parts.append(check if all(r.passed for r in got) else f"{check} FAILED")
        per_backend = {}
        for backend in backends:
            there = [r for r in mine if r.backend == backend]
            if not there:
                per_backend[backend] = NOT_TESTED
                continue
            failed = sorted({r.check for r in there if not r.passed})
            cell = max(r.date for r in there)
            per_backend[backend] = cell + (f" (failed: {', '.join(failed)})" if failed else "")
        rows.append(Row(
            family=family, gguf_arch=arch.gguf_arch, converter=converter, tokenizer=tokenizer,
            f32=_figure(of("f32")), quants={c: _within(of(c)) for c in QUANT_CHECKS},
            served=" + ".join(served_parts) if served_parts else NOT_TESTED,
            backends=per_backend, pooling=arch.pooling or "",
            notes=" ".join((arch.notes or "").split()),
        ))  # fmt: skip
    return rows, backends


def render(rows: Sequence[Row], backends: Sequence[str]) -> str:
    """The Markdown page; its first line names the command that made it."""
    head = ["family", "GGUF arch", "converter", "tokenizer ids vs HF", "f32 max rel. error",
            *(f"{c} within tolerance" for c in QUANT_CHECKS), "served",
            *(f"{b} (last run)" for b in backends)]  # fmt: skip
    lines = [
        f"<!-- Generated by `{COMMAND}` from models.yaml and docs/support/*.jsonl; "
        "do not edit by hand. -->",
        "# Model support",
        "",
        "Every family in `models.yaml`, with what the test suite proved about it. Figures are",
        "the largest relative error (max |llama.cpp - transformers| / max |transformers|) of a",
        "tiny random checkpoint of the family, converted by `converters.st2gguf`, over every",
        'variant tested; "served" means the converted file generated with continuous batching',
        "in the engine (batched output equal to each sequence alone) and/or through",
        "`ggufworker serve` with the `openai` client. `—` means no test has recorded this check",
        "(a converter marked untested is claimed by models.yaml but no test converted one);",
        "FAILED means the last run of that check failed. A backend column gives the date of the",
        "last run there. Regenerate after a test run with:",
        "",
        f"    {COMMAND}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [f"`{r.family}`", f"`{r.gguf_arch}`", r.converter, r.tokenizer, r.f32,
                 *(r.quants[c] for c in QUANT_CHECKS), r.served,
                 *(r.backends[b] for b in backends)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    pooled = [r for r in rows if r.pooling]
    if pooled:
        lines += [
            "",
            "## Embedding and rerank families",
            "",
            "Their figures above compare pooled vectors (or rerank scores) with",
            "sentence-transformers / transformers. A converted file declares the pooling of the",
            "checkpoint's sentence-transformers modules, else this default (`rank`: a classifier's",
            "score of a query-document pair, served on `/v1/rerank`).",
            "",
            "| family | default pooling | notes |",
            "|---|---|---|",
        ]
        lines += [f"| `{r.family}` | {r.pooling} | {r.notes} |" for r in pooled]
    return "\n".join(lines) + "\n"


def generate(
    *,
    results: Sequence[Path] = (),
    evidence_dir: Path = DEFAULT_EVIDENCE,
    output: Path = DEFAULT_OUTPUT,
    registry: Registry | None = None,
) -> Path:
    """Merge ``results`` into ``evidence_dir``, then write the matrix to ``output``.

    Returns:
        The path written.
    """
    if results:
        merge_results(results, evidence_dir)
    files = sorted(evidence_dir.glob("*.jsonl")) if evidence_dir.is_dir() else []
    rows, backends = build_rows(registry or load_registry(), read_evidence(files))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(render(rows, backends), encoding="utf-8")
    tmp.replace(output)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ggufworker.support_matrix`` entry point."""
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--results",
        type=Path,
        nargs="*",
        default=None,
        help=f"fresh test results to merge (default: {DEFAULT_RESULTS}/*.jsonl)",
    )
    p.add_argument(
        "--evidence",
        type=Path,
        default=DEFAULT_EVIDENCE,
        help=f"committed evidence folder (default: {DEFAULT_EVIDENCE})",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"page to write (default: {DEFAULT_OUTPUT})")  # fmt: skip
    args = p.parse_args(argv)
    results = args.results
    if results is None:
        results = sorted(DEFAULT_RESULTS.glob("*.jsonl")) if DEFAULT_RESULTS.is_dir() else []
    try:
        out = generate(results=results, evidence_dir=args.evidence, output=args.output)
    except (OSError, ValueError, RegistryError) as exc:
        print(f"support_matrix: error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
