"""Training: turns a fine-tuning spec into LoRA adapters; this ``__init__`` exposes only torch-free parts.

Importing ``tunery.training`` must stay cheap, because the web process imports it (import-linter forbids
torch there): it re-exports the dataset checks (training files and evals files) only. The training loop
lives in submodules that import torch, loaded only by the training subprocess.
"""

from tunery.training.datasets import validate_eval_jsonl, validate_jsonl

__all__ = ["validate_eval_jsonl", "validate_jsonl"]
