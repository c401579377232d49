"""models.yaml: the shipped registry's content, and errors located by line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ggufworker.errors import RegistryError
from ggufworker.paths import DEFAULT_MODEL
from ggufworker.registry import load_registry
from ggufworker.registry.schema import HfSource, PypiSource, packaged_registry_path

REPO = Path(__file__).resolve().parents[2]

# The support matrix of the converter (HF architecture -> supported) that the registry must state.
CONVERTER_ARCHS = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
]


def test_packaged_registry_is_the_repo_file() -> None:
    assert packaged_registry_path().read_bytes() == (REPO / "models.yaml").read_bytes()
    assert load_registry().path == packaged_registry_path()


def test_shipped_registry_content() -> None:
    reg = load_registry()
    assert reg.default_model == DEFAULT_MODEL
    for name in (DEFAULT_MODEL, "gemma3-270m"):
        model = reg.get(name)
        assert model is not None
        kinds = [type(s) for s in model.sources]
        assert HfSource in kinds and PypiSource in kinds
        assert model.sha256 and model.size
    for hf_arch in CONVERTER_ARCHS:
        found = reg.architecture_for_hf(hf_arch)
        assert found is not None, hf_arch
        assert found[1].converter, hf_arch
    phi2 = reg.architecture_for_hf("PhiForCausalLM")
    assert phi2 is not None and phi2[1].gguf_arch == "phi2"
    # a reference model with an hf source for every architecture family
    covered = {
        m.architecture for m in reg.models if any(isinstance(s, HfSource) for s in m.sources)
    }
    assert covered == set(reg.architectures)
    for wanted in (
        "tinyllama-1.1b-chat",
        "mistral-7b-instruct-v0.2",
        "phi-2",
        "phi-3-mini-4k-instruct",
        "qwen2.5-0.5b-instruct",
        "gemma-2b-it",
    ):
        assert reg.get(wanted) is not None, wanted


def test_registry_env_overrides_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["models"] = [m for m in data["models"] if m["name"] == DEFAULT_MODEL]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("GGUFWORKER_REGISTRY", str(path))

    reg = load_registry()

    assert reg.path == path
    assert reg.names() == [DEFAULT_MODEL]


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(needle)


def _broken(tmp_path: Path, edit: tuple[str, str]) -> tuple[Path, str]:
    text = (REPO / "models.yaml").read_text()
    old, new = edit
    assert old in text
    path = tmp_path / "models.yaml"
    path.write_text(text.replace(old, new, 1))
    return path, path.read_text()


@pytest.mark.parametrize(
    ("edit", "needle", "expect"),
    [
        # a field of the wrong type
        (("size: 98362432", "size: lots"), "size: lots", "models[0].size"),
        # a malformed checksum
        (
            (
                "sha256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                "sha256: abc",
            ),
            "sha256: abc",
            "models[0].sha256",
        ),
        # a source of an unknown type
        (("      - type: pypi\n", "      - type: ftp\n"), "type: ftp", "models[0].sources[1]"),
        # an unknown field (typo)
        (("    license: gemma\n", "    licence: gemma\n"), "licence: gemma", "models[1].licence"),
        # an architecture that is not declared
        (
            ("    architecture: gemma3\n", "    architecture: gemma9\n"),
            "architecture: gemma9",
            "models[1].architecture",
        ),
    ],
)
def test_schema_errors_name_file_and_line(
    tmp_path: Path, edit: tuple[str, str], needle: str, expect: str
) -> None:
    path, text = _broken(tmp_path, edit)

    with pytest.raises(RegistryError) as info:
        load_registry(path)

    message = str(info.value)
    assert f"{path}:{_line_of(text, needle)}:" in message, message
    assert expect in message


def test_missing_field_points_at_its_entry(tmp_path: Path) -> None:
    path, text = _broken(
        tmp_path, ("    license: apache-2.0\n    description: SmolLM2", "    description: SmolLM2")
    )

    with pytest.raises(RegistryError) as info:
        load_registry(path)

    message = str(info.value)
    assert "models[0].license: Field required" in message
    # the entry starts on the line of its first key
    assert f"{path}:{_line_of(text, '- name: smollm2-135m-instruct')}:" in message


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path, text = _broken(tmp_path, ("    quantization: Q4_1\n", "    quantization: [Q4_1\n"))

    with pytest.raises(RegistryError, match="invalid YAML") as info:
        load_registry(path)

    line = int(str(info.value).split(f"{path}:")[1].split(":")[0])
    # the parser notices the unclosed bracket on the line or just after it
    assert (
        _line_of(text, "quantization: [Q4_1") <= line <= _line_of(text, "quantization: [Q4_1") + 2
    )


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read registry"):
        load_registry(tmp_path / "nope.yaml")


def test_pinned_checksum_required_off_the_hub(tmp_path: Path) -> None:
    path, text = _broken(
        tmp_path,
        ("    sha256: a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818\n", ""),
    )

    with pytest.raises(RegistryError, match="sha256 is required for pypi") as info:
        load_registry(path)

    assert f"{path}:{_line_of(text, '- name: gemma3-270m')}:" in str(info.value)
