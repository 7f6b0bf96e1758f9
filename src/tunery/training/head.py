"""The LM head, applied only where a loss is taken, in chunks, without keeping vocabulary-sized logits.

``trained_hidden`` runs the decoder on a packed batch and keeps the hidden states of positions with a target;
``head_loss`` (supervised: summed cross-entropy, its gradient computed on the spot) and ``head_log_probs``
(DPO: each target's log-probability, logits recomputed in backward) apply the LM head to those only. A
vocabulary of 49k makes the logits the largest tensor of a small model's step: these never hold more than
``LOGIT_CHUNK_ELEMENTS`` of them at a time, and never for positions without a target. Where the trainer may
compile (``segment_attention.allow_compiled``: long bf16 runs on a CPU), a supervised chunk's vocabulary-wide
passes (log-sum-exp, pick, argmax, softmax minus one-hot, cast) are fused by ``torch.compile`` around its two
matmuls; eager otherwise, or if compiling fails.

Supports Llama-like heads (a bias-free linear layer, no logit soft-capping or scaling).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from peft import PeftModel

from tunery.training.examples import IGNORE_INDEX
from tunery.training.packing import VARLEN_ATTENTION, PackedBatch
from tunery.training.segment_attention import is_allowed

log = logging.getLogger(__name__)

LOGIT_CHUNK_ELEMENTS = 1 << 24  # positions × vocabulary per LM-head chunk (64 MiB of fp32 logits)


def trained_hidden(
    model: PeftModel, batch: PackedBatch, amp: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the decoder on ``batch``; return (hidden states, targets, flat indices) of the positions with a target.

    Raises:
        ValueError: a flat batch for a model that does not use ``packing.varlen_attention`` (its examples
            would see each other).
    """
    causal_lm = model.get_base_model()
    flat: dict[str, Any] = {}
    if batch.attention_mask is None:
        if causal_lm.config._attn_implementation != VARLEN_ATTENTION:
            raise ValueError("A flat batch needs the model switched to varlen attention (packing.use_varlen_attention)")
        flat["segment_lengths"] = batch.segment_lengths[0]
        if batch.segment_masks is not None:
            flat["segment_masks"] = batch.segment_masks
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=amp) if amp is not None else nullcontext():
        hidden = causal_lm.get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **flat,
        ).last_hidden_state
    flat_targets = batch.targets.reshape(-1)
    where = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where)
    return selected, flat_targets.index_select(0, where), where


def head_weight(model: PeftModel) -> torch.Tensor:
    weight: torch.Tensor = model.get_base_model().get_output_embeddings().weight
    return weight


def batch_loss(model: PeftModel, batch: PackedBatch, amp: torch.dtype | None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's targets, and how many targets the argmax gets right."""
    hidden, targets, _ = trained_hidden(model, batch, amp)
    return head_loss(hidden, head_weight(model), targets, amp)


def head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, amp: torch.dtype | None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets`` and the argmax hits, chunk by chunk.

    ``weight`` (the LM head) is frozen; the gradient with respect to ``hidden`` is computed in the forward pass.
    """
    chunk = max(1, LOGIT_CHUNK_ELEMENTS // weight.shape[0])
    if hidden.requires_grad and torch.is_grad_enabled():
        loss, correct = _HeadLoss.apply(hidden, weight, targets, chunk, amp)
        return loss, int(correct)
    loss, correct, _ = _head_chunks(hidden, weight, targets, chunk, amp, with_grad=False)
    return loss, correct


def head_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, amp: torch.dtype | None
) -> torch.Tensor:
    """``log softmax(hidden @ weight.T)[i, targets[i]]`` for every position ``i``, in fp32, chunk by chunk.

    Differentiable with respect to ``hidden``: backward recomputes each chunk's logits (one more head matmul)
    rather than keeping them, since the upstream gradient per position is only known then.
    """
    chunk = max(1, LOGIT_CHUNK_ELEMENTS // weight.shape[0])
    if hidden.requires_grad and torch.is_grad_enabled():
        out: torch.Tensor = _HeadLogProbs.apply(hidden, weight, targets, chunk, amp)
        return out
    return _log_prob_chunks(hidden, weight, targets, chunk, amp)


class _HeadLoss(torch.autograd.Function):
    """Fused LM head + cross-entropy: saves ``d loss / d hidden`` (positions × hidden) instead of the logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, amp: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, correct, grad_hidden = _head_chunks(hidden, weight, targets, chunk, amp, with_grad=True)
        ctx.save_for_backward(grad_hidden)
        correct_t = torch.tensor(correct)
        ctx.mark_non_differentiable(correct_t)
        return loss, correct_t

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, ...]:  # type: ignore[override]
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss, None, None, None, None


class _HeadLogProbs(torch.autograd.Function):
    """Per-position target log-probabilities; backward: ``g_i · (one_hot(target_i) - softmax_i) @ weight``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, amp: Any
    ) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk, ctx.amp = chunk, amp
        return _log_prob_chunks(hidden, weight, targets, chunk, amp)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, targets = ctx.saved_tensors
        compute = ctx.amp or torch.float32
        w = weight.detach().to(compute)
        grad_hidden = torch.empty_like(hidden)
        with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
            for start in range(0, hidden.shape[0], ctx.chunk):
                h = hidden[start : start + ctx.chunk].detach().to(compute)
                t = targets[start : start + ctx.chunk]
                probs = torch.softmax((h @ w.T).float(), dim=-1)
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0  # softmax - one_hot = -d logp / d logits
                probs *= -grad_out[start : start + ctx.chunk, None]
                grad_hidden[start : start + ctx.chunk] = (probs.to(compute) @ w).to(hidden.dtype)
        return grad_hidden, None, None, None, None


def _log_prob_chunks(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, amp: torch.dtype | None
) -> torch.Tensor:
    compute = amp or torch.float32
    w = weight.detach().to(compute)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].detach().to(compute)
            t = targets[start : start + chunk]
            log_probs = torch.log_softmax((h @ w.T).float(), dim=-1)
            out[start : start + chunk] = log_probs.gather(1, t[:, None]).squeeze(1)
    return out


def _head_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    amp: torch.dtype | None,
    *,
    with_grad: bool,
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    compute = amp or torch.float32
    w = weight.detach().to(compute)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = 0
    grad_hidden = torch.empty_like(hidden) if with_grad else None
    device_type = hidden.device.type
    fused = _fused_chunk() if grad_hidden is not None and compute == torch.bfloat16 and device_type == "cpu" else None
    with torch.autocast(device_type, enabled=False), torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].detach().to(compute)
            t = targets[start : start + chunk]
            if fused is not None and grad_hidden is not None:
                chunk_loss, chunk_correct, chunk_grad = fused(h, w, t)
                loss += chunk_loss
                correct += int(chunk_correct)
                grad_hidden[start : start + chunk] = chunk_grad.to(hidden.dtype)
                continue
            log_probs = torch.log_softmax((h @ w.T).float(), dim=-1)
            loss -= log_probs.gather(1, t[:, None]).sum()
            correct += int((log_probs.argmax(dim=-1) == t).sum())
            if grad_hidden is not None:
                # d(sum CE)/d logits = softmax - one_hot(target), built in place in the log-probs buffer.
                probs = log_probs.exp_()
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad_hidden[start : start + chunk] = (probs.to(compute) @ w).to(hidden.dtype)
    return loss, correct, grad_hidden


def _loss_and_grad_chunk(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's summed cross-entropy, argmax hits and ``d loss / d h``, written for inductor to fuse the
    vocabulary-wide passes (log-sum-exp, pick, argmax, softmax minus one-hot, cast) around the two matmuls."""
    logits = (h @ w.T).float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    loss = (lse.squeeze(1) - logits.gather(1, t[:, None]).squeeze(1)).sum()
    correct = (logits.argmax(dim=-1) == t).sum()
    vocabulary = torch.arange(logits.shape[1], device=logits.device)
    probs = torch.exp(logits - lse) - (vocabulary[None, :] == t[:, None]).float()
    return loss, correct, probs.to(h.dtype) @ w


_compiled_chunk: Callable[..., Any] = torch.compile(_loss_and_grad_chunk, dynamic=True)
_chunk_failed = False


def _fused_chunk() -> Callable[..., Any] | None:
    """The compiled chunk where this trainer may compile (``segment_attention.allow_compiled``, the same permission
    as the attention kernel's: long bf16 runs on a CPU) and compiling has not failed; else None (eager)."""
    if not is_allowed() or _chunk_failed:
        return None
    return _guarded_chunk


def prepare_fused(weight: torch.Tensor) -> None:
    """Compile the fused chunk now (on a few dummy rows against the real head), if this trainer may compile, so
    the first step does not pay for it."""
    fused = _fused_chunk()
    if fused is None or weight.device.type != "cpu":
        return
    w = weight.detach().to(torch.bfloat16)
    with torch.no_grad():
        fused(torch.zeros(8, w.shape[1], dtype=torch.bfloat16), w, torch.zeros(8, dtype=torch.long))


def _guarded_chunk(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    global _chunk_failed
    try:
        result: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = _compiled_chunk(h, w, t)
    except Exception as error:  # no C++ compiler, an inductor defect: eager from now on
        _chunk_failed = True
        log.warning("compiled LM-head chunk left out: %s", error)
        return _loss_and_grad_chunk(h, w, t)
    return result
