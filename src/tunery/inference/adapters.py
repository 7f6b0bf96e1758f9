"""LoRA adapters for serving: read a peft adapter folder into plain tensors, and keep an LRU of loaded ones.

``load_lora_adapter`` turns ``adapter_config.json`` + ``adapter_model.safetensors`` (as peft's
``save_pretrained`` writes them) into per-module ``A`` and ``B`` matrices, with the LoRA scale folded into ``B``,
after checking every module against the base model. It does not use peft: serving needs only the matrices,
which ``multi_lora`` applies to many adapters in one forward pass. Adapters that are more than LoRA on linear
layers (DoRA, ``modules_to_save``, trained biases, embedding LoRA) are refused with a clear error rather than
served wrongly.

``AdapterCache`` bounds the memory the loaded adapters of a base model take (bytes of their tensors, each
adapter's size read from its file header before it is loaded); it does not schedule requests.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tunery.inference.errors import AdapterLoadError, AdapterLoadTimeout, AdapterTooLarge

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"

# Set in adapter_config.json, these change what a LoRA computes beyond x·A·B·scale, so they are refused.
_UNSUPPORTED_FLAGS = ("use_dora", "lora_bias", "use_qalora", "use_bdlora", "fan_in_fan_out")
_UNSUPPORTED_VALUES = (
    "modules_to_save",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "alora_invocation_tokens",
)
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_uids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class LoraModule:
    """One adapted linear layer: ``delta(x) = (x @ a) @ b`` with ``a`` ``[in, r]`` and ``b`` ``[r, out]`` (scaled)."""

    a: torch.Tensor
    b: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.a.shape[1])


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A loaded adapter: its matrices by module name (as ``model.named_modules()`` names them)."""

    name: str
    path: Path
    modules: Mapping[str, LoraModule]
    uid: int = field(default_factory=lambda: next(_uids))

    @property
    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())


def load_lora_adapter(
    path: Path,
    *,
    name: str,
    linear_shapes: Mapping[str, tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device,
) -> LoraAdapter:
    """Read a peft LoRA folder and check it against the base model's linear layers.

    Args:
        path: the folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        name: the adapter's name, for messages.
        linear_shapes: ``(in_features, out_features)`` of every ``nn.Linear`` of the base model, by module name.
        dtype: the base model's dtype; the matrices are converted to it.
        device: where the base model is.

    Raises:
        AdapterLoadError: the folder or a file is missing or unreadable, the adapter is not plain LoRA, or a
            module is not a linear layer of the base model (or has other shapes): it was trained for another
            model.
    """
    where = f"Adapter '{name}' ({path})"
    config = _read_config(path, where)
    tensors = _read_weights(path, where)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY_RE.match(key)
        if match is None:
            raise AdapterLoadError(
                f"{where}: weight '{key}' is not a LoRA A/B matrix of a linear layer; only plain LoRA on linear "
                "layers can be served (no DoRA, embedding LoRA or fully trained modules)."
            )
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    if not pairs:
        raise AdapterLoadError(f"{where}: {WEIGHTS_FILE} holds no LoRA weights.")

    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    alpha_pattern: Mapping[str, float] = config.get("alpha_pattern") or {}
    use_rslora = bool(config.get("use_rslora", False))
    modules: dict[str, LoraModule] = {}
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise AdapterLoadError(f"{where}: module '{module}' has only lora_{''.join(parts)}, not both A and B.")
        shape = linear_shapes.get(module)
        a, b = parts["A"], parts["B"]  # peft layout: A [r, in], B [out, r]
        rank = a.shape[0]
        if shape is None:
            raise AdapterLoadError(
                f"{where}: '{module}' is not a linear layer of the base model; the adapter was trained for "
                "another model."
            )
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != shape[0] or b.shape != (shape[1], rank):
            raise AdapterLoadError(
                f"{where}: '{module}' has LoRA shapes A {tuple(a.shape)} / B {tuple(b.shape)}, which do not fit the "
                f"base model's {shape[0]}->{shape[1]} layer; the adapter was trained for another model."
            )
        module_alpha = float(alpha_pattern[key]) if (key := _pattern_key(alpha_pattern, module)) else alpha
        scale = module_alpha / (math.sqrt(rank) if use_rslora else rank)
        # The scale goes into B once here, so serving computes (x @ A) @ B with nothing else per step.
        modules[module] = LoraModule(
            a=a.t().to(device=device, dtype=dtype).contiguous(),
            b=(b.t().to(torch.float32) * scale).to(device=device, dtype=dtype).contiguous(),
        )
    return LoraAdapter(name=name, path=path, modules=modules)


def lora_adapter_nbytes(path: Path, dtype: torch.dtype) -> int | None:
    """The bytes ``load_lora_adapter`` will hold for this folder in ``dtype``, from the weights file's header
    alone (no tensor is read); None when the file cannot be read (loading it then says why)."""
    try:
        with safe_open(path / WEIGHTS_FILE, framework="pt") as weights:
            names = [name for name in weights.keys() if _KEY_RE.match(name)]  # noqa: SIM118 (not a dict)
            numel = sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    except Exception:  # missing or corrupt: the load reports it with the reason
        return None
    return int(numel) * dtype.itemsize


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterLoadError(f"{where}: no {CONFIG_FILE} in the folder (is the path right?).") from None
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(f"{where}: cannot read {CONFIG_FILE}: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterLoadError(f"{where}: {CONFIG_FILE} is not a JSON object.")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterLoadError(f"{where}: it is a {peft_type} adapter; only LoRA adapters can be served.")
    for flag in _UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise AdapterLoadError(f"{where}: '{flag}' is set; only plain LoRA adapters can be served.")
    for option in _UNSUPPORTED_VALUES:
        if config.get(option):
            raise AdapterLoadError(f"{where}: '{option}' is set; only plain LoRA adapters can be served.")
    if config.get("bias", "none") != "none":
        raise AdapterLoadError(f"{where}: it trains biases (bias={config['bias']!r}), which cannot be served.")
    return config


def _read_weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        legacy = " (only the old adapter_model.bin format is there)" if (path / LEGACY_WEIGHTS_FILE).exists() else ""
        raise AdapterLoadError(f"{where}: no {WEIGHTS_FILE} in the folder{legacy}.")
    try:
        return load_file(weights, device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise AdapterLoadError(f"{where}: cannot read {WEIGHTS_FILE}: {exc}") from exc


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The ``alpha_pattern`` key that applies to ``module``, matched the way peft matches it."""
    return next((key for key in patterns if re.match(rf"(.*\.)?({key})$", module)), None)


@dataclass(eq=False)
class _Entry:
    adapter: LoraAdapter | None  # None while it is being loaded
    nbytes: int  # its tensors' bytes: the estimate while loading, the real size once loaded
    pins: int = 0
    error: AdapterLoadError | None = None  # set when its load failed (the entry is gone from the cache then)


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 / 10 else f"{nbytes / 2**10:.1f} KiB"


class AdapterCache:
    """The loaded adapters of one base model, bounded by a memory budget; the least recently used idle ones go first.

    ``acquire`` pins an adapter for one request (loading it if needed) and ``release`` unpins it. The adapters
    in memory (and those being loaded, by their size read from the file header before loading) never hold more
    than ``budget_bytes`` of tensors: to load one, the least recently used idle adapters are evicted until it
    fits. A pinned adapter is never evicted, so when the pinned ones leave too little room, ``acquire`` waits
    for requests to finish. An adapter larger than the whole budget fails at once with ``AdapterTooLarge``
    instead of evicting everything and still not fitting. ``capacity`` optionally caps the count as well.

    The wait is bounded: after ``timeout_s`` the request fails with ``AdapterLoadTimeout`` saying why (the
    budget held by running requests, or the load too slow), so any number of adapters can be asked for at once
    and none waits forever. Loads run in a background thread of their own (never in the scheduler's), outside
    the lock; two requests for an adapter that is loading wait for the same load, and a load whose waiters gave
    up still completes and stays cached (unpinned).

    Args:
        loader: reads an adapter, ``(name, path) -> LoraAdapter``; may raise ``AdapterLoadError``.
        budget_bytes: the most bytes of adapter tensors held at once (None: no byte limit).
        size: ``(name, path) -> bytes`` the adapter will take once loaded, or None when unknown (it is then
            counted once loaded); without it, sizes are known only after loading.
        capacity: the most adapters held at once, on top of the budget (None: no count limit).
        timeout_s: the longest ``acquire`` waits for room and the load (None: no limit).
    """

    def __init__(
        self,
        loader: Callable[[str, Path], LoraAdapter],
        *,
        budget_bytes: int | None = None,
        size: Callable[[str, Path], int | None] | None = None,
        capacity: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("max_loaded_adapters must be at least 1.")
        if budget_bytes is not None and budget_bytes < 1:
            raise ValueError("adapter_cache_mb must be more than 0.")
        self._loader = loader
        self._budget = budget_bytes
        self._size = size
        self._capacity = capacity
        self._timeout_s = timeout_s
        self._entries: OrderedDict[tuple[str, Path], _Entry] = OrderedDict()
        self._changed = threading.Condition()

    @property
    def budget_bytes(self) -> int | None:
        return self._budget

    def acquire(self, name: str, path: Path, timeout_s: float | None = None) -> LoraAdapter:
        """The adapter ``name`` read from ``path``, pinned until ``release``.

        Args:
            timeout_s: the longest wait for room and the load; None uses the cache's own limit.

        Raises:
            AdapterLoadError: it cannot be loaded (nothing stays pinned or cached then).
            AdapterTooLarge: it is larger than the whole budget.
            AdapterLoadTimeout: no room came free, or the load did not finish, within the time allowed.
        """
        key = (name, path)
        limit = timeout_s if timeout_s is not None else self._timeout_s
        deadline = None if limit is None else time.monotonic() + limit
        with self._changed:
            known = key in self._entries
        # Read the size (a file header) outside the lock; only needed if the adapter is not there already.
        need = (self._size(name, path) or 0) if self._size is not None and not known else 0
        self._check_fits(name, need)
        with self._changed:
            while (entry := self._entries.get(key)) is None:
                if known and self._size is not None:  # evicted since it was seen: size it now (a header read)
                    known, need = False, self._size(name, path) or 0
                    self._check_fits(name, need)
                if self._make_room(need):
                    entry = self._start_load(key, need)
                    break
                self._wait(deadline, functools.partial(self._timeout, name, need, limit, loading=False))
            entry.pins += 1  # a loading entry with waiters is pinned too: its load is not wasted by an eviction
            self._entries.move_to_end(key)
            try:
                while entry.adapter is None and entry.error is None:
                    self._wait(deadline, functools.partial(self._timeout, name, need, limit, loading=True))
            except AdapterLoadTimeout:
                entry.pins -= 1
                raise
            if entry.error is not None:  # the failed entry has left the cache; each waiter raises its own copy
                error = type(entry.error)(entry.error.message, param=entry.error.param, code=entry.error.code)
                raise error from entry.error.__cause__
            adapter = entry.adapter
            assert adapter is not None
            return adapter

    def _check_fits(self, name: str, need: int) -> None:
        if self._budget is not None and need > self._budget:
            raise AdapterTooLarge(
                f"Adapter '{name}' takes {_mib(need)} in memory, more than the whole adapter memory budget of "
                f"{_mib(self._budget)} per base model; it cannot be served until the budget is raised "
                "(inference.adapter_cache_mb, TUNERY_INFERENCE__ADAPTER_CACHE_MB).",
                param="model",
            )

    def _wait(self, deadline: float | None, timeout: Callable[[], AdapterLoadTimeout]) -> None:
        """Wait for a change (lock held); raise ``timeout()`` once ``deadline`` has passed."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise timeout()
        self._changed.wait(remaining)

    def release(self, adapter: LoraAdapter) -> None:
        """Unpin an adapter that ``acquire`` returned (once per ``acquire``)."""
        with self._changed:
            entry = self._entries.get((adapter.name, adapter.path))
            if entry is not None and entry.adapter is adapter:
                entry.pins -= 1
                self._changed.notify_all()

    def loaded(self) -> list[str]:
        """Names of the loaded adapters, least recently used first."""
        with self._changed:
            return [name for (name, _), entry in self._entries.items() if entry.adapter is not None]

    def memory(self) -> dict[str, int | None]:
        """What ``/health`` shows: adapters loaded, their bytes (loading ones included, by estimate), the budget."""
        with self._changed:
            return {
                "loaded": sum(1 for entry in self._entries.values() if entry.adapter is not None),
                "loaded_bytes": self._used(),
                "budget_bytes": self._budget,
            }

    def _used(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def _start_load(self, key: tuple[str, Path], need: int) -> _Entry:
        """Reserve room for ``key`` and load it in a background thread (called with the lock held)."""
        entry = _Entry(adapter=None, nbytes=need)
        self._entries[key] = entry
        thread = threading.Thread(target=self._load, args=(key, entry), name=f"tunery-adapter-{key[0]}", daemon=True)
        thread.start()
        return entry

    def _load(self, key: tuple[str, Path], entry: _Entry) -> None:
        try:
            adapter = self._loader(*key)
            self._check_fits(key[0], adapter.nbytes)  # the header said less than the file holds
        except BaseException as exc:
            error = exc if isinstance(exc, AdapterLoadError) else AdapterLoadError(f"Adapter '{key[0]}': {exc}")
            if error is not exc:
                error.__cause__ = exc
            with self._changed:
                entry.error = error
                if self._entries.get(key) is entry:
                    del self._entries[key]
                self._changed.notify_all()
            return
        with self._changed:
            entry.adapter = adapter
            entry.nbytes = adapter.nbytes
            self._make_room(0, adding=False)  # larger than estimated: idle ones leave to keep within the budget
            self._changed.notify_all()

    def _timeout(self, name: str, need: int, limit: float | None, *, loading: bool) -> AdapterLoadTimeout:
        if loading:
            return AdapterLoadTimeout(
                f"Adapter '{name}' is still loading after {limit or 0:g} s; try again shortly.", param="model"
            )
        if self._capacity is not None and len(self._entries) >= self._capacity:
            why = (
                f"all {self._capacity} adapter slots are held by running requests of other adapters; try again "
                "shortly (or raise inference.max_loaded_adapters)."
            )
        else:
            held = sum(entry.nbytes for entry in self._entries.values() if entry.pins or entry.adapter is None)
            why = (
                f"it needs {_mib(need)} and adapters in use by running requests hold {_mib(held)} of the "
                f"{_mib(self._budget or 0)} adapter memory budget; try again shortly (or raise "
                "inference.adapter_cache_mb)."
            )
        return AdapterLoadTimeout(f"Adapter '{name}' could not be loaded within {limit or 0:g} s: {why}", param="model")

    def _make_room(self, need: int, *, adding: bool = True) -> bool:
        """Evict the least recently used idle adapters until ``need`` more bytes (and, ``adding``, one more
        adapter) fit; True if they do. Evicts nothing when even evicting every idle adapter would not make room,
        unless not ``adding`` (then it gets as close as it can). Called with the lock held.
        """
        free = None if self._budget is None else self._budget - self._used()
        count = len(self._entries) + (1 if adding else 0)

        def fits() -> bool:
            return (free is None or free >= need) and (self._capacity is None or count <= self._capacity)

        victims: list[tuple[str, Path]] = []
        for key, entry in self._entries.items():
            if fits():
                break
            if entry.pins == 0 and entry.adapter is not None:
                victims.append(key)
                count -= 1
                if free is not None:
                    free += entry.nbytes
        if not fits() and adding:
            return False
        for key in victims:
            del self._entries[key]
        return fits()
