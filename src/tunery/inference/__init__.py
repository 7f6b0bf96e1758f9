"""Serving many LoRA adapters over one base model. This ``__init__`` exposes only the torch-free protocol;
``hf_engine`` (transformers + peft) is imported by the edges that build it."""

from tunery.inference.engine import Engine, GenerationChunk, GenerationRequest, SamplingParams

__all__ = ["Engine", "GenerationChunk", "GenerationRequest", "SamplingParams"]
