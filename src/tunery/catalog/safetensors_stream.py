"""Read and write safetensors files one tensor at a time, without torch; it does not know model layouts.

Hand-written on purpose (the format is an 8-byte length, a JSON header and raw bytes): ``safetensors.numpy``
cannot read bfloat16 (numpy has no such type) and its writer wants every tensor in memory at once. Here a
reader memory-maps the file and hands out one tensor as a float32 (or raw) array, and a writer takes the
header up front and then the tensors in order, so export and import hold one tensor at a time whatever the
model size. Tensors are read with ``pread`` rather than memory-mapped: a mapped file's pages count in the
process's resident memory until it is closed, read buffers are freed tensor by tensor. Web-process safe:
numpy only.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAX_HEADER_BYTES = 100 * 1024 * 1024  # as the safetensors reference reader
_NUMPY = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; ``array`` widens to float32
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class SafetensorsError(ValueError):
    """The file is not a valid safetensors file; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors spelling: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # offset in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsReader:
    """One safetensors file, open; ``array`` reads a single tensor.

    Raises:
        SafetensorsError: on open, when the header or the offsets are not valid.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("rb")
        try:
            self.metadata, self.tensors, self._data_start = _read_header(self._handle, path.stat().st_size)
        except BaseException:
            self._handle.close()
            raise

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def names(self) -> list[str]:
        return list(self.tensors)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored values (bfloat16 as uint16 bits), read from disk into a new array."""
        info = self.tensors[name]
        buffer = bytearray(info.nbytes)
        view, done, fd = memoryview(buffer), 0, self._handle.fileno()
        while done < info.nbytes:
            count = os.preadv(fd, [view[done:]], self._data_start + info.start + done)
            if count <= 0:
                raise SafetensorsError(f"tensor '{name}' ends past the end of the file")
            done += count
        return np.frombuffer(buffer, dtype=_NUMPY[info.dtype]).reshape(info.shape)

    def array(self, name: str) -> np.ndarray:
        """The tensor as float32 (floating types) or its own integer type."""
        info = self.tensors[name]
        raw = self.raw(name)
        if info.dtype == "BF16":
            return bf16_to_f32(raw)
        if info.dtype in ("F16", "F64"):
            return raw.astype(np.float32)
        return raw


def _read_header(handle: BinaryIO, size: int) -> tuple[dict[str, str], dict[str, TensorInfo], int]:
    prefix = handle.read(8)
    if len(prefix) != 8:
        raise SafetensorsError("the file is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise SafetensorsError(f"its header claims {length} bytes, which the file ({size} bytes) cannot hold")
    try:
        header = json.loads(handle.read(length))
    except ValueError as exc:
        raise SafetensorsError(f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"tensor '{name}' has no valid dtype/shape/data_offsets") from None
        if dtype not in _NUMPY:
            raise SafetensorsError(f"tensor '{name}' has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * _NUMPY[dtype].itemsize
        if not (0 <= start <= end <= data_size) or end - start != expected:
            raise SafetensorsError(
                f"tensor '{name}' ({dtype} {list(shape)}) points at bytes {start}-{end}, outside the file's "
                f"{data_size} data bytes or of the wrong size (the file is truncated or corrupt)"
            )
        tensors[name] = TensorInfo(name, dtype, shape, int(start), int(end))
    return {str(k): str(v) for k, v in metadata.items()}, tensors, 8 + length


def read_infos(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of a file's tensors, reading only its header. Raises SafetensorsError."""
    with path.open("rb") as handle:
        return _read_header(handle, path.stat().st_size)[1]


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch does, and return the uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def to_stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Convert float32 values to the bytes layout of safetensors ``dtype``."""
    if dtype == "BF16":
        return f32_to_bf16(values)
    return np.ascontiguousarray(values, dtype=_NUMPY[dtype])


class SafetensorsWriter:
    """Write a safetensors file whose tensor list is known up front, then its tensors one by one in order."""

    def __init__(self, path: Path, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> None:
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in layout:
            nbytes = int(np.prod(shape, dtype=np.int64)) * _NUMPY[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, nbytes))
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
        self._handle = path.open("wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0

    def write(self, name: str, stored: np.ndarray) -> None:
        """Write the next tensor (already in its stored layout, see ``to_stored``)."""
        expected, nbytes = self._order[self._next]
        if name != expected or stored.nbytes != nbytes:
            raise ValueError(f"expected tensor {expected} ({nbytes} bytes), got {name} ({stored.nbytes} bytes)")
        self._handle.write(memoryview(np.ascontiguousarray(stored)).cast("B"))
        self._next += 1

    def close(self) -> None:
        complete = self._next == len(self._order)
        self._handle.close()
        if not complete:
            raise ValueError(f"only {self._next} of {len(self._order)} tensors were written")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self._handle.close()


def weight_files(folder: Path) -> list[Path]:
    """A Hugging Face model folder's safetensors files (one, or the shards), in name order."""
    return sorted(folder.glob("*.safetensors"))


def iter_model_tensors(folder: Path) -> Iterator[tuple[SafetensorsReader, TensorInfo]]:
    """Every tensor of a model folder with the reader that holds it (readers close when the loop ends)."""
    for path in weight_files(folder):
        with SafetensorsReader(path) as reader:
            for info in reader.tensors.values():
                yield reader, info
