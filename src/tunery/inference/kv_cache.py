"""The key/value cache of a batch whose rows start and finish at different times (left-padded, preallocated).

Every row's tokens are right-aligned in one ``[rows, kv_heads, capacity, head_dim]`` buffer per layer, so the
token decoded next sits in the same column for every row and one forward pass serves the whole batch; a row
that holds fewer tokens than the longest one has zeroed padding columns on its left, which the attention mask
hides. Writing a step is a slice copy into spare capacity (``transformers``' ``DynamicCache`` concatenates, i.e.
copies the whole cache, every step). Rows are removed and new, separately prefilled rows merged in by
``rebuilt``, which also drops the padding columns that no remaining row needs.

It plugs into a ``transformers`` model through the ``Cache`` interface (``update`` per layer); it does not
decide which rows run (``batching``) and knows nothing about adapters or tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Columns allocated beyond what the batch needs now; the buffers double (at least) when they run out.
_HEADROOM = 64


class _PaddedLayer(DynamicLayer):
    """One decoder layer's keys and values in a preallocated buffer; ``length`` columns are in use."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.key_buffer = _zeros_like_rows(key_states, self.capacity)
        self.value_buffer = _zeros_like_rows(value_states, self.capacity)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.key_buffer is not None
        assert self.value_buffer is not None
        new = key_states.shape[-2]
        if self.length + new > self.capacity:
            self.resize(max(self.length + new + _HEADROOM, 2 * self.capacity))
            assert self.key_buffer is not None
            assert self.value_buffer is not None
        end = self.length + new
        self.key_buffer[:, :, self.length : end].copy_(key_states)
        self.value_buffer[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def resize(self, capacity: int) -> None:
        """Move the used columns into buffers of ``capacity`` columns."""
        assert self.key_buffer is not None
        assert self.value_buffer is not None
        keys = self.key_buffer.new_empty((*self.key_buffer.shape[:2], capacity, self.key_buffer.shape[-1]))
        values = self.value_buffer.new_empty((*self.value_buffer.shape[:2], capacity, self.value_buffer.shape[-1]))
        keys[:, :, : self.length].copy_(self.key_buffer[:, :, : self.length])
        values[:, :, : self.length].copy_(self.value_buffer[:, :, : self.length])
        self.key_buffer, self.value_buffer, self.capacity = keys, values, capacity

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1


class PaddedKVCache(Cache):
    """The keys and values of every row of a batch, with ``pads[i]`` padding columns on the left of row ``i``.

    Args:
        num_layers: decoder layers of the model.
        pads: padding columns per row (the forward pass that fills the cache writes them too; the mask hides
            them).
        capacity: columns to allocate at first; the buffers grow when a forward pass needs more.
    """

    def __init__(self, num_layers: int, pads: Sequence[int], capacity: int) -> None:
        super().__init__(layers=[_PaddedLayer(capacity) for _ in range(num_layers)])
        self.pads = list(pads)

    @property
    def padded_layers(self) -> list[_PaddedLayer]:
        return self.layers  # type: ignore[return-value]

    @property
    def length(self) -> int:
        """Columns in use (the same in every layer between forward passes)."""
        return self.padded_layers[0].length

    @property
    def batch_size(self) -> int:
        return len(self.pads)

    def decode_mask(self, device: torch.device) -> torch.Tensor:
        """Boolean ``[rows, 1, 1, length + 1]`` mask for one new token per row: its own column and its real ones."""
        columns = torch.arange(self.length + 1, device=device)
        pads = torch.tensor(self.pads, device=device)
        return (columns[None, :] >= pads[:, None])[:, None, None, :]

    def rebuilt(self, keep: Sequence[int], joining: PaddedKVCache | None = None, reserve: int = 0) -> PaddedKVCache:
        """A new cache with rows ``keep`` of this one, then every row of ``joining``, right-aligned together.

        Padding columns that no row needs any more are dropped; ``reserve`` more columns are allocated for the
        coming steps. This one is left as it was (its buffers are freed once nothing refers to them).
        """
        kept_pads = [self.pads[i] for i in keep]
        trim = min(kept_pads, default=self.length)
        kept_length = self.length - trim
        joining_length = joining.length if joining is not None else 0
        length = max(kept_length, joining_length)
        pads = [pad - trim + length - kept_length for pad in kept_pads]
        if joining is not None:
            pads += [pad + length - joining_length for pad in joining.pads]
        capacity = length + max(reserve, 1)
        result = PaddedKVCache(len(self.layers), pads, capacity)
        for layer_index, target in enumerate(result.padded_layers):
            sources = [(self.padded_layers[layer_index], list(keep), trim, kept_length)]
            if joining is not None:
                source = joining.padded_layers[layer_index]
                sources.append((source, list(range(joining.batch_size)), 0, joining_length))
            _fill_layer(target, sources, len(pads), length, capacity)
        return result


def _fill_layer(
    target: _PaddedLayer,
    sources: list[tuple[_PaddedLayer, list[int], int, int]],
    rows: int,
    length: int,
    capacity: int,
) -> None:
    """Copy ``(layer, row indices, first column, columns)`` sources one after the other, right-aligned at ``length``."""
    template = next((s[0] for s in sources if s[0].key_buffer is not None and s[1]), None)
    target.length = length
    if template is None or rows == 0:
        return
    assert template.key_buffer is not None
    assert template.value_buffer is not None
    for name, buffer in (("key_buffer", template.key_buffer), ("value_buffer", template.value_buffer)):
        out = buffer.new_empty((rows, buffer.shape[1], capacity, buffer.shape[-1]))
        row = 0
        for source, index, start, count in sources:
            # Columns left of a row's tokens must hold zeros, not garbage: attention multiplies masked values
            # by a zero weight, and 0 * NaN would poison the row. Source padding comes along (finite values).
            out[row : row + len(index), :, : length - count].zero_()
            data = getattr(source, name)
            for first, last in _runs(index):  # consecutive rows are copied as one slice, without a gather
                size = last - first
                out[row : row + size, :, length - count : length].copy_(data[first:last, :, start : start + count])
                row += size
        setattr(target, name, out)
    target.device = template.device
    target.capacity = capacity
    target.is_initialized = True
    assert target.key_buffer is not None
    assert target.value_buffer is not None
    target.keys = target.key_buffer[:, :, :length]
    target.values = target.value_buffer[:, :, :length]


def _runs(index: list[int]) -> list[tuple[int, int]]:
    """``[0, 1, 2, 5, 6]`` -> ``[(0, 3), (5, 7)]``: half-open ranges of consecutive indices."""
    runs: list[tuple[int, int]] = []
    for i in index:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _zeros_like_rows(states: torch.Tensor, capacity: int) -> torch.Tensor:
    return states.new_zeros((states.shape[0], states.shape[1], capacity, states.shape[-1]))
