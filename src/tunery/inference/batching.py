"""Continuous batching for one base model: a scheduler thread that runs every active request in one batch.

Each iteration of the thread (1) admits waiting requests, as many as the batch has room for, and prefills them
together in one forward pass of their own (so a new request waits for at most one decode step, never for a long
request to finish); (2) merges them into the running batch, dropping rows that finished or were cancelled; and
(3) runs ONE decode forward pass for all rows, whatever adapter each row uses (``multi_lora``), then samples a
token per row and streams each row's new text to its caller's queue. Rows sit left-padded in a shared
``PaddedKVCache``; per-row position ids and a boolean attention mask keep padding out of attention.

A failure inside a forward pass fails exactly the requests in that pass (the new ones for a prefill, the
running ones for a decode step) with ``GenerationError``; a failure while handling one row's token fails that
row. Callers never hang: they wait on their own queue and notice when the thread is gone. This module does not
load models or adapters (``hf_engine``, ``adapters``) and does not validate requests.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from tunery.domain.errors import ServiceError, Unavailable
from tunery.inference.adapters import AdapterCache, LoraAdapter
from tunery.inference.detokenizer import IncrementalDetokenizer, StopStrings
from tunery.inference.engine import FinishReason, GenerationChunk, GenerationRequest
from tunery.inference.errors import GenerationError
from tunery.inference.kv_cache import PaddedKVCache
from tunery.inference.multi_lora import LoraPlan, MultiLora
from tunery.inference.sampling import RowSampler, sample_rows

log = logging.getLogger(__name__)

# Columns reserved in the cache beyond the prompt, per merge; the cache grows further when needed.
_RESERVE = 128
# How often a waiting caller checks that the scheduler thread is still alive.
_LIVENESS_POLL_S = 1.0


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A base model ready to serve, with what the scheduler needs around it."""

    name: str
    model: PreTrainedModel
    lora: MultiLora
    decode: Callable[[list[int]], str]  # token ids -> text, special tokens skipped
    stop_token_ids: frozenset[int]  # the tokenizer's end-of-turn ids, always applied
    context_length: int
    device: torch.device
    num_layers: int


class RequestHandle:
    """One submitted request as its caller and the scheduler share it: a queue of chunks and a cancel flag."""

    def __init__(self, request: GenerationRequest, adapter: LoraAdapter | None) -> None:
        self.request = request
        self.adapter = adapter
        self.cancelled = False
        self.ended = False  # set by the scheduler once, when the request leaves it
        self._queue: queue.SimpleQueue[GenerationChunk | BaseException] = queue.SimpleQueue()

    @property
    def stopped(self) -> bool:
        """The caller closed its stream or set the request's ``cancel`` event."""
        cancel = self.request.cancel
        return self.cancelled or (cancel is not None and cancel.is_set())

    def put(self, item: GenerationChunk | BaseException) -> None:
        self._queue.put(item)

    def get(self, alive: Callable[[], bool]) -> GenerationChunk:
        """The next chunk, waiting as long as the scheduler lives; raises what the scheduler sent instead."""
        while True:
            try:
                item = self._queue.get(timeout=_LIVENESS_POLL_S)
            except queue.Empty:
                if alive():
                    continue
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    raise GenerationError("The inference engine stopped before finishing this request.") from None
            if isinstance(item, BaseException):
                raise item
            return item


class _Row:
    """A request in the running batch: its sampler, its text stream and where it stands."""

    def __init__(self, handle: RequestHandle, loaded: LoadedModel) -> None:
        request = handle.request
        self.handle = handle
        self.adapter = handle.adapter
        self.prompt_tokens = len(request.prompt_ids)
        self.max_new = min(request.params.max_tokens, loaded.context_length - self.prompt_tokens)
        self.stop_ids = loaded.stop_token_ids | frozenset(request.stop_token_ids)
        self.sampler = RowSampler(request.params, loaded.device)
        self.detokenizer = IncrementalDetokenizer(loaded.decode, request.prompt_ids)
        self.stops = StopStrings(request.params.stop)
        self.generated = 0
        self.position = self.prompt_tokens  # position id of the token fed in the next decode step
        self.last_token = -1
        self.unsent_ids: list[int] = []
        self.done = False

    def accept(self, token: int) -> GenerationChunk | None:
        """Take the token sampled for this row; return the chunk to send, if there is one."""
        self.generated += 1
        self.last_token = token
        self.unsent_ids.append(token)
        if token in self.stop_ids:
            return self._finish("stop", "")
        text = self.stops.push(self.detokenizer.push(token))
        if self.stops.stopped:
            return self._finish("stop", text)
        if self.generated >= self.max_new:
            return self._finish("length", text)
        return self._chunk(text, None) if text else None

    def _finish(self, reason: FinishReason, text: str) -> GenerationChunk:
        if not self.stops.stopped:
            text += self.stops.push(self.detokenizer.flush())
            reason = "stop" if self.stops.stopped else reason
            text += self.stops.flush()
        self.done = True
        return self._chunk(text, reason)

    def _chunk(self, text: str, reason: FinishReason | None) -> GenerationChunk:
        ids, self.unsent_ids = self.unsent_ids, []
        return GenerationChunk(
            text=text,
            token_ids=ids,
            finish_reason=reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.generated,
        )


class Scheduler:
    """The continuous-batching thread of one base model (started by the constructor).

    Args:
        loaded: the model and its tokenizer functions.
        adapters: the model's adapter cache; the scheduler releases each request's adapter when it ends.
        max_batch_size: the most requests decoded together; more wait in line.
        max_prefill_tokens: the most (padded) prompt tokens prefilled in one pass, so that admitting many long
            prompts at once does not stall the running rows for long (one request is always admitted).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        adapters: AdapterCache,
        *,
        max_batch_size: int,
        max_prefill_tokens: int,
    ) -> None:
        self._loaded = loaded
        self._adapters = adapters
        self._max_batch_size = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self._inbox: deque[RequestHandle] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._rows: list[_Row] = []
        self._in_flight = 0  # submitted and not yet ended: waiting, prefilling or decoding
        self.generated_tokens = 0  # every token sampled since start, for every request (a serving metric)
        self._cache = PaddedKVCache(loaded.num_layers, [], 0)
        self._plan: LoraPlan | None = None
        self._thread = threading.Thread(target=self._run, name=f"tunery-scheduler-{loaded.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def active_rows(self) -> int:
        """Requests waiting, prefilling or decoding; a cancelled one leaves at the next step."""
        with self._wake:
            return self._in_flight

    def submit(self, handle: RequestHandle) -> None:
        """Queue a request; its chunks will arrive on ``handle``.

        Raises:
            Unavailable: the engine is closing or its scheduler has stopped.
        """
        with self._wake:
            if self._closing or not self._thread.is_alive():
                raise Unavailable(f"The inference engine for model '{self._loaded.name}' is shut down.")
            self._inbox.append(handle)
            self._in_flight += 1
            self._wake.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread after its current step; requests still running or waiting get ``Unavailable``."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        cause: BaseException | None = None
        try:
            with torch.inference_mode():
                while self._iterate():
                    pass
        except BaseException as exc:  # the loop itself broke: nobody may be left waiting
            log.exception("The scheduler of model %s stopped", self._loaded.name)
            cause = exc
        name = self._loaded.name

        def make_error() -> ServiceError:
            if cause is None:
                return Unavailable(f"The engine for model '{name}' was closed.")
            return GenerationError(f"The inference engine for model '{name}' stopped: {cause}")

        with self._wake:
            self._closing = True
            waiting = list(self._inbox)
            self._inbox.clear()
        self._fail(self._rows, make_error, cause)
        for handle in waiting:
            self._end_request(handle, make_error(), cause)
        self._rows = []

    def _iterate(self) -> bool:
        with self._wake:
            while not self._closing and not self._inbox and not self._rows:
                self._wake.wait()
            if self._closing:
                return False
            admitted = self._admit()
        joining = self._prefill(admitted) if admitted else None
        try:
            self._regroup(joining)
        except Exception as exc:  # e.g. out of memory growing the cache: these rows cannot go on
            log.exception("Regrouping the batch of model %s failed", self._loaded.name)
            message = f"Generation failed: {exc}"
            self._fail([*self._rows, *(joining[0] if joining else [])], lambda: GenerationError(message), exc)
            self._reset()
            return True
        if self._rows:
            self._decode_step()
        return True

    def _admit(self) -> list[RequestHandle]:
        """Take waiting requests in arrival order while the batch and the prefill budget have room."""
        room = self._max_batch_size - sum(not row.done for row in self._rows)
        admitted: list[RequestHandle] = []
        longest = 0
        while self._inbox and len(admitted) < room:
            handle = self._inbox[0]
            if handle.stopped:
                self._inbox.popleft()
                self._end_cancelled(handle, 0)
                continue
            longest = max(longest, len(handle.request.prompt_ids))
            if admitted and longest * (len(admitted) + 1) > self._max_prefill_tokens:
                break
            admitted.append(self._inbox.popleft())
        return admitted

    # --------------------------------------------------------------------------------------- prefill
    def _prefill(self, handles: list[RequestHandle]) -> tuple[list[_Row], PaddedKVCache] | None:
        """Run the new prompts together; return the rows still generating and their cache."""
        rows: list[_Row] = []
        for handle in handles:
            try:
                rows.append(_Row(handle, self._loaded))
            except Exception as exc:
                self._fail_one(handle, exc)
        if not rows:
            return None
        loaded = self._loaded
        device = loaded.device
        try:
            lengths = [row.prompt_tokens for row in rows]
            width = max(lengths)
            pads = [width - n for n in lengths]
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, pads[i] :] = torch.tensor(row.handle.request.prompt_ids, dtype=torch.long)
            pad_t = torch.tensor(pads)
            columns = torch.arange(width)
            positions = (columns[None, :] - pad_t[:, None]).clamp(min=0)
            causal = columns[None, :] <= columns[:, None]  # [query, key]
            real = columns[None, :] >= pad_t[:, None]  # [row, key]
            # A padding query attends to itself only, so no row of the mask is empty (that would give NaN).
            mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
            reserve = min(max(row.max_new for row in rows), _RESERVE)
            cache = PaddedKVCache(loaded.num_layers, pads, width + reserve)
            plan = loaded.lora.plan([row.adapter for row in rows], grouped=True)
            with loaded.lora.applied(plan):
                output = loaded.model(
                    input_ids=ids.to(device),
                    attention_mask=mask[:, None].to(device),
                    position_ids=positions.to(device),
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            tokens = sample_rows(output.logits[:, -1], [row.sampler for row in rows])
        except Exception as exc:
            log.exception("Prefill failed for %d request(s) of model %s", len(rows), loaded.name)
            message = f"Generation failed while reading the prompt: {exc}"
            self._fail(rows, lambda: GenerationError(message), exc)
            return None
        self._accept(rows, tokens)
        keep = [i for i, row in enumerate(rows) if not row.done]
        if len(keep) < len(rows):
            cache = cache.rebuilt(keep)
            rows = [rows[i] for i in keep]
        return (rows, cache) if rows else None

    # ---------------------------------------------------------------------------------------- decode
    def _regroup(self, joining: tuple[list[_Row], PaddedKVCache] | None) -> None:
        """Drop finished and cancelled rows, then append the newly prefilled ones (one cache rebuild at most)."""
        for row in self._rows:
            if row.handle.stopped and not row.done:
                row.done = True
                self._end_cancelled(row.handle, row.generated)
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        if joining is None and len(keep) == len(self._rows):
            return
        new_rows, new_cache = joining if joining is not None else ([], None)
        rows = [self._rows[i] for i in keep] + new_rows
        reserve = min(max((row.max_new - row.generated for row in rows), default=0), _RESERVE)
        self._cache = self._cache.rebuilt(keep, new_cache, reserve)
        self._rows = rows
        self._plan = None

    def _decode_step(self) -> None:
        loaded, rows = self._loaded, self._rows
        device = loaded.device
        try:
            if self._plan is None:
                self._plan = loaded.lora.plan([row.adapter for row in rows])
            ids = torch.tensor([[row.last_token] for row in rows], device=device)
            positions = torch.tensor([[row.position] for row in rows], device=device)
            mask = self._cache.decode_mask(device)
            with loaded.lora.applied(self._plan):
                output = loaded.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=self._cache,
                    use_cache=True,
                )
            tokens = sample_rows(output.logits[:, -1], [row.sampler for row in rows])
        except Exception as exc:
            log.exception("Decode step failed for %d request(s) of model %s", len(rows), loaded.name)
            message = f"Generation failed: {exc}"
            self._fail(rows, lambda: GenerationError(message), exc)
            self._reset()
            return
        for row in rows:
            row.position += 1
        self._accept(rows, tokens)

    def _accept(self, rows: Sequence[_Row], tokens: Sequence[int]) -> None:
        self.generated_tokens += len(rows)
        for row, token in zip(rows, tokens, strict=True):
            try:
                chunk = row.accept(token)
            except Exception as exc:
                log.exception("Handling a token failed for a request of model %s", self._loaded.name)
                row.done = True
                self._end_request(row.handle, GenerationError(f"Generation failed: {exc}"), exc)
                continue
            if chunk is not None:
                row.handle.put(chunk)
            if row.done:
                self._end_request(row.handle, None)

    def _reset(self) -> None:
        """Start over with an empty batch (after a failure ended every running row)."""
        self._rows, self._cache, self._plan = [], PaddedKVCache(self._loaded.num_layers, [], 0), None

    # ---------------------------------------------------------------------------------------- endings
    def _fail(self, rows: Sequence[_Row], make_error: Callable[[], ServiceError], cause: BaseException | None) -> None:
        """End unfinished rows with an error each (one instance per caller: they are raised in other threads)."""
        for row in rows:
            if not row.done:
                row.done = True
                self._end_request(row.handle, make_error(), cause)

    def _fail_one(self, handle: RequestHandle, exc: Exception) -> None:
        error = exc if isinstance(exc, ServiceError) else GenerationError(f"Generation failed: {exc}")
        self._end_request(handle, error, exc)

    def _end_cancelled(self, handle: RequestHandle, generated: int) -> None:
        """End a cancelled request; a caller still reading gets a last chunk, so its stream ends now."""
        self._end_request(handle, None)
        prompt = len(handle.request.prompt_ids)
        handle.put(GenerationChunk(text="", finish_reason="stop", prompt_tokens=prompt, completion_tokens=generated))

    def _end_request(
        self, handle: RequestHandle, error: ServiceError | None, cause: BaseException | None = None
    ) -> None:
        """Release the request's adapter and, for a failure, send the caller its error."""
        if not handle.ended:
            handle.ended = True
            with self._wake:
                self._in_flight -= 1
        if handle.adapter is not None:
            self._adapters.release(handle.adapter)
        if error is not None:
            if cause is not None and error is not cause:
                error.__cause__ = cause
            handle.put(error)
