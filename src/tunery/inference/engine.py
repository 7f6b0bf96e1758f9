"""The inference engine's contract: requests in, streamed token chunks out. No torch here.

The chat service renders messages with the base model's chat template (``catalog.ChatTokenizer``) and
hands the engine token ids; the engine batches requests for different adapters (and the base) together
and streams each request's new text back as it is decoded. Backends: ``hf_engine.HFEngine``
(transformers + peft, CPU or GPU); a vLLM backend with LoRA can implement the same protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings; the engine also stops at the tokenizer's end-of-turn ids
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion to produce. ``adapter_dir`` None means the bare base model."""

    base_model: str  # a catalog name; the engine loads its weights once
    prompt_ids: list[int]
    params: SamplingParams
    adapter_dir: str | None = None  # a local folder with adapter_config.json + adapter_model.safetensors
    adapter_name: str | None = None  # a stable name for caching (the model or checkpoint name)
    request_id: str = ""
    stop_token_ids: tuple[int, ...] = ()
    # Set when the caller is gone: the row leaves the batch at the next step and the stream ends at once.
    cancel: threading.Event | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """New text since the last chunk. The last chunk has ``finish_reason`` and the token counts."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine(Protocol):
    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        """Stream one request's output. Thread-safe: many callers at once share batched forward passes."""
        ...

    def active_rows(self) -> int:
        """Requests being generated or waiting to be (a cancelled one stops counting at the next step)."""
        ...

    def generated_tokens(self) -> int:
        """Tokens sampled since the engine started, over every request (a serving metric)."""
        ...

    def close(self) -> None:
        """Stop background work and free the model."""
        ...


def adapters_status(memory: dict[str, Any] | None) -> dict[str, Any] | None:
    """``/health``'s view of ``HFEngine.adapter_memory()``: per base model, adapters loaded and MiB vs budget."""
    if memory is None:
        return None
    mib = 2**20
    shown: dict[str, Any] = {}
    for model, usage in memory.items():
        budget = usage.get("budget_bytes")
        shown[model] = {
            **usage,
            "loaded_mb": round(usage.get("loaded_bytes", 0) / mib, 1),
            "budget_mb": round(budget / mib, 1) if budget else None,
        }
    return shown
