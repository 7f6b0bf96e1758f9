"""Preparing base models into the cache: the bundled GGUF, local folders, and never a half-written folder.

Run: .venv/bin/pytest tests/unit/catalog/test_materialize.py -q            (tokenizer-only prepare, ~6 s)
     .venv/bin/pytest tests/unit/catalog/test_materialize.py -q -m slow    (full SmolLM2 conversion, ~30 s)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.catalog import BUNDLED_MODELS, BaseModelSpec, Catalog, ChatTokenizer, materialize
from tunery.catalog.__main__ import main
from tunery.catalog.materialize import load_for_training, prepare
from tunery.catalog.models import PREPARED_MARKER
from tunery.domain.errors import Unavailable
from tunery.testing.tiny_model import SMOLLM2_CHAT_TEMPLATE

SMOLLM2 = BUNDLED_MODELS[0]


def test_tokenizer_only_prepare_writes_a_ready_tokenizer_and_no_weights(smollm2_tokenizer_dir: Path) -> None:
    names = {p.name for p in smollm2_tokenizer_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", PREPARED_MARKER} <= names
    assert not any(name.endswith(".safetensors") for name in names)
    marker = json.loads((smollm2_tokenizer_dir / PREPARED_MARKER).read_text())
    assert marker["parts"] == ["tokenizer"]
    assert marker["source"] == "bundled:smollm2"

    catalog = Catalog([SMOLLM2], smollm2_tokenizer_dir.parent)
    assert catalog.is_prepared(SMOLLM2.name, "tokenizer")
    assert not catalog.is_prepared(SMOLLM2.name, "weights")
    tokenizer = catalog.chat_tokenizer(SMOLLM2.name)
    assert (tokenizer.context_length, tokenizer.vocab_size, tokenizer.eos_token_id) == (8192, 49152, 2)


def test_prepared_tokenizer_records_the_real_context_length(smollm2_tokenizer_dir: Path) -> None:
    # The GGUF tokenizer says model_max_length=1e30; the prepared folder carries 8192 on its own.
    assert ChatTokenizer.from_dir(smollm2_tokenizer_dir).context_length == 8192


def test_tiny_model_uses_smollm2s_exact_chat_template(smollm2_tokenizer_dir: Path) -> None:
    assert (smollm2_tokenizer_dir / "chat_template.jinja").read_text() == SMOLLM2_CHAT_TEMPLATE


def test_preparing_again_is_a_no_op(smollm2_tokenizer_dir: Path) -> None:
    marker = smollm2_tokenizer_dir / PREPARED_MARKER
    before = marker.stat().st_mtime_ns
    assert prepare(SMOLLM2, smollm2_tokenizer_dir.parent, "tokenizer") == smollm2_tokenizer_dir
    assert marker.stat().st_mtime_ns == before


def test_local_folders_are_used_in_place(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = BaseModelSpec(name="tiny", source=str(tiny_model_dir))
    assert prepare(spec, tmp_path, "all") == tiny_model_dir
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(Unavailable, match="does not exist"):
        prepare(BaseModelSpec(name="gone", source=str(tmp_path / "gone")), tmp_path)


def test_a_crash_while_writing_leaves_nothing_that_looks_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash_half_way(spec: BaseModelSpec, folder: Path, **_: object) -> None:
        (folder / "model.safetensors").write_bytes(b"first half")
        raise RuntimeError("killed")

    monkeypatch.setattr(materialize, "_write_model", crash_half_way)
    with pytest.raises(RuntimeError, match="killed"):
        prepare(SMOLLM2, tmp_path, "all")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{SMOLLM2.name}.lock"]
    assert not Catalog([SMOLLM2], tmp_path).is_prepared(SMOLLM2.name, "tokenizer")


def test_preparing_the_weights_later_replaces_the_tokenizer_only_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_files(spec: BaseModelSpec, folder: Path, *, with_weights: bool, tokenizer_from: Path | None) -> None:
        (folder / "tokenizer.json").write_text("{}" if tokenizer_from is None else "reused")
        if with_weights:
            (folder / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(materialize, "_write_model", write_files)
    folder = prepare(SMOLLM2, tmp_path, "tokenizer")
    catalog = Catalog([SMOLLM2], tmp_path)
    assert catalog.is_prepared(SMOLLM2.name, "tokenizer")
    assert not (folder / "model.safetensors").exists()

    assert prepare(SMOLLM2, tmp_path, "all") == folder
    assert catalog.weights_dir(SMOLLM2.name) == folder
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert (folder / "tokenizer.json").read_text() == "reused"  # not parsed out of the GGUF a second time
    assert (folder.stat().st_mode & 0o777, (folder / "tokenizer.json").stat().st_mode & 0o777) == (0o755, 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{SMOLLM2.name}.lock", SMOLLM2.name]
    # Asking for less than what is there does nothing.
    assert prepare(SMOLLM2, tmp_path, "tokenizer") == folder
    assert (folder / "model.safetensors").exists()


def test_module_entry_prints_the_prepared_folder(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepare", f"tiny={tiny_model_dir}", "--cache-dir", str(tmp_path), "--all"]) == 0
    assert capsys.readouterr().out == f"{tiny_model_dir}\n"


def test_module_entry_reports_a_missing_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", f"gone={tmp_path / 'gone'}", "--cache-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: Model 'gone': the folder {tmp_path / 'gone'} does not exist.\n"


def test_module_entry_rejects_an_unclear_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["prepare", "Org/unclear", "--cache-dir", str(tmp_path)])
    assert caught.value.code == 2
    assert "name=hub:org/model" in capsys.readouterr().err


@pytest.mark.slow
def test_full_smollm2_prepare_reloads_and_answers_paris(tmp_path: Path) -> None:
    import torch

    folder = prepare(SMOLLM2, tmp_path, "all")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["vocab_size"], config["tie_word_embeddings"]) == (30, 49152, True)

    model, hf_tokenizer = load_for_training(SMOLLM2, tmp_path, torch.float32)
    chat = ChatTokenizer.from_dir(folder)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = chat.encode(chat.render(question, add_generation_prompt=True))
    assert prompt == hf_tokenizer.apply_chat_template(question, add_generation_prompt=True, return_dict=False)
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=list(chat.stop_token_ids),
            pad_token_id=chat.eos_token_id,
        )
    answer = chat.decode(output[0, len(prompt) :].tolist(), skip_special_tokens=True)
    assert "Paris" in answer
