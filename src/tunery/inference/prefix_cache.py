"""Prefix caching: the keys and values of prompt prefixes already read, reused by later prompts that share them.

A prompt is cut into blocks of ``block_tokens`` tokens. A block is stored under (the block before it, its own
tokens), the first block under the adapter it was computed with, so a hit is exact: the same adapter (an adapter
changes every layer's keys and values; the base model is its own key) and the same tokens from the very first
one. ``lookup`` returns the longest chain of stored blocks that starts a prompt (never the whole prompt: its last
token must still run through the model to give the logits of the first new token); the scheduler copies those
blocks into the request's cache slot and prefills only the rest. ``insert`` stores the full blocks of a prompt
once it has been read. Memory is bounded by ``max_bytes``: the least recently used blocks go first (a lookup
marks a chain used from its last block to its first, so a shared system prompt's first blocks outlive the
user-specific blocks that follow them).

Hand-written because the engine's cache layout is its own (``kv_cache.SlotKVCache``); the blocks are plain
tensors ``[layers, kv_heads, block_tokens, head_dim]``. Not thread-safe: one scheduler thread owns it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

_ids = itertools.count(1)


@dataclass(eq=False)
class PrefixBlock:
    """One stored block: its keys and values, and the id its successors are keyed under."""

    keys: torch.Tensor  # [layers, kv_heads, block_tokens, head_dim]
    values: torch.Tensor
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class PrefixCache:
    """Stored prompt blocks for one base model, by adapter, LRU-bounded in bytes.

    Args:
        block_tokens: tokens per block: a prefix is reused in whole blocks.
        max_bytes: the most memory the blocks take (0 disables the cache).
    """

    def __init__(self, block_tokens: int = 32, max_bytes: int = 256 * 2**20) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1.")
        self.block_tokens = block_tokens
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0  # tokens served from the cache
        self._blocks: OrderedDict[tuple[Hashable, tuple[int, ...]], PrefixBlock] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, adapter: Hashable, tokens: Sequence[int]) -> list[PrefixBlock]:
        """The stored blocks that begin ``tokens`` for ``adapter``, covering fewer tokens than ``tokens`` holds."""
        if self.max_bytes <= 0:
            return []
        found: list[tuple[tuple[Hashable, tuple[int, ...]], PrefixBlock]] = []
        parent: Hashable = ("root", adapter)
        size = self.block_tokens
        for start in range(0, len(tokens) - 1 - size + 1, size):
            key = (parent, tuple(tokens[start : start + size]))
            block = self._blocks.get(key)
            if block is None:
                break
            found.append((key, block))
            parent = block.id
        for key, _ in reversed(found):
            self._blocks.move_to_end(key)
        self.hits += len(found) * size
        return [block for _, block in found]

    def insert(
        self,
        adapter: Hashable,
        tokens: Sequence[int],
        read: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Store the full blocks of ``tokens`` not stored yet; ``read(start, end)`` copies their keys and values."""
        if self.max_bytes <= 0:
            return
        parent: Hashable = ("root", adapter)
        size = self.block_tokens
        for start in range(0, len(tokens) - size + 1, size):
            key = (parent, tuple(tokens[start : start + size]))
            block = self._blocks.get(key)
            if block is None:
                keys, values = read(start, start + size)
                block = PrefixBlock(keys, values)
                if block.nbytes > self.max_bytes:
                    return
                self._blocks[key] = block
                self.nbytes += block.nbytes
                self._evict(keep=key)
                if key not in self._blocks:
                    return
            parent = block.id

    def clear(self) -> None:
        self._blocks.clear()
        self.nbytes = 0

    def _evict(self, keep: Hashable) -> None:
        while self.nbytes > self.max_bytes and self._blocks:
            key, block = next(iter(self._blocks.items()))
            if key == keep and len(self._blocks) == 1:
                break
            del self._blocks[key]
            self.nbytes -= block.nbytes
