"""``HFEngine``: the ``Engine`` on transformers — many LoRA adapters and the base model, batched, streamed.

It loads each base model once, on its first request (weights in bfloat16 where this CPU has native bf16
arithmetic, float32 otherwise — never float16 on a CPU, bfloat16 or float16 on a GPU), with its tokenizer
for detokenization and its end-of-turn tokens. Per base model it keeps an ``AdapterCache`` (adapters loaded on
demand by name, LRU within ``adapter_cache_mb`` of adapter tensors) and one ``batching.Scheduler`` thread that
batches every request of that model — whatever adapter each uses — into one forward pass per step: ``lean_llama``'s
for llama models (weights fused, and packed in bf16, at load), transformers' with ``multi_lora`` otherwise.

``generate`` is a generator: nothing happens until the first ``next()``, which validates the request, loads
the model and the adapter if needed (in the caller's thread) and queues it; each later ``next()`` blocks until
the scheduler has new text. Closing the iterator early (a client that went away) cancels the request.
This module does not render chats or know deployment names: it takes token ids and adapter folders.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from tunery.domain.errors import InvalidRequest, NotFound, Unavailable
from tunery.hardware.precision import fastest_format
from tunery.inference.adapters import AdapterCache, LoraAdapter, load_lora_adapter, lora_adapter_nbytes
from tunery.inference.batching import LoadedModel, RequestHandle, Scheduler
from tunery.inference.decode_attention import DecodeAttention
from tunery.inference.engine import GenerationChunk, GenerationRequest
from tunery.inference.lean_llama import LeanLlama
from tunery.inference.memory import release_freed_memory
from tunery.inference.multi_lora import MultiLora
from tunery.inference.openmp import in_passing_thread
from tunery.inference.prefix_cache import PrefixCache
from tunery.inference.sampling import check_params

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class HFEngine:
    """Serves base models from Hugging Face folders, with peft LoRA adapters batched together.

    Args:
        model_dirs: base model name -> folder written by ``save_pretrained`` (weights, config, tokenizer), as a
            mapping or a function such as ``Catalog.weights_dir`` (which may raise ``NotFound``/``Unavailable``).
        adapter_cache_mb: memory per base model for loaded adapters (the bytes of their tensors); the least
            recently used idle ones are evicted to make room, an adapter larger than all of it is refused
            (``AdapterTooLarge``). None: no byte limit.
        max_loaded_adapters: optionally also caps the count of adapters in memory per base model (None: only
            the bytes count). Either bound also bounds the distinct adapters in one batch.
        max_batch_size: requests decoded together per base model; more wait in line.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (refused on CPU: ~60x slower there).
        num_threads: torch's intra-op threads for the whole process (``torch.set_num_threads``); None leaves
            torch's default (one per core).
        max_prefill_tokens: the most padded prompt tokens read in one prefill pass; longer prompts are read in
            chunks between decode steps, so this bounds the pause a new prompt causes the running requests.
        prefix_cache_mb: memory per base model for the keys and values of prompt prefixes already read (a
            shared system prompt or few-shot examples are then not read again); 0 turns prefix caching off.
        prefix_block_tokens: prefixes are reused in blocks of this many tokens.
        adapter_timeout_s: the longest a request waits for its adapter (a free slot and the load, which runs in
            a background thread) before failing with ``AdapterLoadTimeout``; None waits as long as it takes.
        adapter_cache_mb, max_loaded_adapters: see above.
        lean_forward: run llama-architecture models through ``lean_llama`` (a few operators per layer, weights
            fused at load) instead of the ``transformers`` forward; other architectures always use the latter.
        native_attention: decode steps of the lean forward attend through ``decode_attention``'s kernel, compiled
            here at the first model load (torch's attention where there is no C compiler).
        kernel_cache: where that kernel is built and kept (default: a folder in the temporary directory).

    Thread-safe: call ``generate`` from any number of threads (each caller's thread blocks on its own request).
    """

    def __init__(
        self,
        model_dirs: Callable[[str], Path] | Mapping[str, Path],
        *,
        max_loaded_adapters: int | None = None,
        adapter_cache_mb: float | None = 256,
        max_batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        num_threads: int | None = None,
        max_prefill_tokens: int = 512,
        prefix_cache_mb: int = 256,
        prefix_block_tokens: int = 32,
        precision_cache: Path | None = None,
        adapter_timeout_s: float | None = None,
        lean_forward: bool = True,
        native_attention: bool = True,
        kernel_cache: Path | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1.")
        if max_loaded_adapters is not None and max_loaded_adapters < 1:
            raise ValueError("max_loaded_adapters must be at least 1.")
        if adapter_cache_mb is not None and adapter_cache_mb <= 0:
            raise ValueError("adapter_cache_mb must be more than 0.")
        self._model_dirs = model_dirs
        self._device = resolve_device(device)
        if num_threads is not None:  # before the precision probe: its verdict depends on the threads
            torch.set_num_threads(num_threads)
        self._dtype = in_passing_thread(lambda: resolve_dtype(dtype, self._device, precision_cache))
        self._max_loaded_adapters = max_loaded_adapters
        self._adapter_budget = int(adapter_cache_mb * 2**20) if adapter_cache_mb is not None else None
        self._max_batch_size = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self._prefix_cache_bytes = prefix_cache_mb * 2**20
        self._prefix_block_tokens = prefix_block_tokens
        self._adapter_timeout_s = adapter_timeout_s
        self._lean_forward = lean_forward
        self._native_attention = native_attention
        self._kernel_cache = kernel_cache
        self._runtimes: dict[str, _Runtime] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        """Stream one request's output; the last chunk has ``finish_reason`` and the token counts.

        Raises (from the iterator):
            InvalidRequest: bad sampling values, an empty prompt, or a prompt that fills the context.
            NotFound: unknown base model.
            AdapterLoadError: the adapter cannot be loaded (only this request fails).
            AdapterLoadTimeout: the adapter could not be loaded within ``adapter_timeout_s``.
            GenerationError: the forward pass that carried this request failed.
            Unavailable: the engine is closed.
        """
        check_params(request.params)
        prompt_tokens = len(request.prompt_ids)
        if prompt_tokens == 0:
            raise InvalidRequest("The prompt is empty.", param="messages")
        runtime = self._runtime(request.base_model)
        if prompt_tokens >= runtime.loaded.context_length:
            raise InvalidRequest(
                f"The prompt has {prompt_tokens} tokens; model '{request.base_model}' reads at most "
                f"{runtime.loaded.context_length} including the completion.",
                param="messages",
            )
        adapter = runtime.acquire_adapter(request) if request.adapter_dir is not None else None
        handle = RequestHandle(request, adapter)
        try:
            runtime.scheduler.submit(handle)
        except BaseException:
            if adapter is not None:
                runtime.adapters.release(adapter)
            raise
        try:
            while True:
                chunk = handle.get(lambda: runtime.scheduler.alive)
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            handle.cancelled = True  # a no-op once finished; otherwise the scheduler drops the row

    def loaded_adapters(self, base_model: str) -> list[str]:
        """Names of the adapters in memory for a base model, least recently used first ([] if not loaded)."""
        with self._lock:
            runtime = self._runtimes.get(base_model)
        return runtime.adapters.loaded() if runtime is not None else []

    def adapter_memory(self) -> dict[str, dict[str, int | None]]:
        """Per loaded base model: adapters in memory, their bytes and the budget (``AdapterCache.memory``)."""
        with self._lock:
            runtimes = dict(self._runtimes)
        return {name: runtime.adapters.memory() for name, runtime in runtimes.items()}

    def progress(self) -> tuple[int, bool]:
        """For a supervisor's hang check: forward passes run so far over every base model, and whether any
        scheduler has requests to run now (then the count must keep growing)."""
        with self._lock:
            schedulers = [runtime.scheduler for runtime in self._runtimes.values()]
        return sum(s.passes for s in schedulers), any(s.busy for s in schedulers)

    def active_rows(self) -> int:
        """Requests being generated or waiting to be, over every loaded base model (a serving metric)."""
        with self._lock:
            runtimes = list(self._runtimes.values())
        return sum(runtime.scheduler.active_rows for runtime in runtimes)

    def generated_tokens(self) -> int:
        """Tokens sampled so far for every request of the loaded base models (a serving metric)."""
        with self._lock:
            runtimes = list(self._runtimes.values())
        return sum(runtime.scheduler.generated_tokens for runtime in runtimes)

    def close(self) -> None:
        """Stop the scheduler threads; requests in flight end with ``Unavailable``. Idempotent."""
        with self._lock:
            self._closed = True
            runtimes = list(self._runtimes.values())
            self._runtimes.clear()
        for runtime in runtimes:
            runtime.scheduler.close()

    def __enter__(self) -> HFEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _runtime(self, name: str) -> _Runtime:
        """The loaded base model ``name``, loading it in this thread if it is the first request for it."""
        with self._lock:
            self._check_open()
            runtime = self._runtimes.get(name)
            if runtime is not None:
                return runtime
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per model; other first requests wait for it, a failed load is retried
            with self._lock:
                self._check_open()
                runtime = self._runtimes.get(name)
            if runtime is not None:
                return runtime
            loaded = in_passing_thread(lambda: self._load(name), name=f"tunery-load-{name}")
            release_freed_memory()  # what the load freed stays in malloc's arenas otherwise (``memory``)
            dtype = loaded.model.dtype
            adapters = AdapterCache(
                _adapter_loader(loaded),
                budget_bytes=self._adapter_budget,
                size=lambda _name, path: lora_adapter_nbytes(path, dtype),
                capacity=self._max_loaded_adapters,
                timeout_s=self._adapter_timeout_s,
            )
            scheduler = Scheduler(
                loaded,
                adapters,
                max_batch_size=self._max_batch_size,
                max_prefill_tokens=self._max_prefill_tokens,
                prefix_cache=PrefixCache(self._prefix_block_tokens, self._prefix_cache_bytes),
            )
            runtime = _Runtime(loaded, adapters, scheduler)
            with self._lock:
                if self._closed:
                    scheduler.close()
                    self._check_open()
                self._runtimes[name] = runtime
            return runtime

    def _load(self, name: str) -> LoadedModel:
        """Load base model ``name`` (run in a passing thread: ``openmp`` says why)."""
        loaded = load_base_model(name, self._model_dir(name), self._device, self._dtype, lean=self._lean_forward)
        if loaded.lean is not None and self._native_attention and self._device.type == "cpu":
            loaded.lean.decode_attention = DecodeAttention.load(self._kernel_cache)
        return loaded

    def _model_dir(self, name: str) -> Path:
        if callable(self._model_dirs):
            return Path(self._model_dirs(name))
        try:
            return Path(self._model_dirs[name])
        except KeyError:
            available = ", ".join(sorted(self._model_dirs)) or "none"
            raise NotFound(f"Model '{name}' is not served here; available: {available}.", param="model") from None

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("The inference engine is shut down.")


class _Runtime:
    """One base model being served: the model, its adapter cache and its scheduler thread."""

    def __init__(self, loaded: LoadedModel, adapters: AdapterCache, scheduler: Scheduler) -> None:
        self.loaded = loaded
        self.adapters = adapters
        self.scheduler = scheduler

    def acquire_adapter(self, request: GenerationRequest) -> LoraAdapter:
        assert request.adapter_dir is not None
        path = Path(request.adapter_dir).resolve()
        return self.adapters.acquire(request.adapter_name or str(path), path)


def _adapter_loader(loaded: LoadedModel) -> Callable[[str, Path], LoraAdapter]:
    shapes = loaded.lora.linear_shapes
    dtype = loaded.model.dtype

    def load(name: str, path: Path) -> LoraAdapter:
        adapter = load_lora_adapter(path, name=name, linear_shapes=shapes, dtype=dtype, device=loaded.device)
        log.info("Loaded adapter %s for %s (%.1f MB)", name, loaded.name, adapter.nbytes / 1e6)
        return adapter

    return load


def load_base_model(
    name: str, path: Path, device: torch.device, dtype: torch.dtype, *, lean: bool = True
) -> LoadedModel:
    """Load a causal LM folder for serving: weights, tokenizer decode function, stop tokens, context length.

    With ``lean`` a llama-architecture model also gets its ``LeanLlama`` forward (its weights fused in place).

    Raises:
        Unavailable: the folder cannot be loaded (the message names it).
    """
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise Unavailable(f"Model '{name}' cannot be loaded from {path}: {exc}") from exc
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    text_config = model.config.get_text_config()
    context = getattr(text_config, "max_position_embeddings", None) or 2**31 - 1
    log.info("Loaded base model %s from %s (%s on %s)", name, path, dtype, device)
    return LoadedModel(
        name=name,
        model=model,
        lora=MultiLora(model),
        decode=_decoder(path),
        stop_token_ids=frozenset(_end_of_turn_ids(model, path)),
        context_length=int(context),
        device=device,
        num_layers=int(text_config.num_hidden_layers),
        lean=LeanLlama.build(model) if lean else None,
    )


def _decoder(path: Path) -> Callable[[list[int]], str]:
    """``ids -> text`` with special tokens skipped: the fast ``tokenizers`` object, else transformers'."""
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(path)
    return lambda ids: str(slow.decode(ids, skip_special_tokens=True))


def _end_of_turn_ids(model: PreTrainedModel, path: Path) -> set[int]:
    """The eos ids of ``generation_config`` and ``config``, plus the tokenizer's eos token (ChatML's <|im_end|>)."""
    ids: set[int] = set()
    for source in (model.generation_config, model.config):
        eos = getattr(source, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
    eos_token = _read_json(path / "tokenizer_config.json").get("eos_token")
    if isinstance(eos_token, dict):
        eos_token = eos_token.get("content")
    if isinstance(eos_token, str) and (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        token_id = Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id(eos_token)
        if token_id is not None:
            ids.add(token_id)
    return ids


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, precision_cache: Path | None = None) -> torch.dtype:
    """The weights' dtype. ``"auto"``: bf16 on GPUs that have it (else fp16); on a CPU bf16 only where bf16
    matmuls were measured clearly faster than fp32 on this machine (``hardware.precision``; ~2-5x with
    AVX512-BF16 / AMX), else fp32 — emulated bf16 is far slower.

    Raises:
        ValueError: an unknown name, or float16 on a CPU (it runs ~60x slower than float32 there).
    """
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type != "cpu":
            return torch.float32
        fast = fastest_format("weights", cache_file=precision_cache) == "bf16"
        return torch.bfloat16 if fast else torch.float32
    try:
        resolved = _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}.") from None
    if resolved is torch.float16 and device.type == "cpu":
        raise ValueError("float16 is not usable on a CPU (matmuls run ~60x slower); use bfloat16 or float32.")
    return resolved
