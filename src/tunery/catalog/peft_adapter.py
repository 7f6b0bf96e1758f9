"""A PEFT LoRA folder read without torch: its config, its A/B pairs, and the check against a base model.

Export uses it to merge or convert an adapter tensor by tensor; import uses ``check_against_base`` to refuse
an adapter that does not fit (another architecture, unknown target modules, ranks or shapes that differ,
a corrupt file) with a message naming what is wrong. It does not serve adapters (``inference.adapters``
does, with torch) and does not know where adapters are stored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunery.catalog.safetensors_stream import SafetensorsError, SafetensorsReader, TensorInfo

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_UNSUPPORTED_FLAGS = ("use_dora", "lora_bias", "use_qalora", "fan_in_fan_out")
_UNSUPPORTED_VALUES = ("modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices")
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


class AdapterProblem(ValueError):
    """The adapter cannot be used as it is; ``str()`` says why, naming the file, module or value."""


@dataclass(frozen=True, slots=True)
class LoraPair:
    module: str  # as named in the base model: model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    rank: int
    alpha: float
    use_rslora: bool

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def base_weight(self) -> str:
        return f"{self.module}.weight"


class PeftAdapter:
    """An opened adapter folder; close it (or use ``with``) to release the mapped weights file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = read_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise AdapterProblem(f"{WEIGHTS_FILE} is missing from the adapter folder.")
        try:
            self.reader = SafetensorsReader(weights)
        except SafetensorsError as exc:
            raise AdapterProblem(f"{WEIGHTS_FILE} is not a valid safetensors file: {exc}.") from None
        try:
            self.pairs = self._pairs()
        except BaseException:
            self.reader.close()
            raise

    def __enter__(self) -> PeftAdapter:
        return self

    def __exit__(self, *_: object) -> None:
        self.reader.close()

    def close(self) -> None:
        self.reader.close()

    @property
    def base_model_id(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")

    def a(self, pair: LoraPair) -> np.ndarray:
        return self.reader.array(pair.a_key).astype(np.float32, copy=False)

    def b(self, pair: LoraPair) -> np.ndarray:
        return self.reader.array(pair.b_key).astype(np.float32, copy=False)

    def delta(self, pair: LoraPair) -> np.ndarray:
        """``scale * B @ A``: what merging adds to the base weight (``[out, in]``, float32)."""
        return (self.b(pair) * np.float32(pair.scale)) @ self.a(pair)

    def _pairs(self) -> dict[str, LoraPair]:
        parts: dict[str, dict[str, TensorInfo]] = {}
        for name, info in self.reader.tensors.items():
            match = _KEY_RE.match(name)
            if match is None:
                raise AdapterProblem(
                    f"{WEIGHTS_FILE} holds '{name}', which is not a LoRA A/B matrix; only plain LoRA on linear "
                    "layers is supported (no DoRA, embedding LoRA or fully trained modules)."
                )
            parts.setdefault(match["module"], {})[match["part"]] = info
        if not parts:
            raise AdapterProblem(f"{WEIGHTS_FILE} holds no LoRA weights.")
        alpha = float(self.config.get("lora_alpha", self.config.get("r", 8)))
        alpha_pattern: Mapping[str, Any] = self.config.get("alpha_pattern") or {}
        rank_pattern: Mapping[str, Any] = self.config.get("rank_pattern") or {}
        rslora = bool(self.config.get("use_rslora", False))
        pairs: dict[str, LoraPair] = {}
        for module, found in sorted(parts.items()):
            if set(found) != {"A", "B"}:
                raise AdapterProblem(f"Module '{module}' has only lora_{''.join(found)}, not both A and B.")
            a, b = found["A"], found["B"]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise AdapterProblem(
                    f"Module '{module}': lora_A {list(a.shape)} and lora_B {list(b.shape)} are not a rank-r pair."
                )
            rank = a.shape[0]
            key = _pattern_key(rank_pattern, module)
            declared = int(rank_pattern[key]) if key else int(self.config.get("r", rank))
            if declared != rank:
                raise AdapterProblem(
                    f"Module '{module}' has rank {rank} in {WEIGHTS_FILE} but adapter_config.json says r={declared}."
                )
            key = _pattern_key(alpha_pattern, module)
            pairs[module] = LoraPair(
                module=module, a_key=a.name, b_key=b.name, rank=rank,
                alpha=float(alpha_pattern[key]) if key else alpha, use_rslora=rslora,
            )  # fmt: skip
        return pairs


def read_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json``, checked to describe plain LoRA. Raises AdapterProblem."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterProblem(f"{CONFIG_FILE} is missing from the adapter folder.") from None
    except (OSError, ValueError) as exc:
        raise AdapterProblem(f"{CONFIG_FILE} is not valid JSON: {exc}.") from None
    if not isinstance(config, dict):
        raise AdapterProblem(f"{CONFIG_FILE} is not a JSON object.")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterProblem(f"It is a {peft_type} adapter ({CONFIG_FILE} peft_type); only LoRA is supported.")
    for flag in _UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise AdapterProblem(f"{CONFIG_FILE} sets '{flag}'; only plain LoRA adapters are supported.")
    for option in _UNSUPPORTED_VALUES:
        if config.get(option):
            raise AdapterProblem(f"{CONFIG_FILE} sets '{option}'; only plain LoRA adapters are supported.")
    if config.get("bias", "none") != "none":
        raise AdapterProblem(f"{CONFIG_FILE} trains biases (bias={config['bias']!r}); only plain LoRA is supported.")
    return config


def check_against_base(adapter: PeftAdapter, base: Mapping[str, TensorInfo], base_name: str) -> None:
    """Refuse an adapter whose modules or shapes do not fit the base model's weights.

    Raises:
        AdapterProblem: a target module is not a linear layer of ``base_name``, or its shapes differ.
    """
    targets = adapter.config.get("target_modules")
    if isinstance(targets, list):
        leaves = {name.rsplit(".", 2)[-2] for name in base if name.endswith(".weight") and "." in name}
        unknown = sorted(t for t in targets if t not in leaves and not any(n.endswith(f".{t}.weight") for n in base))
        if unknown:
            raise AdapterProblem(
                f"target_modules {unknown} in {CONFIG_FILE} are not layers of the base model '{base_name}'; "
                "the adapter was trained for another architecture."
            )
    for pair in adapter.pairs.values():
        weight = base.get(pair.base_weight)
        if weight is None or len(weight.shape) != 2:
            raise AdapterProblem(
                f"Module '{pair.module}' is not a linear layer of the base model '{base_name}'; the adapter was "
                "trained for another architecture."
            )
        out_features, in_features = weight.shape
        a_shape = adapter.reader.tensors[pair.a_key].shape
        b_shape = adapter.reader.tensors[pair.b_key].shape
        if a_shape != (pair.rank, in_features) or b_shape != (out_features, pair.rank):
            raise AdapterProblem(
                f"Module '{pair.module}' has LoRA shapes A {list(a_shape)} / B {list(b_shape)}, which do not fit "
                f"the base model '{base_name}' layer of {in_features}->{out_features}; the adapter was trained "
                "for a model of another size."
            )


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The pattern key that applies to ``module``, matched the way peft matches it."""
    return next((key for key in patterns if re.match(rf"(.*\.)?({key})$", module)), None)
