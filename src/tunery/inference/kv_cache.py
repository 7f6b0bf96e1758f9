"""Key/value caches for batches whose rows start and finish at different times: ``SlotKVCache`` (serving) and
``PaddedKVCache`` (left-padded; used by the training rollouts).

``SlotKVCache`` gives each request a fixed slot (a row of one preallocated ``[layers, slots, kv_heads, columns,
head_dim]`` buffer for keys and one for values) where its token ``p`` lives in column ``p``: a row joins by
taking a free slot and leaves by freeing it, and a forward pass writes each row's new tokens in place at its
own columns (one ``index_put_`` per layer), so nothing is concatenated or rebuilt per step. The scheduler keeps
the decoding rows in slots ``0..d-1`` so the decode step reads the cache through a view, without a gather; a
row that has to change slot (to close a gap) is the only data copied. The buffers grow by doubling when a row
needs more columns (rare, amortised). Column ``capacity`` (one past the last) is a scratch column where
padding queries of a chunked prefill write. The forward pass's attention mask is the caller's job: a row's
columns past its own length hold stale (finite) values of an earlier occupant.

``PaddedKVCache`` (below) right-aligns rows with padding on the left:

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
from dataclasses import dataclass

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


# ------------------------------------------------------------------------------------------------ SlotKVCache
@dataclass(slots=True)
class _Binding:
    """Where the next forward pass writes (``rows`` x ``columns`` index tensors) and what it reads back."""

    write_rows: torch.Tensor  # [batch, 1] slot per batch row
    write_columns: torch.Tensor  # [batch, tokens] column per new token (``capacity``: the scratch column)
    read_rows: slice | torch.Tensor  # the slots of the batch, in order (a slice when contiguous: a view)
    read_length: int  # columns [0, read_length) are returned to attention


class _SlotLayer(DynamicLayer):
    """One decoder layer: a view of the shared buffers; ``update`` writes through the cache's binding."""

    def __init__(self, owner: SlotKVCache, index: int) -> None:
        super().__init__()
        self._owner = owner
        self._index = index

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = self._owner
        if owner.keys_buffer is None:
            owner.allocate(key_states)
        binding = owner.binding
        assert binding is not None, "bind the cache before a forward pass"
        assert owner.keys_buffer is not None
        assert owner.values_buffer is not None
        keys, values = owner.keys_buffer[self._index], owner.values_buffer[self._index]
        rows, columns = binding.write_rows, binding.write_columns
        keys[rows, :, columns] = key_states.transpose(1, 2)  # [batch, tokens, heads, dim] at (row, column)
        values[rows, :, columns] = value_states.transpose(1, 2)
        read, length = binding.read_rows, binding.read_length
        self.keys, self.values = keys[read, :, :length], values[read, :, :length]
        self.is_initialized = True
        return self.keys, self.values

    def get_seq_length(self) -> int:
        binding = self._owner.binding
        return binding.read_length if binding is not None else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        binding = self._owner.binding
        return (binding.read_length if binding is not None else query_length), 0

    def get_max_length(self) -> int:
        return -1


class SlotKVCache(Cache):
    """Keys and values of up to ``slots`` requests, each in its own slot, token ``p`` in column ``p``.

    Before each forward pass call ``bind`` (which rows are in the batch, where their new tokens go, how many
    columns attention reads); ``ensure_columns`` first when a row will pass the current capacity.

    Args:
        num_layers: decoder layers of the model.
        slots: the most rows at once.
        capacity: columns to allocate at first (the buffers grow when a row needs more).
    """

    def __init__(self, num_layers: int, slots: int, capacity: int = 256) -> None:
        super().__init__(layers=[_SlotLayer(self, i) for i in range(num_layers)])
        self.num_layers = num_layers
        self.slots = slots
        self.capacity = capacity
        self.keys_buffer: torch.Tensor | None = None  # [layers, slots, kv_heads, capacity + 1, head_dim]
        self.values_buffer: torch.Tensor | None = None
        self.binding: _Binding | None = None

    @property
    def nbytes(self) -> int:
        if self.keys_buffer is None or self.values_buffer is None:
            return 0
        return self.keys_buffer.nbytes + self.values_buffer.nbytes

    def allocate(self, like: torch.Tensor) -> None:
        """Allocate the buffers with ``like``'s heads, head size, dtype and device (``[batch, heads, n, dim]``)."""
        shape = (self.num_layers, self.slots, like.shape[1], self.capacity + 1, like.shape[-1])
        self.keys_buffer = like.new_zeros(shape)
        self.values_buffer = like.new_zeros(shape)

    def ensure_columns(self, columns: int) -> None:
        """Make room for ``columns`` columns per slot (copying the buffers once when they must grow)."""
        if columns <= self.capacity:
            return
        # A quarter more than asked (growth stays geometric, so copies stay rare), but never doubling past what a
        # long prompt needs: every slot gets the columns, so 2,100 needed used to allocate 4,096 in all 16 slots.
        capacity = max(columns, min(2 * self.capacity, columns + columns // 4))
        if self.keys_buffer is not None and self.values_buffer is not None:
            old = self.capacity
            for name in ("keys_buffer", "values_buffer"):
                buffer: torch.Tensor = getattr(self, name)
                grown = buffer.new_zeros((*buffer.shape[:3], capacity + 1, buffer.shape[-1]))
                grown[:, :, :, :old].copy_(buffer[:, :, :, :old])
                setattr(self, name, grown)
        self.capacity = capacity

    def bind(
        self,
        write_rows: torch.Tensor,
        write_columns: torch.Tensor,
        read_rows: slice | torch.Tensor,
        read_length: int,
    ) -> None:
        """Set where the next forward pass writes and reads (see ``_Binding``); columns must fit ``capacity``."""
        self.binding = _Binding(write_rows, write_columns, read_rows, read_length)

    @property
    def scratch_column(self) -> int:
        """A column past every row's data where padding tokens may write."""
        return self.capacity

    def move_rows(self, moves: Sequence[tuple[int, int, int]]) -> None:
        """Copy ``(from slot, to slot, columns)`` for each move, as if all were read before any is written."""
        if not moves or self.keys_buffer is None or self.values_buffer is None:
            return
        length = max(columns for _, _, columns in moves)
        if length == 0:
            return
        device = self.keys_buffer.device
        sources = torch.tensor([s for s, _, _ in moves], device=device)
        targets = torch.tensor([t for _, t, _ in moves], device=device)
        for buffer in (self.keys_buffer, self.values_buffer):
            buffer[:, targets, :, :length] = buffer[:, sources, :, :length]

    def read(self, slot: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of one slot's columns ``[start, end)``: keys and values ``[layers, kv_heads, end - start, dim]``."""
        assert self.keys_buffer is not None
        assert self.values_buffer is not None
        return (
            self.keys_buffer[:, slot, :, start:end].clone(),
            self.values_buffer[:, slot, :, start:end].clone(),
        )

    def write(self, slot: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put ``read``-shaped keys and values into one slot from column ``start``."""
        if self.keys_buffer is None or self.values_buffer is None:
            shape = (1, keys.shape[1], 1, keys.shape[-1])
            self.allocate(keys.new_zeros(shape))
        assert self.keys_buffer is not None
        assert self.values_buffer is not None
        end = start + keys.shape[2]
        self.ensure_columns(end)
        self.keys_buffer[:, slot, :, start:end].copy_(keys)
        self.values_buffer[:, slot, :, start:end].copy_(values)
