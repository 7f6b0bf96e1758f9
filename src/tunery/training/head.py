"""The LM head, applied only where a loss is taken, in chunks, without keeping vocabulary-sized logits.

``trained_hidden`` runs the decoder on a packed batch and keeps the hidden states of positions with a target;
``head_loss`` (supervised: summed cross-entropy, its gradient computed on the spot) and ``head_log_probs``
(DPO: each target's log-probability, logits recomputed in backward) apply the LM head to those only. A
vocabulary of 49k makes the logits the largest tensor of a small model's step: these never hold more than
``LOGIT_CHUNK_ELEMENTS`` of them at a time, and never for positions without a target.

Supports Llama-like heads (a bias-free linear layer, no logit soft-capping or scaling).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from peft import PeftModel

from tunery.training.examples import IGNORE_INDEX
from tunery.training.packing import VARLEN_ATTENTION, PackedBatch

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
    with torch.autocast(device_type, enabled=False), torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].detach().to(compute)
            t = targets[start : start + chunk]
            log_probs = torch.log_softmax((h @ w.T).float(), dim=-1)
            loss -= log_probs.gather(1, t[:, None]).sum()
            correct += int((log_probs.argmax(dim=-1) == t).sum())
            if grad_hidden is not None:
                # d(sum CE)/d logits = softmax - one_hot(target), built in place in the log-probs buffer.
                probs = log_probs.exp_()
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad_hidden[start : start + chunk] = (probs.to(compute) @ w).to(hidden.dtype)
    return loss, correct, grad_hidden
