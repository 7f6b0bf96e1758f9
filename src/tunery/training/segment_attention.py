"""Causal attention of one short packed segment on a CPU: the fastest kernel on this machine, and a compiled one.

``packing.varlen_attention`` attends a flat micro-batch example by example, and most training examples are
short (tens to a few hundred tokens). There PyTorch's CPU flash kernel is slow: its small query and key blocks
keep the matrix units idle (measured on a 2-vCPU AMD Zen 4 with avx512_bf16, forward + backward of one
segment with 9 query and 3 KV heads of 64: 256 tokens 3.5 ms, 351 tokens 7.4 ms, 512 tokens 12.2 ms).

``compiled`` is written here by hand because no library offers a better CPU kernel for this: the segment as
batched bf16 matmuls (query heads grouped by the KV head they share, so K and V are never repeated) with the
mask, softmax and casts between them fused by inductor (``torch.compile``). It keeps the probabilities for
backward in bf16: ``heads × L² × 2`` bytes per layer and segment (4.5 MiB for a 9-head 512-token segment), at
most ``heads × 512 × 2`` bytes per layer and token of a micro-batch. Recomputing them in backward instead, as
flash does, made forward + backward 60-75 % slower here. Measured on the same machine, forward + backward:
256 tokens 1.2 ms, 351 tokens 2.1 ms, 512 tokens 9.4 ms. Its scores are rounded to bf16 before the softmax, as
eager attention under bf16 autocast does (the flash kernel keeps them in fp32): a mean error of 0.004 against
0.002 for flash on unit-variance inputs, the precision class of every other bf16 matmul output.

Whether short segments use it is measured once per process and head shape (``compiled_pays``): against flash
in bf16 and in fp32 (faster than bf16 below ~256 tokens on some CPUs). It is a candidate only after
``allow_compiled(True)`` — compiling costs several seconds per process, so the trainer allows it only for runs
long enough to win that back — and only where compiling works (inductor needs a C++ compiler); a failure to
compile leaves the flash kernels. Causal segments without dropout only. This module knows nothing about
packing or models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

COMPILED_SEGMENT_TOKENS = 512  # longer segments keep the flash kernel (its lead shrinks, the scores grow as L²)
MEASURE_TOKENS = 192  # the segment length the kernels are timed at

log = logging.getLogger(__name__)


def attend_compiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Causal attention of one ``(1, heads, L, dim)`` segment (``kv_heads`` dividing ``heads``), bf16 out."""
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out: torch.Tensor = _CompiledAttention.apply(q, k, v, scale)
    return out


# --------------------------------------------------------------------------------------------- compiled
def _scores(qg: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, groups: int) -> torch.Tensor:
    """Masked fp32 scores ``(kv_heads, groups, L, L)`` of grouped queries ``(kv_heads, groups * L, dim)``."""
    kv_heads, rows, _ = qg.shape
    length = rows // groups
    s = torch.bmm(qg, k.transpose(1, 2)).view(kv_heads, groups, length, length).float() * scale
    i = torch.arange(length, device=qg.device)
    return s.masked_fill(i[None, :] > i[:, None], float("-inf"))


def _forward(
    qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output ``(kv_heads, groups * L, dim)`` and the bf16 probabilities ``(kv_heads, groups * L, L)``."""
    p = torch.softmax(_scores(qg, k, scale, groups), dim=-1).to(torch.bfloat16).view(qg.shape[0], qg.shape[1], -1)
    return torch.bmm(p, v), p


def _backward(
    qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p16: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_v = torch.bmm(p16.transpose(1, 2), grad)
    grad_p = torch.bmm(grad, v.transpose(1, 2)).float()
    p = p16.float()
    # softmax's backward applied to the rounded grad_p itself (not dO·O): consistent, exact for one-token rows
    grad_s = (p * (grad_p - (p * grad_p).sum(-1, keepdim=True)) * scale).to(torch.bfloat16)
    return torch.bmm(grad_s, k), torch.bmm(grad_s.transpose(1, 2), qg), grad_v


_compiled_forward: Callable[..., Any] = torch.compile(_forward, dynamic=True)
_compiled_backward: Callable[..., Any] = torch.compile(_backward, dynamic=True)


class _CompiledAttention(torch.autograd.Function):
    """Causal GQA attention of one ``(1, heads, L, dim)`` segment; keeps the bf16 probabilities for backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
    ) -> torch.Tensor:
        _, heads, length, dim = q.shape
        kv_heads = k.shape[1]
        groups = heads // kv_heads
        qg = q.to(torch.bfloat16).reshape(kv_heads, groups * length, dim)
        k16, v16 = k[0].to(torch.bfloat16).contiguous(), v[0].to(torch.bfloat16).contiguous()
        scale_t = torch.tensor(scale, dtype=torch.float32)  # a tensor: no recompilation per head size
        with torch.autocast(q.device.type, enabled=False):
            out, p16 = _compiled_forward(qg, k16, v16, scale_t, groups)
        ctx.save_for_backward(qg, k16, v16, p16, scale_t)
        ctx.shape = (q.shape, k.shape)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out.view(1, heads, length, dim)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        qg, k16, v16, p16, scale_t = ctx.saved_tensors
        q_shape, k_shape = ctx.shape
        grad = grad_out.to(torch.bfloat16).reshape(qg.shape)
        with torch.autocast(grad.device.type, enabled=False):
            grad_q, grad_k, grad_v = _compiled_backward(qg, k16, v16, p16, grad, scale_t)
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return (
            grad_q.view(q_shape).to(q_dtype),
            grad_k.view(k_shape).to(k_dtype),
            grad_v.view(k_shape).to(v_dtype),
            None,
        )


# --------------------------------------------------------------------------------------------- choice
_allowed = False
_PAYS: dict[tuple[int, int, int], bool] = {}


def allow_compiled(allowed: bool) -> None:
    """Let ``compiled_pays`` consider (and so compile) the compiled kernel in this process."""
    global _allowed
    _allowed = allowed


def is_allowed() -> bool:
    return _allowed


def compiled_pays(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether short bf16 segments with these ``(1, heads, L, dim)`` queries and keys attend fastest with the
    compiled kernel here: allowed, on a CPU, and measured faster (``decide``)."""
    if not _allowed or query.device.type != "cpu":
        return False
    return decide(query.shape[1], key.shape[1], query.shape[3])


def decide(heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether the compiled kernel is allowed and measured faster than flash in bf16 and in fp32 for these head
    shapes; measured once per process and shape (the compilation, then ~50 ms). The trainer calls it at start-up
    so the compilation is timed there, not inside the first step."""
    if not _allowed:
        return False
    shape = (heads, kv_heads, head_dim)
    verdict = _PAYS.get(shape)
    if verdict is None:
        verdict = _PAYS[shape] = measure(*shape)
    return verdict


def measure(
    heads: int,
    kv_heads: int,
    head_dim: int,
    tokens: int = MEASURE_TOKENS,
    runs: int = 5,
    timer: Callable[[], float] = time.perf_counter,
) -> bool:
    """Whether the compiled kernel's forward + backward of one ``tokens``-long bf16 segment beats flash's in bf16
    and in fp32 (best of ``runs`` each, after one untimed run that compiles); False if it fails to compile."""
    generator = torch.Generator().manual_seed(0)

    def sample(h: int) -> torch.Tensor:
        return torch.randn(1, h, tokens, head_dim, generator=generator, dtype=torch.bfloat16).requires_grad_()

    q, k, v = sample(heads), sample(kv_heads), sample(kv_heads)
    grad = torch.ones(1, heads, tokens, head_dim, dtype=torch.bfloat16)
    gqa = heads != kv_heads

    def flash(fp32: bool) -> torch.Tensor:
        dtype = torch.float32 if fp32 else torch.bfloat16
        return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True, enable_gqa=gqa).to(
            torch.bfloat16
        )

    kernels: dict[str, Callable[[], torch.Tensor]] = {
        "flash": lambda: flash(False),
        "flash_fp32": lambda: flash(True),
        "compiled": lambda: attend_compiled(q, k, v, None),
    }
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        try:
            kernels["compiled"]().backward(grad)
        except Exception as error:  # no C++ compiler, an inductor defect: flash it is
            log.warning("compiled attention left out: %s", error)
            return False
        best = dict.fromkeys(kernels, float("inf"))
        for _ in range(runs):
            for name, run in kernels.items():
                started = timer()
                run().backward(grad)
                best[name] = min(best[name], timer() - started)
    return best["compiled"] < min(best["flash"], best["flash_fp32"])
