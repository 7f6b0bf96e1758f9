"""The fused (compiled) LM-head chunk gives the eager chunk's loss, argmax hits and hidden-state gradient.

Run: .venv/bin/pytest tests/unit/training/test_head.py -q  (compiles once, ~20 s)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tunery.training import head, segment_attention
from tunery.training.head import head_loss


@pytest.fixture
def compiling_allowed() -> Iterator[None]:
    segment_attention.allow_compiled(True)
    yield
    segment_attention.allow_compiled(False)


def loss_and_grad(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    leaf = hidden.clone().requires_grad_()
    loss, correct = head_loss(leaf, weight, targets, torch.bfloat16)
    loss.backward()
    assert leaf.grad is not None
    return float(loss.detach()), correct, leaf.grad


def test_the_compiled_chunk_matches_the_eager_one(compiling_allowed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 32, generator=generator)
    weight = torch.randn(500, 32, generator=generator) * 0.3
    targets = torch.randint(0, 500, (300,), generator=generator)
    targets[:40] = (hidden[:40] @ weight.T).argmax(-1)  # some hits to count
    monkeypatch.setattr(head, "LOGIT_CHUNK_ELEMENTS", 128 * 500)  # three chunks, the last one shorter
    calls: list[int] = []
    real = head._compiled_chunk
    monkeypatch.setattr(head, "_compiled_chunk", lambda h, w, t: calls.append(h.shape[0]) or real(h, w, t))

    fused = loss_and_grad(hidden, weight, targets)
    assert calls == [128, 128, 44]
    segment_attention.allow_compiled(False)
    eager = loss_and_grad(hidden, weight, targets)
    assert fused[0] == pytest.approx(eager[0], rel=1e-4)
    assert fused[1] == eager[1] >= 30  # bf16 logits move a few argmaxes
    torch.testing.assert_close(fused[2], eager[2], atol=2e-2, rtol=2e-2)


def test_a_chunk_that_fails_to_compile_runs_eager(compiling_allowed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(head, "_compiled_chunk", broken)
    monkeypatch.setattr(head, "_chunk_failed", False)
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(20, 16, generator=generator), torch.randn(50, 16, generator=generator)
    targets = torch.randint(0, 50, (20,), generator=generator)
    fused = loss_and_grad(hidden, weight, targets)
    assert head._chunk_failed
    segment_attention.allow_compiled(False)
    eager = loss_and_grad(hidden, weight, targets)
    assert fused[0] == pytest.approx(eager[0], rel=1e-6)
