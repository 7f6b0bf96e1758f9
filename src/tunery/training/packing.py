"""Pack tokenized examples so that no example sees another, and plan which examples make each step.

A step takes exactly ``batch_size`` examples of the epoch's shuffled order (the last step of an epoch takes
what is left), split into micro-batches of at most ``micro_batch_tokens`` tokens so memory is bounded
whatever the batch size. Position ids restart at 0 for each example, and targets are the next-token labels
shifted inside each example, so a packed example gets exactly the logits and loss it would get alone.
Two layouts keep examples apart:

* ``mask`` (the portable one): examples are packed first-fit-decreasing into rows of at most ``max_seq_len``
  tokens, padded to the longest row, with a block-diagonal causal mask (``(rows, 1, L, L)`` booleans,
  True = may attend: the 4D form transformers hands to SDPA unchanged).
* ``flat`` (the fast one, the trainer's default): the micro-batch's examples back to back in ONE row, no
  padding at all, attended example by example by ``varlen_attention`` (registered with transformers as
  ``VARLEN_ATTENTION``). Linear layers then see only real tokens, and attention costs the sum of the
  examples' causal triangles instead of full rows squared: on a CPU at 512 tokens that is ~25 % less
  matmul work and ~3x less attention work than the masked rows.

This module builds tensors and provides the attention that reads them; it knows nothing about training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from tunery.training.examples import IGNORE_INDEX, Example
from tunery.training.segment_attention import COMPILED_SEGMENT_TOKENS, attend_compiled, compiled_pays

Layout = Literal["flat", "mask"]
VARLEN_ATTENTION = "tunery_varlen"  # the attn_implementation name of ``varlen_attention``

PAD_ID = 0  # any id works: padded positions carry no target and no example attends to them


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """Rows of packed examples, ready for a causal LM forward pass.

    Attributes:
        input_ids: ``(rows, L)`` token ids, padded with ``PAD_ID`` to the longest row (one row when flat).
        position_ids: ``(rows, L)``, restarting at 0 for every example.
        attention_mask: ``(rows, 1, L, L)`` bool, True where a query may attend to a key; None when flat
            (then ``varlen_attention`` keeps the examples apart).
        targets: ``(rows, L)`` the token each position should predict, ``IGNORE_INDEX`` where no loss is taken.
        segment_lengths: per row, the lengths of its examples in order (padding not included).
        real_tokens: non-padding tokens in the batch.
        trainable_tokens: positions with a target.
        segment_masks: flat only: per segment, None (causal) or its ``(L, L)`` bool mask (``collate_trees``).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    targets: torch.Tensor
    segment_lengths: list[list[int]]
    real_tokens: int
    trainable_tokens: int
    segment_masks: list[torch.Tensor | None] | None = None

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            attention_mask=self.attention_mask.to(device) if self.attention_mask is not None else None,
            targets=self.targets.to(device),
            segment_lengths=self.segment_lengths,
            real_tokens=self.real_tokens,
            trainable_tokens=self.trainable_tokens,
            segment_masks=[m.to(device) if m is not None else None for m in self.segment_masks]
            if self.segment_masks is not None
            else None,
        )


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The order examples are seen in during ``epoch`` (0-based): a permutation fixed by seed and epoch alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [int(i) for i in torch.randperm(n_examples, generator=generator)]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def step_examples(order: Sequence[int], step_in_epoch: int, batch_size: int) -> list[int]:
    """Indices of the examples that optimizer step ``step_in_epoch`` (0-based) of an epoch trains on."""
    return list(order[step_in_epoch * batch_size : (step_in_epoch + 1) * batch_size])


def pack_rows(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Group items (by index) into rows of total length ``<= max_len``, first fit by decreasing length.

    Deterministic: ties keep their input order. Rows come out roughly longest first.

    Raises:
        ValueError: an item is longer than ``max_len`` (examples are truncated before packing).
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        if length > max_len:
            raise ValueError(f"An example of {length} tokens does not fit in a row of {max_len}.")
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(max_len - length)
    return rows


def collate_flat(examples: Sequence[Example]) -> PackedBatch:
    """One unpadded row holding ``examples`` back to back, with no mask: for ``varlen_attention``."""
    return collate_rows([examples], with_mask=False)


def collate_rows(rows: Sequence[Sequence[Example]], *, with_mask: bool = True) -> PackedBatch:
    """Build the tensors of a micro-batch: each inner sequence of examples becomes one packed row."""
    width = max(sum(len(example) for example in row) for row in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    segment_lengths: list[list[int]] = []
    for r, row in enumerate(rows):
        start = 0
        lengths = []
        for s, example in enumerate(row):
            end = start + len(example)
            input_ids[r, start:end] = torch.tensor(example.input_ids)
            position_ids[r, start:end] = torch.arange(len(example))
            # Position t predicts token t + 1 of the same example; the example's last token predicts nothing.
            targets[r, start : end - 1] = torch.tensor(example.labels[1:])
            segments[r, start:end] = s
            lengths.append(len(example))
            start = end
        segment_lengths.append(lengths)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=block_causal_mask(segments) if with_mask else None,
        targets=targets,
        segment_lengths=segment_lengths,
        real_tokens=sum(sum(lengths) for lengths in segment_lengths),
        trainable_tokens=int((targets != IGNORE_INDEX).sum()),
    )


def collate_trees(trees: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> PackedBatch:
    """One unpadded row of prompt trees, for ``varlen_attention``: several answers sharing one prompt.

    Each ``(prompt, answers)`` is one segment: the prompt without its last token, once, then per answer a
    branch ``[prompt[-1]] + answer[:-1]`` whose positions continue the prompt's and whose targets are the answer.
    A branch attends to the shared prompt and causally to itself, never to another branch, so every answer token
    gets exactly the logits it would get in ``prompt + answer`` alone, while the prompt is read once instead of
    once per answer. Targets come branch after branch, each answer's tokens in order.
    """
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    lengths: list[int] = []
    masks: list[torch.Tensor | None] = []
    for prompt, answers in trees:
        if not prompt or any(not answer for answer in answers):
            raise ValueError("a prompt tree needs a prompt and non-empty answers")
        shared = len(prompt) - 1
        ids += prompt[:-1]
        positions += range(shared)
        targets += [IGNORE_INDEX] * shared
        branch_of = [-1] * shared  # -1: the shared prompt
        for b, answer in enumerate(answers):
            ids += [prompt[-1], *answer[:-1]]
            positions += range(shared, shared + len(answer))
            targets += answer
            branch_of += [b] * len(answer)
        length = len(branch_of)
        branch = torch.tensor(branch_of)
        causal = torch.ones((length, length), dtype=torch.bool).tril()
        # key j is visible to query i (j <= i) when j is in the prompt or in i's own branch
        masks.append(causal & ((branch[None, :] == -1) | (branch[None, :] == branch[:, None])))
        lengths.append(length)
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        attention_mask=None,
        targets=torch.tensor([targets], dtype=torch.long),
        segment_lengths=[lengths],
        real_tokens=len(ids),
        trainable_tokens=sum(t != IGNORE_INDEX for t in targets),
        segment_masks=masks,
    )


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """``(rows, 1, L, L)`` bool: query i may see key j when j <= i and both belong to the same segment.

    Padding (segment -1) sees only padding, so every query has at least itself to attend to (no NaN rows)
    and no real token ever sees padding.
    """
    width = segments.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def micro_batches(
    examples: Sequence[Example], max_seq_len: int, micro_batch_tokens: int, *, layout: Layout
) -> Iterator[PackedBatch]:
    """Split one step's examples into micro-batches of bounded size (at least one example or row each).

    ``flat``: consecutive examples while their total stays ``<= micro_batch_tokens``, one unpadded row each.
    ``mask``: rows packed to ``max_seq_len``, then as many rows as fit ``rows × longest row <= micro_batch_tokens``.
    Built one at a time, so only one micro-batch's tensors (and mask) exist at once.
    """
    if layout == "flat":
        group: list[Example] = []
        for example in examples:
            if group and sum(len(e) for e in group) + len(example) > micro_batch_tokens:
                yield collate_flat(group)
                group = []
            group.append(example)
        if group:
            yield collate_flat(group)
        return

    rows = [[examples[i] for i in row] for row in pack_rows([len(e) for e in examples], max_seq_len)]
    rows.sort(key=lambda row: -sum(len(e) for e in row))
    packed: list[list[Example]] = []
    for row in rows:
        longest = max([sum(len(e) for e in r) for r in packed] + [sum(len(e) for e in row)])
        if packed and (len(packed) + 1) * longest > micro_batch_tokens:
            yield collate_rows(packed)
            packed = []
        packed.append(row)
    if packed:
        yield collate_rows(packed)


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention example by example over a flat row (``segment_lengths=[...]`` in the model call; a
    segment with a mask in ``segment_masks=[...]`` attends by that mask instead, as a prompt tree does).

    Transformers calls it for every attention layer with ``(batch, heads, tokens, head_dim)`` tensors; it
    returns ``(batch, tokens, heads, head_dim)`` like its SDPA function. Without ``segment_lengths`` it is
    plain SDPA, so a model switched to it still works for ordinary calls (generation, evaluation).
    """
    lengths: list[int] | None = kwargs.pop("segment_lengths", None)
    masks: list[torch.Tensor | None] | None = kwargs.pop("segment_masks", None)
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if query.shape[0] != 1 or sum(lengths) != query.shape[2]:
        raise ValueError("segment_lengths describe one flat row: batch size 1, lengths summing to its length")
    gqa = query.shape[1] != key.shape[1]
    dropout_p = dropout if module.training else 0.0
    per_segment = masks if masks is not None else [None] * len(lengths)
    device_type = query.device.type
    in_bf16 = query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
    )  # under autocast SDPA runs in bf16 whatever its inputs (rotary leaves q and k in fp32)
    short_in_fp32 = in_bf16 and short_attention_in_fp32(query, key)
    compiled = in_bf16 and dropout_p == 0.0 and compiled_pays(query, key)

    def one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if compiled and mask is None and q.shape[2] <= COMPILED_SEGMENT_TOKENS:
            return attend_compiled(q, k, v, scaling)
        return _attend(
            q, k, v, mask, dropout_p, scaling, gqa, fp32=short_in_fp32 and q.shape[2] <= SHORT_SEGMENT_TOKENS
        )

    # split (not slicing in a loop): its backward is one concatenation instead of a zero-filled copy per example
    outputs = [
        one(q, k, v, mask)
        for q, k, v, mask in zip(
            query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2), per_segment,
            strict=True,
        )
    ]  # fmt: skip
    return torch.cat([out.transpose(1, 2) for out in outputs], dim=1), None  # (batch, tokens, heads, dim)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    scaling: float | None,
    gqa: bool,
    *,
    fp32: bool,
) -> torch.Tensor:
    """SDPA of one segment: causal without a mask; when ``fp32``, in fp32 outside autocast, the result in bf16
    (what the bf16 attention would have returned)."""
    if not fp32:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None, scale=scaling, enable_gqa=gqa
        )
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None,
            scale=scaling, enable_gqa=gqa,
        )  # fmt: skip
    return out.to(torch.bfloat16)


def short_attention_in_fp32(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether a short segment's bf16 attention runs faster cast to fp32 on this machine, for these head shapes.

    Measured once per process and shape (forward + backward of a 64-token causal segment, both ways, best of a few
    runs; ~50 ms), because CPUs differ: on an AMD Zen 4, CPU SDPA's bf16 kernel took 0.78 ms against 0.39 ms in
    fp32 at 64 tokens (on par at 256, bf16 ahead at 1,024), and its backward was a quarter of a SmolLM2 step.
    Only on a CPU; elsewhere False.
    """
    if query.device.type != "cpu":
        return False
    shape = (query.shape[1], key.shape[1], query.shape[3])
    verdict = _SHORT_FP32.get(shape)
    if verdict is None:
        verdict = _SHORT_FP32[shape] = _measure_short_attention(*shape)
    return verdict


_SHORT_FP32: dict[tuple[int, int, int], bool] = {}
SHORT_SEGMENT_TOKENS = 256  # segments up to this many tokens may attend in fp32 (``short_attention_in_fp32``)


def _measure_short_attention(
    heads: int,
    kv_heads: int,
    head_dim: int,
    tokens: int = 64,
    runs: int = 5,
    timer: Callable[[], float] = time.perf_counter,
) -> bool:
    generator = torch.Generator().manual_seed(0)

    def sample(h: int) -> torch.Tensor:
        return torch.randn(1, h, tokens, head_dim, generator=generator, dtype=torch.bfloat16).requires_grad_()

    q, k, v = sample(heads), sample(kv_heads), sample(kv_heads)
    grad = torch.ones(1, heads, tokens, head_dim, dtype=torch.bfloat16)
    best = {False: float("inf"), True: float("inf")}
    with torch.enable_grad():
        for _ in range(runs):
            for fp32 in (False, True):
                started = timer()
                _attend(q, k, v, None, 0.0, None, heads != kv_heads, fp32=fp32).backward(grad)
                best[fp32] = min(best[fp32], timer() - started)
    return best[True] < best[False]


def use_varlen_attention(model: nn.Module) -> None:
    """Register ``varlen_attention`` with transformers (once) and switch ``model`` to it."""
    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, sdpa_mask)  # ordinary calls get SDPA's masks
    model.set_attn_implementation(VARLEN_ATTENTION)  # type: ignore[operator]
