"""Compiled segment attention: the same outputs and gradients as exact attention, within what bf16 flash gets;
chosen only when allowed and measured faster; a kernel that cannot compile leaves flash; varlen attention uses
it for short causal segments only.

Run: .venv/bin/pytest tests/unit/training/test_segment_attention.py -q  (compiles once, ~30 s)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from tunery.training import packing, segment_attention
from tunery.training.packing import varlen_attention
from tunery.training.segment_attention import COMPILED_SEGMENT_TOKENS, attend_compiled, measure


@pytest.fixture
def allowed() -> Iterator[None]:
    segment_attention.allow_compiled(True)
    yield
    segment_attention.allow_compiled(False)
    segment_attention._PAYS.clear()


def relative_error(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor) -> float:
    """Mean absolute error against ``want``, relative to ``scale``'s mean magnitude (a one-token segment's q and k
    gradients are exactly zero, so they are measured against the output gradient's size)."""
    return float((got.detach().double() - want).abs().mean() / scale.abs().mean())


@pytest.mark.parametrize(("heads", "kv_heads", "length"), [(6, 2, 37), (4, 4, 90), (6, 3, 1)])
def test_compiled_attention_matches_exact_attention_as_closely_as_bf16_flash(
    heads: int, kv_heads: int, length: int
) -> None:
    """Outputs and the gradients of q, k and v against fp64 attention: the compiled kernel's error stays within
    twice bf16 flash's (its scores are rounded to bf16, as eager attention under autocast rounds them)."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(1, heads, length, 16, generator=generator, dtype=torch.float64) * 1.5
    k = torch.randn(1, kv_heads, length, 16, generator=generator, dtype=torch.float64) * 1.5
    v = torch.randn(1, kv_heads, length, 16, generator=generator, dtype=torch.float64)
    grad = torch.randn(1, heads, length, 16, generator=generator, dtype=torch.float64)
    exact = [t.clone().requires_grad_() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*exact, is_causal=True, enable_gqa=True)
    want.backward(grad)

    errors: dict[str, list[float]] = {}
    for name in ("flash", "compiled"):
        inputs = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
        if name == "compiled":
            out = attend_compiled(*inputs, None)
        else:
            out = F.scaled_dot_product_attention(*inputs, is_causal=True, enable_gqa=True)
        out.backward(grad.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        assert out.shape == want.shape
        grads = [t.grad for t in inputs]
        assert all(g is not None and g.dtype == torch.bfloat16 for g in grads)
        errors[name] = [relative_error(out, want.detach(), want.detach())] + [
            relative_error(g, e.grad, grad)
            for g, e in zip(grads, exact, strict=True)
            if g is not None and e.grad is not None
        ]
    for compiled, flash in zip(errors["compiled"], errors["flash"], strict=True):
        assert compiled <= 2 * flash + 1e-3, errors


def test_the_choice_follows_the_timings_and_needs_permission(allowed: None) -> None:
    """Each run times flash bf16, flash fp32 and compiled in turn (a fake timer here): compiled wins only when it
    is the fastest of the three; without permission nothing is measured or compiled."""

    def timer(durations: list[float]) -> Any:
        ticks = iter([tick for d in durations for tick in (0.0, d)] * 5)
        return lambda: next(ticks)

    assert measure(4, 2, 8, tokens=16, timer=timer([3.0, 2.0, 1.0])) is True
    assert measure(4, 2, 8, tokens=16, timer=timer([3.0, 0.5, 1.0])) is False  # fp32 flash is faster
    segment_attention.allow_compiled(False)
    q = torch.zeros(1, 4, 8, 8)
    assert segment_attention.compiled_pays(q, q[:, :2]) is False
    assert segment_attention._PAYS == {}


def test_a_kernel_that_fails_to_compile_leaves_flash(allowed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(segment_attention, "_compiled_forward", broken)
    q = torch.zeros(1, 4, 8, 8)
    assert segment_attention.compiled_pays(q, q[:, :2]) is False


def test_varlen_attention_uses_it_for_short_causal_segments_only(
    allowed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the compiled kernel chosen, short causal segments use it, a long one and a masked one keep SDPA; the
    flat row's output agrees with per-example bf16 attention."""
    monkeypatch.setattr(packing, "compiled_pays", lambda q, k: True)
    monkeypatch.setattr(packing, "short_attention_in_fp32", lambda q, k: False)
    used: list[int] = []
    real = packing.attend_compiled

    def spy(q: torch.Tensor, *args: Any) -> torch.Tensor:
        used.append(q.shape[2])
        return real(q, *args)

    monkeypatch.setattr(packing, "attend_compiled", spy)
    lengths = [40, COMPILED_SEGMENT_TOKENS + 8, 7, 12]
    tree = torch.ones(12, 12, dtype=torch.bool).tril()
    tree[6:, 3:6] = False  # a prompt tree: the second answer does not see the first
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, sum(lengths), 16, generator=generator) for h in (4, 2, 2))
    module = torch.nn.Module().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = varlen_attention(
            module, q, k, v, None, segment_lengths=lengths, segment_masks=[None, None, None, tree]
        )
        want = torch.cat(
            [
                F.scaled_dot_product_attention(
                    a, b, c, attn_mask=mask, is_causal=mask is None, enable_gqa=True
                )
                for a, b, c, mask in zip(
                    q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), [None, None, None, tree],
                    strict=True,
                )
            ],
            dim=2,
        ).transpose(1, 2)  # fmt: skip
    assert used == [40, 7]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want.float(), atol=3e-2, rtol=3e-2)
