"""Put a trainable LoRA adapter on a base model, from a ``LoraSpec`` or from a parent adapter, and save it.

Continuous fine-tuning (a job whose ``model`` is an earlier fine-tune) starts the new adapter FROM the
parent adapter's weights, with the parent's rank, alpha and target modules: the new run simply keeps
training the parent's LoRA matrices. The result is still ONE adapter on the ORIGINAL base model, which is
what the inference engine loads (base + one adapter). The other choice, merging the parent into the base
and training a fresh adapter on top, would produce an adapter that only means something on the merged
weights, so every descendant would need its own copy of the base model: not deployable here. The price of
our choice is that a child cannot change the parent's rank or targets (``LoraSpec`` is ignored then, and a
log line says so). This module knows nothing about optimizers, data or the training loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from tunery.training.spec import LoraSpec

# Attention and MLP projections of Llama-like models (Llama, Mistral, Qwen2, SmolLM2, Gemma, Phi-3 ...).
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# What peft writes and the inference engine (and the worker) read.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

log = logging.getLogger(__name__)


class InvalidLoraSettings(ValueError):
    """The job's LoRA settings do not fit its base model (a target module it does not have)."""


def check_target_modules(spec: LoraSpec, model: nn.Module) -> None:
    """Raise ``InvalidLoraSettings`` naming each ``target_modules`` entry that is not a linear layer of ``model``."""
    if spec.target_modules is None:
        return
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [name for name in spec.target_modules if name not in linear]
    if missing:
        raise InvalidLoraSettings(
            f"lora.target_modules: the base model has no linear layer named {', '.join(missing)}; "
            f"its linear layers are {', '.join(sorted(linear - {'lm_head'}))}."
        )


def default_target_modules(model: nn.Module) -> list[str] | str:
    """The Llama projections the model has (all of them must be linear layers), else peft's ``"all-linear"``."""
    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    found = [name for name in LLAMA_TARGET_MODULES if name in linear_names]
    return found if len(found) >= 4 else "all-linear"  # "all-linear" leaves the LM head alone


def lora_config(spec: LoraSpec, model: nn.Module) -> LoraConfig:
    """``LoraSpec`` → ``LoraConfig`` (causal LM, no bias training); ``target_modules=None`` means the default."""
    targets = list(spec.target_modules) if spec.target_modules is not None else default_target_modules(model)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias="none",
    )


def add_adapter(model: PreTrainedModel, spec: LoraSpec, init_adapter_dir: Path | None = None) -> PeftModel:
    """Freeze ``model`` and wrap it with one trainable adapter: a fresh one, or a copy of ``init_adapter_dir``.

    A fresh adapter's ``B`` matrices are zero, so it starts exactly at the base model; its ``A`` matrices are
    drawn from torch's global generator (seed it first for reproducible runs).
    """
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias; nothing for us to change.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        if init_adapter_dir is None:
            check_target_modules(spec, model)
            peft_model = get_peft_model(model, lora_config(spec, model))
        else:
            peft_model = PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)
        parent = peft_model.peft_config["default"]
        wanted = lora_config(spec, model)
        if (parent.r, parent.lora_alpha) != (wanted.r, wanted.lora_alpha) or (
            spec.target_modules is not None and set(spec.target_modules) != set(parent.target_modules or ())
        ):
            log.info(
                "Continuing the parent adapter with its own shape (r=%s, alpha=%s, targets=%s); the job's LoRA "
                "settings apply to new adapters only.",
                parent.r,
                parent.lora_alpha,
                sorted(parent.target_modules or ()),
            )
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"peft returned {type(peft_model).__name__}, not a PeftModel")
    return peft_model


def save_adapter(model: PeftModel, folder: Path, extra_files: Mapping[str, str] | None = None) -> Path:
    """Write the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) to ``folder``, atomically.

    The files (and ``extra_files``: name → text) are written into a temporary folder beside it, then renamed
    into place, replacing an older ``folder``: readers never see half an adapter.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}~", dir=folder.parent))
    try:
        model.save_pretrained(str(staging), selected_adapters=["default"])  # not RFT's frozen reference
        (staging / "README.md").unlink(missing_ok=True)  # peft's model-card stub: not ours to publish
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def replace_dir(staging: Path, target: Path) -> None:
    """Put the folder ``staging`` at ``target`` (same filesystem), moving an existing ``target`` away first."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}~old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
