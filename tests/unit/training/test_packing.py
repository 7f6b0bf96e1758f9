"""Packing: every example fits once into rows of at most max_seq_len; positions restart per example; targets never
cross examples; an example packed with others gets the same logits as alone (fp32, tiny Llama with SDPA);
micro-batches stay inside their token budget; each step takes exactly batch_size examples of a seeded order.

Run: .venv/bin/pytest tests/unit/training/test_packing.py -q  (builds the tiny model once, < 10 s)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests import precision
from tunery.training import packing
from tunery.training.examples import IGNORE_INDEX, Example
from tunery.training.packing import (
    PAD_ID,
    _measure_short_attention,
    collate_flat,
    collate_rows,
    epoch_order,
    micro_batches,
    pack_rows,
    step_examples,
    steps_per_epoch,
    use_varlen_attention,
    varlen_attention,
)


def make_example(rng: random.Random, length: int, vocab: int = 500) -> Example:
    ids = [rng.randrange(3, vocab) for _ in range(length)]
    prompt = rng.randrange(1, length)
    labels = [IGNORE_INDEX] * prompt + ids[prompt:]
    return Example(input_ids=ids, labels=labels)


def test_pack_rows_fits_everything_once() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(50)]

    rows = pack_rows(lengths, max_len=128)

    assert sorted(i for row in rows for i in row) == list(range(50))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= sum(lengths) // 128 + 8  # first-fit decreasing wastes little
    assert pack_rows(lengths, max_len=128) == rows


def test_pack_rows_rejects_an_item_longer_than_a_row() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([10, 200], max_len=128)


def test_collate_restarts_positions_and_keeps_targets_inside_examples() -> None:
    first = Example(input_ids=[11, 12, 13], labels=[IGNORE_INDEX, 12, 13])
    second = Example(input_ids=[21, 22], labels=[IGNORE_INDEX, 22])
    third = Example(input_ids=[31], labels=[31])

    batch = collate_rows([[first, second], [third]])

    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22], [31, PAD_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 0]]
    # 13 (last of the first example) must not learn to predict 21 (first of the next).
    ignore = IGNORE_INDEX
    assert batch.targets.tolist() == [[12, 13, ignore, 22, ignore], [ignore] * 5]
    assert (batch.real_tokens, batch.trainable_tokens) == (6, 3)
    assert batch.segment_lengths == [[3, 2], [1]]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert batch.attention_mask.shape == (2, 1, 5, 5)
    assert not batch.attention_mask[1, 0, 1:, 0].any()  # padding is seen by nobody real, and sees only padding


@pytest.mark.parametrize("dtype", precision.sensitive())
def test_packed_logits_equal_logits_alone(tiny_model_dir: Path, dtype: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    rng = random.Random(1)
    examples = [make_example(rng, n) for n in (37, 5, 64, 20, 90, 11)]

    rows = [examples[:3], examples[3:]]  # two packed rows of different lengths (the shorter one padded)
    batch = collate_rows(rows)
    amp: Any = precision.amp(dtype)
    atol = rtol = precision.LOGITS_ATOL[dtype]
    with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        packed = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
        for r, row in enumerate(rows):
            start = 0
            for example in row:
                alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
                torch.testing.assert_close(packed[r, start : start + len(example)], alone, atol=atol, rtol=rtol)
                start += len(example)


@pytest.mark.parametrize("dtype", precision.sensitive())
def test_flat_rows_with_varlen_attention_equal_logits_alone(tiny_model_dir: Path, dtype: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    use_varlen_attention(model)
    model.eval()
    rng = random.Random(3)
    examples = [make_example(rng, n) for n in (37, 5, 64, 20, 2)]

    batch = collate_flat(examples)
    assert batch.attention_mask is None
    assert batch.input_ids.shape == (1, sum(len(e) for e in examples))  # no padding at all
    amp: Any = precision.amp(dtype)
    atol = rtol = precision.LOGITS_ATOL[dtype]
    with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        packed = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, segment_lengths=batch.segment_lengths[0]
        ).logits[0]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]  # ordinary call: plain SDPA
            torch.testing.assert_close(packed[start : start + len(example)], alone, atol=atol, rtol=rtol)
            start += len(example)


def test_micro_batches_respect_the_token_budget_and_cover_the_step() -> None:
    rng = random.Random(2)
    examples = [make_example(rng, rng.randint(10, 120)) for _ in range(40)]

    batches = list(micro_batches(examples, max_seq_len=128, micro_batch_tokens=512, layout="mask"))

    assert all(b.input_ids.numel() <= 512 for b in batches)
    assert sum(b.real_tokens for b in batches) == sum(len(e) for e in examples)
    expected_targets = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples)
    assert sum(b.trainable_tokens for b in batches) == expected_targets
    # A budget smaller than one row still makes progress: one row per micro-batch.
    assert all(
        b.input_ids.shape[0] == 1
        for b in micro_batches(examples, max_seq_len=128, micro_batch_tokens=64, layout="mask")
    )

    flat = list(micro_batches(examples, max_seq_len=128, micro_batch_tokens=512, layout="flat"))
    assert all(b.input_ids.shape[0] == 1 and b.attention_mask is None for b in flat)
    assert all(b.real_tokens == b.input_ids.numel() <= 512 for b in flat)
    assert sum(b.trainable_tokens for b in flat) == expected_targets
    assert [n for b in flat for n in b.segment_lengths[0]] == [len(e) for e in examples]  # order kept


def test_each_step_takes_batch_size_examples_of_a_seeded_order() -> None:
    order = epoch_order(10, seed=7, epoch=0)

    assert sorted(order) == list(range(10))
    assert order == epoch_order(10, seed=7, epoch=0)
    assert order != epoch_order(10, seed=7, epoch=1)
    assert order != epoch_order(10, seed=8, epoch=0)
    assert steps_per_epoch(10, 4) == 3
    steps = [step_examples(order, s, 4) for s in range(3)]
    assert [len(s) for s in steps] == [4, 4, 2]  # the last step of an epoch takes what is left
    assert [i for step in steps for i in step] == order


def test_short_segments_attend_in_fp32_only_where_measured_faster() -> None:
    """The fp32-or-bf16 choice for short segments follows the timings (a fake timer here), per head shape."""
    bf16_slower = iter([0.0, 2.0, 2.0, 3.0] * 5)  # each run: bf16 takes 2, fp32 takes 1
    assert _measure_short_attention(4, 2, 8, runs=5, timer=lambda: next(bf16_slower)) is True
    fp32_slower = iter([0.0, 1.0, 1.0, 3.0] * 5)  # bf16 takes 1, fp32 takes 2
    assert _measure_short_attention(4, 2, 8, runs=5, timer=lambda: next(fp32_slower)) is False


@pytest.mark.parametrize("fp32", [True, False])
def test_varlen_attention_in_fp32_or_bf16_gives_the_same_bf16_result(
    fp32: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under bf16 autocast, short segments attend in fp32 when the machine is faster at it, long ones in bf16;
    either way the output is bf16 and agrees with plain bf16 attention within bf16's precision."""
    monkeypatch.setattr(packing, "short_attention_in_fp32", lambda q, k: fp32)
    used: list[tuple[int, bool]] = []
    real_attend = packing._attend

    def spy(q: torch.Tensor, *args: Any, fp32: bool) -> torch.Tensor:
        used.append((q.shape[2], fp32))
        return real_attend(q, *args, fp32=fp32)

    monkeypatch.setattr(packing, "_attend", spy)
    lengths = [40, packing.SHORT_SEGMENT_TOKENS + 20, 7]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, sum(lengths), 16, generator=generator) for h in (4, 2, 2))
    module = torch.nn.Module().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = varlen_attention(module, q, k, v, None, segment_lengths=lengths)
        want = torch.cat(
            [
                torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True)
                for a, b, c in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), strict=True)
            ],
            dim=2,
        ).transpose(1, 2)
    assert out.dtype == torch.bfloat16
    assert used == [(40, fp32), (packing.SHORT_SEGMENT_TOKENS + 20, False), (7, fp32)]
    torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=2e-2)
