"""Sampling answers for reinforcement fine-tuning: many prompts at once, one forward pass per new token.

``sample_completions`` left-pads the prompts into one batch, prefills them together into the inference
engine's ``PaddedKVCache`` (``inference.kv_cache``: preallocated, right-aligned rows, a slice copy per step)
and then decodes every row with one forward pass per token, drawing all rows' tokens with one vectorised
temperature draw from torch's global generator (so a resumed run, which restores that generator, samples
the same answers). A row stops at an end-of-turn id; the batch stops when every row has stopped or
``max_new_tokens`` is reached. Rows are sampled ``max_rows`` at a time, which bounds the cache's memory.

Why not ``inference.batching``: its scheduler serves independent streaming requests through the multi-LoRA
engine in its own thread; here the rows are known up front, the model is the trainer's own ``PeftModel``
(adapter being trained, varlen attention) and nothing streams. What is shared is the hard part: the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from peft import PeftModel

from tunery.inference.kv_cache import PaddedKVCache

if TYPE_CHECKING:
    from tunery.training.constrained import SchemaConstraint

DEFAULT_MAX_ROWS = 64  # rows decoded together (cache memory: rows × (prompt + answer) × layers × kv width)


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled answer: its token ids (the end-of-turn token included when it stopped) and why it ended."""

    tokens: list[int]
    finished: bool  # True: it ended with an end-of-turn token; False: it hit max_new_tokens


@torch.no_grad()
def sample_completions(
    model: PeftModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    temperature: float = 1.0,
    amp: torch.dtype | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    constraint: SchemaConstraint | None = None,
) -> list[Completion]:
    """One sampled completion per prompt (repeat a prompt to get several), in order; dropout is off meanwhile.
    With ``constraint``, each row is drawn inside the JSON schema (``training.constrained``)."""
    was_training = model.training
    model.eval()
    try:
        out: list[Completion] = []
        for start in range(0, len(prompts), max_rows):
            out.extend(
                _sample_chunk(
                    model, prompts[start : start + max_rows], max_new_tokens, stop_ids, temperature, amp, constraint
                )
            )
        return out
    finally:
        model.train(was_training)


def _sample_chunk(
    model: PeftModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    temperature: float,
    amp: torch.dtype | None,
    constraint: SchemaConstraint | None,
) -> list[Completion]:
    device = next(model.parameters()).device
    rows = len(prompts)
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    pads = [width - n for n in lengths]
    ids = torch.zeros((rows, width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, pads[i] :] = torch.tensor(list(prompt), dtype=torch.long)
    pad_t = torch.tensor(pads)
    columns = torch.arange(width)
    positions = (columns[None, :] - pad_t[:, None]).clamp(min=0)
    causal = columns[None, :] <= columns[:, None]
    real = columns[None, :] >= pad_t[:, None]
    # A padding query attends to itself only, so no row of the mask is empty (that would give NaN).
    mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
    num_layers = model.get_base_model().config.num_hidden_layers
    cache = PaddedKVCache(num_layers, pads, width + max_new_tokens)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    with autocast:
        output = model(
            input_ids=ids.to(device),
            attention_mask=mask[:, None].to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    tokens: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    stop_set = set(stop_ids)
    next_positions = torch.tensor(lengths, device=device)
    constrained = constraint.rows(rows) if constraint is not None else None
    for step in range(max_new_tokens):
        logits = output.logits[:, -1]
        chosen = draw(logits if constrained is None else constrained.mask(logits, done), temperature)
        for i, token in enumerate(chosen.tolist()):
            if not done[i]:
                tokens[i].append(token)
                if constrained is not None:
                    constrained.accept(i, token)
                done[i] = token in stop_set
        if all(done) or step == max_new_tokens - 1:
            break
        with autocast:
            output = model(
                input_ids=chosen[:, None],
                attention_mask=cache.decode_mask(device),
                position_ids=next_positions[:, None],
                cache=cache,
                use_cache=True,
            )
        next_positions = next_positions + 1
    return [Completion(tokens=t, finished=bool(t) and t[-1] in stop_set) for t in tokens]


def draw(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(1)
