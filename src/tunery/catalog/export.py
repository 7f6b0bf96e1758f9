"""Write a fine-tuned model out in formats other tools load: a PEFT folder, a merged HF folder, GGUF files.

Every writer streams: weights are read one tensor at a time from memory-mapped safetensors files and written
as they are made, so peak memory is one tensor plus what the OS caches, whatever the model size. Torch-free
(numpy, ``gguf``), so the web process can run it. It does not know where models are stored or who may
read them (``services.exports`` does); it only turns folders into folders, and a folder into an archive.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Literal

from tunery.catalog.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, PeftAdapter
from tunery.catalog.safetensors_stream import SafetensorsReader, SafetensorsWriter, to_stored, weight_files

ExportFormat = Literal["peft", "merged", "gguf"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("peft", "merged", "gguf")
# Files of a prepared model folder that a merged export must not copy (weights are rewritten; the rest is ours).
_SKIP = ("tunery-prepared.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
CHUNK_BYTES = 1024 * 1024


def export_peft(adapter_dir: Path, out_dir: Path, *, base_id: str, model_name: str) -> None:
    """The adapter as a standard PEFT folder whose ``adapter_config.json`` names the base by ``base_id``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    config.pop("revision", None)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(adapter_dir / WEIGHTS_FILE, out_dir / WEIGHTS_FILE)
    (out_dir / "README.md").write_text(
        f"---\nbase_model: {base_id}\nlibrary_name: peft\ntags:\n- lora\n- tunery\n---\n\n"
        f"# {model_name}\n\nA LoRA adapter for `{base_id}`, exported by Tunery.\n\n"
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base_id}")\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n```\n',
        encoding="utf-8",
    )


def export_merged(adapter_dir: Path, base_dir: Path, out_dir: Path, *, base_id: str) -> None:
    """Base + adapter merged into a Hugging Face folder (``model.safetensors``, config, tokenizer, template).

    Each adapted weight becomes ``W + scale * B @ A`` in the base weight's own dtype; the others are copied.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(base_dir.iterdir()):
        if item.is_file() and item.suffix not in (".safetensors", ".bin", ".gguf") and item.name not in _SKIP:
            shutil.copyfile(item, out_dir / item.name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["_name_or_path"] = base_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with PeftAdapter(adapter_dir) as adapter:
        by_weight = {pair.base_weight: pair for pair in adapter.pairs.values()}
        readers = [SafetensorsReader(path) for path in weight_files(base_dir)]
        try:
            layout = [(info.name, info.dtype, info.shape) for r in readers for info in r.tensors.values()]
            missing = sorted(set(by_weight) - {name for name, _, _ in layout})
            if missing:
                raise ValueError(f"the base model has no weights {missing} for the adapter to merge into")
            with SafetensorsWriter(out_dir / "model.safetensors", layout, {"format": "pt"}) as writer:
                for reader in readers:
                    for info in reader.tensors.values():
                        pair = by_weight.get(info.name)
                        if pair is None:
                            writer.write(info.name, reader.raw(info.name))
                        else:
                            merged = reader.array(info.name) + adapter.delta(pair)
                            writer.write(info.name, to_stored(merged, info.dtype))
        finally:
            for reader in readers:
                reader.close()


def export_gguf(adapter_dir: Path, base_dir: Path, out_dir: Path, *, base_id: str, model_name: str) -> None:
    """``<model>.gguf`` (merged, F16) and ``<model>-lora.gguf`` (the adapter alone) for llama.cpp / Ollama.

    Raises:
        UnsupportedForGguf: the base model is not a llama-family model with a BPE tokenizer.
    """
    from tunery.catalog.gguf_export import model_config, write_adapter_gguf, write_merged_gguf

    model_config(base_dir)  # refuse early, before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    with PeftAdapter(adapter_dir) as adapter:
        write_merged_gguf(adapter, base_dir, out_dir / f"{model_name}.gguf", name=model_name, base_id=base_id)
        write_adapter_gguf(adapter, base_dir, out_dir / f"{model_name}-lora.gguf", name=model_name, base_id=base_id)


def export_model(
    fmt: ExportFormat, adapter_dir: Path, base_dir: Path, out_dir: Path, *, base_id: str, model_name: str
) -> None:
    """Write the model in ``fmt`` into ``out_dir`` (see the three writers)."""
    if fmt == "peft":
        export_peft(adapter_dir, out_dir, base_id=base_id, model_name=model_name)
    elif fmt == "merged":
        export_merged(adapter_dir, base_dir, out_dir, base_id=base_id)
    else:
        export_gguf(adapter_dir, base_dir, out_dir, base_id=base_id, model_name=model_name)


def write_archive(folder: Path, target: Path) -> tuple[int, str]:
    """Pack ``folder``'s files into an uncompressed tar at ``target`` (under a top folder named after
    ``target``'s stem); return its size and sha256. Weights barely compress, so gzip would only cost time."""
    root = target.name.removesuffix(".tar")
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                info = archive.gettarinfo(str(item), arcname=f"{root}/{item.relative_to(folder).as_posix()}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with item.open("rb") as handle:
                    archive.addfile(info, handle)
    return target.stat().st_size, sha256_of(target)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
