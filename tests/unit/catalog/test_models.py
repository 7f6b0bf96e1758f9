"""The catalog: parsing model references, lookups, and when a model's files count as ready.

Run: .venv/bin/pytest tests/unit/catalog/test_models.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunery.catalog import BUNDLED_MODELS, BaseModelSpec, Catalog, ChatTokenizer, SourceKind, parse_model_ref
from tunery.catalog.models import PREPARED_MARKER, write_prepared_marker
from tunery.domain.errors import NotFound, Unavailable

SMOLLM2 = BUNDLED_MODELS[0]


@pytest.mark.parametrize(
    ("ref", "name", "source", "kind"),
    [
        ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "bundled:smollm2", SourceKind.BUNDLED),
        ("/models/my-llama", "my-llama", "/models/my-llama", SourceKind.LOCAL),
        ("mine=/models/my-llama", "mine", "/models/my-llama", SourceKind.LOCAL),
        ("qwen=hub:Qwen/Qwen2.5-0.5B-Instruct", "qwen", "Qwen/Qwen2.5-0.5B-Instruct", SourceKind.HUB),
        ("hub:Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", SourceKind.HUB),
        ("smol=SmolLM2-135M-Instruct", "smol", "bundled:smollm2", SourceKind.BUNDLED),
        (" small = bundled:smollm2 ", "small", "bundled:smollm2", SourceKind.BUNDLED),
    ],
)
def test_parse_model_ref(ref: str, name: str, source: str, kind: SourceKind) -> None:
    spec = parse_model_ref(ref)
    assert (spec.name, spec.source, spec.kind) == (name, source, kind)


def test_parse_model_ref_keeps_the_bundled_context_length() -> None:
    assert parse_model_ref("SmolLM2-135M-Instruct") == SMOLLM2
    assert parse_model_ref("smol=SmolLM2-135M-Instruct").context_length == 8192


def test_parse_model_ref_resolves_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse_model_ref("./models/tiny")
    assert spec.source == str(tmp_path.resolve() / "models" / "tiny")
    assert spec.name == "tiny"


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "name=hub:org/model"),  # a hub id must say so: it may download
        ("NoSuchModel", "Cannot read model"),
        ("", "Cannot read model"),
        ("bad name=/models/x", "is not allowed"),
        ("x=bundled:nope", "Cannot read model"),
        ("x=hub:not-an-id", "neither an absolute folder path nor a hub id"),
    ],
)
def test_parse_model_ref_rejects_unclear_references(ref: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_model_ref(ref)


@pytest.mark.parametrize(
    ("name", "source", "error"),
    [
        ("../escape", "/models/x", "is not allowed"),
        ("a/b", "/models/x", "is not allowed"),
        ("ok", "relative/path/to", "neither an absolute folder path nor a hub id"),
        ("ok", "bundled:other", "Unknown bundled model"),
    ],
)
def test_spec_rejects_unsafe_names_and_unknown_sources(name: str, source: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        BaseModelSpec(name=name, source=source)


def test_get_unknown_model_is_not_found(tmp_path: Path) -> None:
    catalog = Catalog(list(BUNDLED_MODELS), tmp_path)
    with pytest.raises(NotFound) as caught:
        catalog.get("gpt-4o")
    assert caught.value.param == "model"
    assert caught.value.message.startswith("Model 'gpt-4o' ")
    assert "SmolLM2-135M-Instruct" in caught.value.message


def test_list_default_and_get(tmp_path: Path, tiny_model_dir: Path) -> None:
    tiny = BaseModelSpec(name="tiny", source=str(tiny_model_dir))
    catalog = Catalog([SMOLLM2, tiny], tmp_path)
    assert catalog.list() == [SMOLLM2, tiny]
    assert catalog.default == SMOLLM2
    assert catalog.get("tiny") is tiny


def test_catalog_rejects_empty_and_duplicate_model_lists(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Catalog([], tmp_path)
    with pytest.raises(ValueError, match="SmolLM2-135M-Instruct"):
        Catalog([SMOLLM2, SMOLLM2], tmp_path)


def test_unprepared_bundled_model_is_unavailable_with_the_command_to_run(tmp_path: Path) -> None:
    catalog = Catalog([SMOLLM2], tmp_path / "cache")
    assert not catalog.is_prepared(SMOLLM2.name, "tokenizer")
    with pytest.raises(Unavailable, match=r"python -m tunery\.catalog prepare SmolLM2-135M-Instruct --cache-dir"):
        catalog.tokenizer_dir(SMOLLM2.name)
    with pytest.raises(Unavailable, match=r"--all"):
        catalog.weights_dir(SMOLLM2.name)
    with pytest.raises(Unavailable):
        catalog.chat_tokenizer(SMOLLM2.name)


def test_prepared_parts_come_from_the_marker(tmp_path: Path) -> None:
    catalog = Catalog([SMOLLM2], tmp_path)
    folder = tmp_path / SMOLLM2.name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half written")  # files without the marker do not count
    assert not catalog.is_prepared(SMOLLM2.name, "weights")

    write_prepared_marker(folder, SMOLLM2, ["tokenizer"])
    assert catalog.is_prepared(SMOLLM2.name, "tokenizer")
    assert not catalog.is_prepared(SMOLLM2.name, "weights")
    assert catalog.tokenizer_dir(SMOLLM2.name) == folder
    with pytest.raises(Unavailable, match="weights missing"):
        catalog.weights_dir(SMOLLM2.name)

    write_prepared_marker(folder, SMOLLM2, ["tokenizer", "weights"])
    assert catalog.weights_dir(SMOLLM2.name) == folder


def test_a_corrupt_marker_means_not_prepared(tmp_path: Path) -> None:
    folder = tmp_path / SMOLLM2.name
    folder.mkdir()
    (folder / PREPARED_MARKER).write_text("{not json")
    assert not Catalog([SMOLLM2], tmp_path).is_prepared(SMOLLM2.name)


def test_local_folders_are_ready_as_they_are(tmp_path: Path, tiny_model_dir: Path) -> None:
    tiny = BaseModelSpec(name="tiny", source=str(tiny_model_dir))
    catalog = Catalog([tiny], tmp_path)
    assert catalog.is_prepared("tiny", "tokenizer")
    assert catalog.is_prepared("tiny", "weights")
    assert catalog.tokenizer_dir("tiny") == tiny_model_dir
    assert catalog.weights_dir("tiny") == tiny_model_dir


def test_a_missing_local_folder_is_unavailable(tmp_path: Path) -> None:
    gone = BaseModelSpec(name="gone", source=str(tmp_path / "nowhere"))
    catalog = Catalog([gone], tmp_path)
    assert not catalog.is_prepared("gone")
    with pytest.raises(Unavailable, match=r"no tokenizer\.json"):
        catalog.tokenizer_dir("gone")
    with pytest.raises(Unavailable, match=r"no config\.json"):
        catalog.weights_dir("gone")


def test_chat_tokenizer_is_loaded_once_per_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    catalog = Catalog([BaseModelSpec(name="tiny", source=str(tiny_model_dir), context_length=256)], tmp_path)
    tokenizer = catalog.chat_tokenizer("tiny")
    assert isinstance(tokenizer, ChatTokenizer)
    assert catalog.chat_tokenizer("tiny") is tokenizer
    assert (tokenizer.name, tokenizer.context_length) == ("tiny", 256)  # the spec's context length wins
