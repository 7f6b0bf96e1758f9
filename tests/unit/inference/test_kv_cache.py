"""The left-padded batch cache: steps write in place, rows leave and join with their tokens right-aligned,
padding nobody needs is dropped, and padding columns hold zeros.

Run: ``.venv/bin/pytest tests/unit/inference/test_kv_cache.py -q``
"""

from __future__ import annotations

import torch

from tunery.inference.kv_cache import PaddedKVCache, SlotKVCache


def filled(rows: list[list[float]], pads: list[int], layers: int = 2) -> PaddedKVCache:
    """A cache whose row ``i`` holds the values ``rows[i]`` (one head, head_dim 1) after ``pads[i]`` zeros."""
    width = max(len(r) + p for r, p in zip(rows, pads, strict=True))
    cache = PaddedKVCache(layers, pads, capacity=1)  # too small on purpose: it must grow
    keys = torch.zeros(len(rows), 1, width, 1)
    for i, (values, pad) in enumerate(zip(rows, pads, strict=True)):
        keys[i, 0, pad:, 0] = torch.tensor(values)
    for layer in range(layers):
        cache.update(keys, -keys, layer)
    return cache


def columns(cache: PaddedKVCache, layer: int = 0) -> list[list[float]]:
    return cache.padded_layers[layer].keys[:, 0, :, 0].tolist()


def test_steps_append_in_place_and_the_mask_hides_padding() -> None:
    cache = filled([[1, 2], [3, 4, 5]], pads=[1, 0])
    assert cache.length == 3
    buffer = cache.padded_layers[0].key_buffer
    cache.update(torch.tensor([[[[6.0]]], [[[7.0]]]]), torch.zeros(2, 1, 1, 1), 0)
    assert cache.padded_layers[0].key_buffer is buffer  # spare capacity was reserved on growth
    assert columns(cache) == [[0, 1, 2, 6], [3, 4, 5, 7]]
    # The mask is for the next token: one more column, its own.
    assert cache.decode_mask(torch.device("cpu"))[:, 0, 0].tolist() == [[False] + [True] * 4, [True] * 5]


def test_rows_leave_and_join_right_aligned() -> None:
    running = filled([[1, 2], [3, 4, 5, 6], [7, 8, 9]], pads=[2, 0, 1])
    joining = filled([[10, 11, 12, 13, 14]], pads=[0])
    merged = running.rebuilt([0, 2], joining, reserve=8)
    # Row 1 left, so one padding column is needed by nobody and goes; the newcomer is longer than the rest,
    # so they get two more on their left.
    assert merged.pads == [3, 2, 0]
    assert columns(merged) == [[0, 0, 0, 1, 2], [0, 0, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert columns(merged, 1) == columns(merged)
    assert merged.padded_layers[0].values[:, 0, :, 0].tolist() == [[-v for v in row] for row in columns(merged)]
    assert merged.padded_layers[0].capacity >= merged.length + 8
    shrunk = merged.rebuilt([1])
    assert (shrunk.pads, columns(shrunk)) == ([0], [[7, 8, 9]])


# ------------------------------------------------------------------------------------------------ SlotKVCache
def slot_values(cache: SlotKVCache, slot: int, length: int, layer: int = 0) -> list[float]:
    assert cache.keys_buffer is not None
    return cache.keys_buffer[layer, slot, 0, :length, 0].tolist()


def test_slot_cache_writes_each_row_at_its_own_columns_and_reads_a_view() -> None:
    cache = SlotKVCache(num_layers=2, slots=3, capacity=2)
    cache.ensure_columns(5)  # before the first write: only the capacity changes
    cache.bind(torch.tensor([[0], [1]]), torch.tensor([[0, 1], [0, 5]]), slice(0, 2), 2)
    keys, _ = cache.update(torch.tensor([[[[1.0], [2.0]]], [[[3.0], [9.0]]]]), torch.zeros(2, 1, 2, 1), 0)
    scratch = cache.scratch_column
    assert scratch == 5
    assert keys.tolist() == [[[[1.0], [2.0]]], [[[3.0], [0.0]]]]  # row 1's second token went to the scratch column
    assert keys.data_ptr() == cache.keys_buffer.data_ptr()  # type: ignore[union-attr]  # a view, no gather
    # A decode step: each row writes one token at its own column.
    cache.bind(torch.tensor([[0], [1]]), torch.tensor([[2], [1]]), slice(0, 2), 3)
    cache.update(torch.tensor([[[[4.0]]], [[[5.0]]]]), torch.zeros(2, 1, 1, 1), 0)
    assert slot_values(cache, 0, 3) == [1, 2, 4]
    assert slot_values(cache, 1, 2) == [3, 5]
    cache.ensure_columns(20)  # growth keeps the data
    assert cache.capacity >= 20
    assert slot_values(cache, 0, 3) == [1, 2, 4]


def test_slot_cache_grows_to_about_what_a_long_row_needs_and_geometrically_when_a_little_short() -> None:
    cache = SlotKVCache(num_layers=1, slots=16, capacity=256)
    cache.write(0, 0, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    cache.ensure_columns(2100)  # a 2,100-token prompt: not 4,096 columns in every slot
    assert 2100 <= cache.capacity <= 2100 * 5 // 4 + 64
    assert cache.keys_buffer is not None
    assert cache.keys_buffer.shape[3] == cache.capacity + 1
    assert slot_values(cache, 0, 3) == [1, 1, 1]
    before = cache.capacity
    cache.ensure_columns(before + 1)  # one column short: a quarter more, so the next rows do not copy again
    assert cache.capacity >= before * 5 // 4


def test_slot_cache_moves_rows_and_copies_prefixes_in_and_out() -> None:
    cache = SlotKVCache(num_layers=1, slots=3, capacity=4)
    keys = torch.arange(12.0).view(1, 3, 1, 4, 1).expand(1, 3, 1, 4, 1)
    for slot in range(3):
        cache.write(slot, 0, keys[:, slot], -keys[:, slot])
    cache.move_rows([(2, 0, 4), (0, 1, 2)])  # both read before either is written
    assert slot_values(cache, 0, 4) == [8, 9, 10, 11]
    assert slot_values(cache, 1, 2) == [0, 1]
    got_keys, got_values = cache.read(0, 1, 3)
    assert got_keys.flatten().tolist() == [9, 10]
    assert got_values.flatten().tolist() == [-9, -10]
    cache.write(2, 2, got_keys, got_values)
    assert slot_values(cache, 2, 4) == [8, 9, 9, 10]
