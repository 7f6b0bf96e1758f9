"""What one training run is told to do (``TrainingSpec``), frozen and JSON round-trippable.

The worker writes ``spec.json`` into the run directory and starts ``python -m tunery.training spec.json``.
Every value is resolved already (no ``"auto"``): the same spec and data give the same loss curve.
No torch here: the services layer builds specs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Method = Literal["supervised", "dpo", "reinforcement"]
Dtype = Literal["auto", "bf16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, slots=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # None: the architecture's default (attention and MLP projections of Llama-like models).
    target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    """One run: base model + data + resolved hyperparameters -> adapter checkpoints under ``run_dir``."""

    job_id: str
    run_dir: str  # progress.jsonl, control.json, checkpoints/, state/, adapter/ live here
    base_model_dir: str  # a Hugging Face folder with weights and tokenizer
    train_file: str  # JSONL on local disk (the worker copies it out of the blob store)
    validation_file: str | None
    method: Method
    n_epochs: int
    batch_size: int  # examples per optimizer step (gradient accumulation honours it)
    learning_rate: float  # absolute peak learning rate (base LoRA rate × the user's multiplier)
    seed: int
    lora: LoraSpec = field(default_factory=LoraSpec)
    init_adapter_dir: str | None = None  # continuous fine-tuning: start from this adapter
    resume_from: str | None = None  # a state/ folder written at a pause or checkpoint
    max_seq_len: int = 2048
    metrics_every: int = 10  # emit a metrics event (with a validation batch) every N steps
    keep_checkpoints: int = 3
    dpo_beta: float = 0.1
    dtype: Dtype = "auto"
    device: Device = "auto"
    num_threads: int | None = None
    warmup_ratio: float = 0.0
    # Stop once the full validation loss (each epoch end) has not improved by more than min_delta for this many
    # epochs; the best checkpoint becomes the model. None: run every epoch.
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.001
    precision_cache: str | None = None  # where dtype "auto" keeps this machine's measured fp32/bf16 verdict
    # reinforcement (GRPO, training.rft): the grader as the user gave it, and the sampling/loss settings
    grader: dict[str, Any] | None = None
    rft_group_size: int = 4  # answers sampled per prompt in a step
    rft_eval_samples: int = 5  # answers sampled per validation prompt in an evaluation
    rft_eval_interval: int = 1  # steps between evaluations on the whole validation file
    rft_max_new_tokens: int = 256
    rft_temperature: float = 1.0
    rft_kl_beta: float = 0.04
    rft_clip_epsilon: float = 0.2
    rft_lean_sampling: bool = True  # sample with the inference engine's lean forward where it can run the model
    rft_parse_json: bool = True  # response_format given (or not): the grader sees output_json when it parses
    # response_format's JSON schema: sampling is constrained to it; an answer still not matching it scores 0
    rft_response_schema: dict[str, Any] | None = None
    # model graders (score_model, label_model) ask the worker's judge relay (services.judge_relay) here
    judge_url: str | None = None
    judge_token: str | None = None
    grader_concurrency: int = 4
    processes: int = 1  # data-parallel ranks under torchrun (``training.distributed``); 0: one per GPU

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        data: dict[str, Any] = json.loads(text)
        lora = data.pop("lora", {}) or {}
        if lora.get("target_modules") is not None:
            lora["target_modules"] = tuple(lora["target_modules"])
        return cls(lora=LoraSpec(**lora), **data)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> TrainingSpec:
        return cls.from_json(path.read_text())

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)
