"""The prefix cache: exact per-adapter chains of blocks, never the whole prompt, LRU within its byte budget.

Run: ``.venv/bin/pytest tests/unit/inference/test_prefix_cache.py -q``
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunery.inference.prefix_cache import PrefixBlock, PrefixCache


def reader(tokens: list[int]) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """Blocks whose keys are the token ids themselves ([layers=1, heads=1, n, dim=1]), values their negatives."""

    def read(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.tensor(tokens[start:end], dtype=torch.float32).view(1, 1, -1, 1)
        return keys, -keys

    return read


def covered(blocks: list[PrefixBlock]) -> list[int]:
    return [int(x) for block in blocks for x in block.keys.flatten().tolist()]


def test_lookup_returns_whole_blocks_of_the_same_adapter_and_never_the_whole_prompt() -> None:
    cache = PrefixCache(block_tokens=2)
    tokens = [1, 2, 3, 4, 5, 6, 7]
    cache.insert("a", tokens, reader(tokens))
    assert len(cache) == 3  # the 7th token is not a full block
    assert covered(cache.lookup("a", [1, 2, 3, 4, 9, 9, 9])) == [1, 2, 3, 4]
    assert covered(cache.lookup("a", [1, 2, 3, 4, 5, 6])) == [1, 2, 3, 4]  # token 6 must still be read
    assert covered(cache.lookup("a", [1, 2, 3, 4, 5, 6, 0])) == [1, 2, 3, 4, 5, 6]
    assert cache.lookup("b", tokens) == []  # another adapter: other keys and values
    assert cache.lookup("a", [9, 2, 3, 4, 5]) == []  # the chain starts at the first token
    assert cache.lookup(None, tokens) == []


def test_memory_is_bounded_and_the_least_recently_used_blocks_go() -> None:
    block_bytes = 2 * 2 * 4  # keys + values, two fp32 each
    cache = PrefixCache(block_tokens=2, max_bytes=3 * block_bytes)
    first = [1, 2, 3, 4]
    cache.insert(None, first, reader(first))
    second = [5, 6, 7, 8]
    cache.insert(None, second, reader(second))
    assert cache.nbytes <= 3 * block_bytes
    assert len(cache) == 3
    assert covered(cache.lookup(None, [*second, 0])) == [5, 6, 7, 8]
    assert covered(cache.lookup(None, [*first, 0])) == []  # its first block went first: the chain is broken
    off = PrefixCache(block_tokens=2, max_bytes=0)
    off.insert(None, first, reader(first))
    assert (len(off), off.lookup(None, [*first, 0])) == (0, [])
