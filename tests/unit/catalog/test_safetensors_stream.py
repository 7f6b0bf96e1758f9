"""The torch-free safetensors reader and writer agree with safetensors/torch, bfloat16 included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tunery.catalog.safetensors_stream import (
    SafetensorsError,
    SafetensorsReader,
    SafetensorsWriter,
    f32_to_bf16,
    to_stored,
)


def test_bf16_rounding_matches_torch() -> None:
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 100
    values[:4] = torch.tensor([0.0, -0.0, 1e-40, 3.4e38])
    ours = f32_to_bf16(values.numpy())
    theirs = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)


def test_reads_what_torch_wrote_and_writes_what_torch_reads(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 5, dtype=torch.bfloat16),
        "b": torch.randn(7, dtype=torch.float32),
        "c": torch.randn(2, 2, dtype=torch.float16),
    }
    save_file(tensors, tmp_path / "in.safetensors")
    with SafetensorsReader(tmp_path / "in.safetensors") as reader:
        for name, tensor in tensors.items():
            assert np.array_equal(reader.array(name), tensor.float().numpy())
        layout = [(i.name, i.dtype, i.shape) for i in reader.tensors.values()]
        with SafetensorsWriter(tmp_path / "out.safetensors", layout, {"format": "pt"}) as writer:
            for info in reader.tensors.values():
                writer.write(info.name, to_stored(reader.array(info.name) * 2, info.dtype))
    back = load_file(tmp_path / "out.safetensors")
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], (tensor.float() * 2).to(tensor.dtype))


def test_a_truncated_file_is_named_corrupt(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(64, 64)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match="truncated or corrupt"):
        SafetensorsReader(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(SafetensorsError, match="header claims"):
        SafetensorsReader(tmp_path / "junk.safetensors")
