"""Direct preference optimisation on LoRA: the sigmoid DPO loss, its step and its evaluation.

For a pair (chosen ``c``, rejected ``r``) and the summed log-probabilities of each reply under the policy
(``π``) and the reference (``ρ``)::

    reward_c = beta · (log π(c) - log ρ(c))        reward_r = beta · (log π(r) - log ρ(r))
    loss     = -log sigmoid(reward_c - reward_r)   (Rafailov et al. 2023, eq. 7)

Decisions worth knowing:

* **The reference is the model DPO starts from**, and its log-probabilities are computed once, before the
  first step (``with_reference``), then kept with the pairs (two floats each; saved in the run folder so a
  resumed run uses the same ones). For a fresh job that is the base model with the adapter disabled; for
  SFT-then-DPO it is the supervised fine-tune the adapter continues from, the usual DPO reference. No second
  copy of the weights, and no reference forward pass per step (TRL's default does one per step).
* A step's pairs are packed flat (``packing``: each side its own example, no padding), whole pairs per
  micro-batch so each micro-batch's loss can be backpropagated on its own; the LM head runs only on reply
  tokens (``head.head_log_probs``). Micro-batching never changes the gradient: each micro-batch
  backpropagates its summed pair losses divided by the step's pair count.
* Metrics, per step (``train_``) and on validation pairs (``valid_``, ``full_valid_``): ``loss``,
  ``reward_accuracy`` (share of pairs with reward_c > reward_r; 0 before training, where both are 0),
  ``reward_margin`` (mean reward_c - reward_r), and for training ``chosen_reward``/``rejected_reward``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from torch.nn import functional as F

from tunery.training.head import head_log_probs, head_weight, trained_hidden
from tunery.training.packing import PackedBatch, collate_flat, collate_rows
from tunery.training.preferences import PreferencePair
from tunery.training.progress import REFERENCE_FILE as REFERENCE_FILE  # named here for the loop and tests

if TYPE_CHECKING:
    from tunery.training.loop import Setup

VALID_CHUNK_PAIRS = 32


def pair_groups(pairs: Sequence[PreferencePair], micro_batch_tokens: int) -> Iterator[list[PreferencePair]]:
    """Consecutive whole pairs while their tokens stay ``<= micro_batch_tokens`` (at least one pair each)."""
    group: list[PreferencePair] = []
    tokens = 0
    for pair in pairs:
        if group and tokens + len(pair) > micro_batch_tokens:
            yield group
            group, tokens = [], 0
        group.append(pair)
        tokens += len(pair)
    if group:
        yield group


def collate_pairs(pairs: Sequence[PreferencePair], setup: Setup) -> PackedBatch:
    """Sides in order chosen₀, rejected₀, chosen₁, ...: one flat row, or one padded row per side (``mask``)."""
    sides = [side for pair in pairs for side in (pair.chosen, pair.rejected)]
    batch = collate_flat(sides) if setup.layout == "flat" else collate_rows([[side] for side in sides])
    return batch.to(setup.device)


def sequence_log_probs(model: PeftModel, batch: PackedBatch, amp: torch.dtype | None) -> torch.Tensor:
    """The summed log-probability of each example's trained tokens, in packing order: shape ``(examples,)``."""
    hidden, targets, where = trained_hidden(model, batch, amp)
    token_log_probs = head_log_probs(hidden, head_weight(model), targets, amp)
    owner = torch.full(batch.input_ids.shape, -1, dtype=torch.long)
    index = 0
    for r, lengths in enumerate(batch.segment_lengths):
        start = 0
        for length in lengths:
            owner[r, start : start + length] = index
            start += length
            index += 1
    owner_of_target = owner.reshape(-1).to(where.device).index_select(0, where)
    sums = torch.zeros(index, dtype=torch.float32, device=hidden.device)
    return sums.index_add(0, owner_of_target, token_log_probs)


def dpo_terms(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair (loss, chosen reward, rejected reward) from ``(pairs, 2)`` log-probabilities [chosen, rejected]."""
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    return -F.logsigmoid(chosen - rejected), chosen, rejected


@torch.no_grad()
def with_reference(model: PeftModel, pairs: Sequence[PreferencePair], setup: Setup) -> list[PreferencePair]:
    """The pairs with ``reference`` set: the summed log-probabilities of both replies under ``model`` as it is
    now (dropout off). Called before the first step, so the reference is the model DPO starts from."""
    was_training = model.training
    model.eval()
    out: list[PreferencePair] = []
    for start in range(0, len(pairs), VALID_CHUNK_PAIRS):
        for group in pair_groups(pairs[start : start + VALID_CHUNK_PAIRS], setup.micro_batch_tokens):
            logps = sequence_log_probs(model, collate_pairs(group, setup), setup.amp).view(-1, 2).tolist()
            out.extend(replace(pair, reference=(c, r)) for pair, (c, r) in zip(group, logps, strict=True))
    model.train(was_training)
    return out


def save_reference(path: Path, train: Sequence[PreferencePair], valid: Sequence[PreferencePair]) -> None:
    """Write the reference log-probabilities (atomically) so a resumed run compares against the same model."""
    data = {"train": [p.reference for p in train], "valid": [p.reference for p in valid]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load_reference(
    path: Path, train: Sequence[PreferencePair], valid: Sequence[PreferencePair]
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The pairs with the reference log-probabilities saved by ``save_reference``.

    Raises:
        ValueError: the saved values are for different data.
    """
    data = json.loads(path.read_text())
    if len(data["train"]) != len(train) or len(data["valid"]) != len(valid):
        raise ValueError("The saved reference log-probabilities are for different training or validation data.")
    return (
        [replace(p, reference=tuple(ref)) for p, ref in zip(train, data["train"], strict=True)],
        [replace(p, reference=tuple(ref)) for p, ref in zip(valid, data["valid"], strict=True)],
    )


def dpo_train_step(
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: object,
    pairs: Sequence[PreferencePair],
    setup: Setup,
    beta: float,
    max_grad_norm: float,
) -> tuple[dict[str, float], int]:
    """One optimizer step on ``pairs`` (each with its ``reference``). Returns (train metrics, real tokens)."""
    optimizer.zero_grad(set_to_none=True)
    totals = _Totals()
    for group in pair_groups(pairs, setup.micro_batch_tokens):
        policy = sequence_log_probs(model, collate_pairs(group, setup), setup.amp).view(-1, 2)
        loss, chosen, rejected = dpo_terms(policy, _reference(group, policy.device), beta)
        (loss.sum() / len(pairs)).backward()
        totals.add(loss, chosen, rejected)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()  # type: ignore[attr-defined]
    return totals.metrics(with_rewards=True), sum(len(p) for p in pairs)


@torch.no_grad()
def dpo_evaluate(
    model: PeftModel, pairs: Sequence[PreferencePair], setup: Setup, beta: float
) -> dict[str, float | None]:
    """Loss, reward accuracy and reward margin over ``pairs`` (dropout off)."""
    model.eval()
    totals = _Totals()
    for start in range(0, len(pairs), VALID_CHUNK_PAIRS):
        for group in pair_groups(pairs[start : start + VALID_CHUNK_PAIRS], setup.micro_batch_tokens):
            policy = sequence_log_probs(model, collate_pairs(group, setup), setup.amp).view(-1, 2)
            totals.add(*dpo_terms(policy, _reference(group, policy.device), beta))
    model.train()
    return dict(totals.metrics(with_rewards=False))


def _reference(group: Sequence[PreferencePair], device: torch.device) -> torch.Tensor:
    if any(p.reference is None for p in group):
        raise ValueError("DPO pairs need their reference log-probabilities (training.dpo.with_reference)")
    return torch.tensor([p.reference for p in group], dtype=torch.float32, device=device)


class _Totals:
    """Sums of per-pair values over a step or an evaluation."""

    def __init__(self) -> None:
        self.pairs = 0
        self.loss = 0.0
        self.wins = 0
        self.chosen = 0.0
        self.rejected = 0.0

    def add(self, loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        chosen, rejected = chosen.detach(), rejected.detach()
        self.pairs += loss.shape[0]
        self.loss += float(loss.detach().sum())
        self.wins += int((chosen > rejected).sum())
        self.chosen += float(chosen.sum())
        self.rejected += float(rejected.sum())

    def metrics(self, *, with_rewards: bool) -> dict[str, float]:
        n = max(self.pairs, 1)
        out = {
            "loss": self.loss / n,
            "reward_accuracy": self.wins / n,
            "reward_margin": (self.chosen - self.rejected) / n,
        }
        if with_rewards:
            out |= {"chosen_reward": self.chosen / n, "rejected_reward": self.rejected / n}
        return out
