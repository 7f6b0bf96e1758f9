"""Sampling RFT answers with the inference engine's lean forward: a frozen copy of the base model, the policy's
live LoRA weights applied as a batched adapter.

Why: sampling is most of a GRPO step on a CPU, and the trainer's own ``PeftModel`` decodes through the generic
``transformers`` forward — thousands of operators per token, and under bf16 autocast every frozen fp32 weight
is cast again at every step (autocast caches casts of trainable leaves only). The engine's ``LeanLlama`` runs
the same mathematics in a few fused operators per layer over a ``SlotKVCache``; here it runs on a copy of the
base model loaded once in the sampling dtype (bf16 where the run trains in bf16 autocast, else fp32: the
weights a forward reads are the base weights, cast once instead of at every token), and the adapter being
trained is read from the peft modules before each sampling round (``policy_adapter``: ``A`` and ``B·scaling``
in the sampling dtype, a few MB), so the answers come from the current policy.

Rows repeating the same prompt (a GRPO group) are prefilled once: the prompt's keys and values are copied to
the other rows' slots (``SlotKVCache.move_rows``) and its last logits shared, each row then drawing its own
tokens. Draws use torch's global generator (``rollouts.draw``), as ``rollouts.sample_completions`` does.

The log-probabilities the loss needs are always recomputed by the training forward; only the choice of
tokens comes from here, as with any separate generation engine (vLLM in TRL). ``LeanSampler.build`` returns
None where ``LeanLlama`` cannot run the model (another architecture) and ``policy_adapter`` None for an
adapter it cannot express (DoRA...): the caller then samples with ``rollouts.sample_completions``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from tunery.inference.adapters import LoraAdapter, LoraModule
from tunery.inference.kv_cache import SlotKVCache
from tunery.inference.lean_llama import LeanLlama
from tunery.training.rollouts import DEFAULT_MAX_ROWS, Completion, draw

if TYPE_CHECKING:
    from tunery.training.constrained import SchemaConstraint

log = logging.getLogger(__name__)

POLICY = "default"  # the peft adapter being trained
PEFT_PREFIX = "base_model.model."
MAX_PREFILL_TOKENS = 4096  # padded prompt tokens per prefill pass (bounds the activations of a long prompt)


class LeanSampler:
    """Batched sampling for GRPO on a lean copy of the base model (see the module docstring)."""

    def __init__(self, lean: LeanLlama, dtype: torch.dtype, device: torch.device) -> None:
        self.lean = lean
        self.dtype = dtype
        self.device = device

    @classmethod
    def build(cls, base_model_dir: Path, dtype: torch.dtype, device: torch.device) -> LeanSampler | None:
        """Load the base model again in ``dtype`` and build its lean forward; None when it cannot run it."""
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
        model.to(device).eval()
        model.requires_grad_(False)
        lean = LeanLlama.build(model)
        if lean is None:
            return None
        log.info("RFT sampling uses the lean forward in %s", dtype)
        return cls(lean, dtype, device)

    def policy_adapter(self, model: PeftModel) -> LoraAdapter | None:
        """The trained adapter's current weights as the engine's ``LoraAdapter``; None if it is not plain LoRA."""
        modules: dict[str, LoraModule] = {}
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or POLICY not in module.lora_A:
                continue
            if module.use_dora.get(POLICY) or getattr(module, "fan_in_fan_out", False):
                return None
            a = module.lora_A[POLICY].weight.detach()  # [r, in]
            b = module.lora_B[POLICY].weight.detach()  # [out, r]
            scale = float(module.scaling[POLICY])
            key = name.removeprefix(PEFT_PREFIX)
            modules[key] = LoraModule(
                a=a.t().to(self.device, self.dtype).contiguous(),
                b=(b.t() * scale).to(self.device, self.dtype).contiguous(),
            )
        return LoraAdapter(name=POLICY, path=Path(), modules=modules)

    @torch.no_grad()
    def sample(
        self,
        model: PeftModel,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        temperature: float = 1.0,
        max_rows: int = DEFAULT_MAX_ROWS,
        constraint: SchemaConstraint | None = None,
    ) -> list[Completion] | None:
        """One sampled completion per prompt (repeat a prompt for several), in order; None if the policy's
        adapter cannot run here (sample another way). With ``constraint``, each row is drawn inside the JSON
        schema (``training.constrained``)."""
        adapter = self.policy_adapter(model)
        if adapter is None:
            return None
        out: list[Completion] = []
        for start in range(0, len(prompts), max_rows):
            chunk = prompts[start : start + max_rows]
            out.extend(self._sample_chunk(adapter, chunk, max_new_tokens, stop_ids, temperature, constraint))
        return out

    def _sample_chunk(
        self,
        adapter: LoraAdapter,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_ids: Sequence[int],
        temperature: float,
        constraint: SchemaConstraint | None = None,
    ) -> list[Completion]:
        rows = len(prompts)
        lengths = [len(p) for p in prompts]
        cache = SlotKVCache(self.lean.num_layers, rows, capacity=max(lengths) + max_new_tokens + 1)
        logits = self._prefill(adapter, prompts, cache)
        plan = self.lean.plan([adapter] * rows, 1)
        assert plan is not None
        columns = torch.arange(cache.capacity, device=self.device)
        positions = torch.tensor(lengths, device=self.device)[:, None]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        stop_set = set(stop_ids)
        constrained = constraint.rows(rows) if constraint is not None else None
        for step in range(max_new_tokens):
            chosen = draw(logits if constrained is None else constrained.mask(logits, done), temperature)
            for i, token in enumerate(chosen.tolist()):
                if not done[i]:
                    tokens[i].append(token)
                    if constrained is not None:
                        constrained.accept(i, token)
                    done[i] = token in stop_set
            if all(done) or step == max_new_tokens - 1:
                break
            length = int(positions.max()) + 1
            allowed = columns[:length][None, :] <= positions
            logits = self.lean.forward(chosen[:, None], positions, positions, allowed[:, None], cache, 0, plan)
            positions = positions + 1
        return [Completion(tokens=t, finished=bool(t) and t[-1] in stop_set) for t in tokens]

    def _prefill(self, adapter: LoraAdapter, prompts: Sequence[Sequence[int]], cache: SlotKVCache) -> torch.Tensor:
        """Read every distinct run of equal prompts once (rows in consecutive slots); returns each row's logits."""
        run_of: list[int] = []  # each row's run of equal prompts (= the slot its prompt is prefilled in)
        unique: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            if i == 0 or list(prompt) != unique[-1]:
                unique.append(list(prompt))
            run_of.append(len(unique) - 1)
        first_logits: list[torch.Tensor] = []
        # Prefill the distinct prompts into slots 0..len(unique)-1, in passes of bounded padded size.
        start = 0
        while start < len(unique):
            end = start + 1
            while end < len(unique) and (end + 1 - start) * max(len(p) for p in unique[start : end + 1]) <= (
                MAX_PREFILL_TOKENS
            ):
                end += 1
            first_logits.append(self._prefill_pass(adapter, unique[start:end], cache, start))
            start = end
        logits = torch.cat(first_logits)
        # Copy each run's keys and values from its prefill slot to its rows' slots (move_rows reads every source
        # before writing any target, so a slot may be both).
        cache.move_rows([(run, row, len(prompts[row])) for row, run in enumerate(run_of) if run != row])
        return logits[torch.tensor(run_of, device=self.device)]

    def _prefill_pass(
        self, adapter: LoraAdapter, prompts: list[list[int]], cache: SlotKVCache, first_slot: int
    ) -> torch.Tensor:
        rows, width = len(prompts), max(len(p) for p in prompts)
        scratch = cache.scratch_column
        ids = torch.zeros((rows, width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        columns = torch.full((rows, width), scratch, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            span = torch.arange(len(prompt))
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            positions[i, width - len(prompt) :] = span
            columns[i, width - len(prompt) :] = span
        # Query j sees the columns up to its own; a padding query sees column 0 only (never an empty mask row).
        limit = torch.where(columns == scratch, 0, columns)
        allowed = torch.arange(width)[None, None, :] <= limit[:, :, None]
        plan = self.lean.plan([adapter] * rows, width)
        assert plan is not None
        return self.lean.forward(
            ids.to(self.device), positions.to(self.device), columns.to(self.device), allowed.to(self.device),
            cache, first_slot, plan,
        )  # fmt: skip
