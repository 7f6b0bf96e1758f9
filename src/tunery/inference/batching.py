"""Continuous batching for one base model: a scheduler thread that decodes every running request in one pass
per step and reads new prompts in chunks between those steps, so running streams never wait for a whole prompt.

Each request gets a slot of a ``SlotKVCache`` (its token ``p`` in column ``p``). Each iteration of the thread
(1) drops finished rows and admits waiting requests while slots are free, copying the longest cached prefix of
each prompt into its slot (``prefix_cache``: per adapter, LRU-bounded); (2) runs at most ONE prefill pass over
the next chunks of the prompts being read — at most ``max_prefill_tokens`` padded tokens in all, the oldest
prompt first — and samples the first token of each prompt it finishes; (3) moves rows whose prompt is read
among the decoding ones, copying only rows that change slot; and (4) runs ONE decode pass for all decoding
rows, whatever adapter each row uses, then samples a token per row and streams each row's new text to its
caller's queue. Passes run through the model's lean forward where it has one (``lean_llama``: llama models),
else through transformers' forward with ``multi_lora``'s hooks. So a long prompt arriving mid-stream delays
the running rows by one chunk's pass per step, never by the whole prompt. Every pass is recorded in
``step_log`` (kind, requests, tokens).

Decoding rows sit in slots ``0..d-1`` and rows still reading their prompt after them (oldest first), so the
decode pass reads the cache as a view and a prefill pass reads contiguous slots too. Prompts of different
lengths share a prefill pass left-padded to the longest chunk; padding queries write to a scratch column and
their outputs are thrown away.

A failure inside a forward pass fails exactly the requests in that pass (the prompts of a prefill, the
running ones for a decode step) with ``GenerationError``; a failure while handling one row's token fails that
row. Callers never hang: they wait on their own queue and notice when the thread is gone. This module does not
load models or adapters (``hf_engine``, ``adapters``) and does not validate requests.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

from tunery.domain.errors import ServiceError, Unavailable
from tunery.inference.adapters import AdapterCache, LoraAdapter
from tunery.inference.detokenizer import IncrementalDetokenizer, StopStrings
from tunery.inference.engine import FinishReason, GenerationChunk, GenerationRequest
from tunery.inference.errors import GenerationError
from tunery.inference.kv_cache import SlotKVCache
from tunery.inference.lean_llama import LeanLlama, LeanPlan
from tunery.inference.multi_lora import LoraPlan, MultiLora
from tunery.inference.prefix_cache import PrefixCache
from tunery.inference.sampling import RowSampler, sample_rows

log = logging.getLogger(__name__)

# How often a waiting caller checks that the scheduler thread is still alive.
_LIVENESS_POLL_S = 1.0
# Passes remembered in ``Scheduler.step_log``.
_STEP_LOG_SIZE = 4096
_serials = itertools.count(1)
# Columns per slot the cache starts with, and shrinks back to when the batch empties.
_IDLE_COLUMNS = 256


@dataclass(frozen=True, slots=True)
class Step:
    """One forward pass of the scheduler: a prefill chunk or a decode step, and the requests in it."""

    kind: Literal["prefill", "decode"]
    requests: tuple[str, ...]  # request ids (or ``#serial`` for a request without one), in batch order
    tokens: int  # tokens run through the model (padding included)
    seconds: float  # the pass's forward and sampling time


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
    lean: LeanLlama | None = None  # the few-operator forward, for llama models (None: transformers' forward)


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
    """A request in the batch: its sampler, its text stream and where it stands (reading its prompt or decoding)."""

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
        self.fed = 0  # tokens whose keys and values are in the row's slot (= the column of the next one)
        self.last_token = -1
        self.prefix_key: Hashable = handle.adapter.uid if handle.adapter is not None else None
        self.label = request.request_id or f"#{next(_serials)}"
        self.unsent_ids: list[int] = []
        self.done = False

    @property
    def prefilling(self) -> bool:
        return self.fed < self.prompt_tokens

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


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as SDPA's additive one (0 where allowed, -inf elsewhere), built once per pass.

    Given a boolean mask, SDPA converts it again in every layer; every row here allows at least one column.
    """
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class Scheduler:
    """The continuous-batching thread of one base model (started by the constructor).

    Args:
        loaded: the model and its tokenizer functions.
        adapters: the model's adapter cache; the scheduler releases each request's adapter when it ends.
        max_batch_size: the most requests in the batch (decoding or reading their prompt); more wait in line.
        max_prefill_tokens: the most (padded) prompt tokens read in one pass between two decode steps: the
            longest pause a new prompt causes the running rows.
        prefix_cache: cached prompt prefixes to reuse (None: no prefix caching).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        adapters: AdapterCache,
        *,
        max_batch_size: int,
        max_prefill_tokens: int,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        if max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be at least 1.")
        self._loaded = loaded
        self._adapters = adapters
        self._max_batch_size = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self.prefix_cache = prefix_cache
        self._inbox: deque[RequestHandle] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._rows: list[_Row] = []  # in slot order: decoding rows, then rows reading their prompt
        self._decoding = 0  # rows[:decoding] are decoding
        self._in_flight = 0  # submitted and not yet ended: waiting, prefilling or decoding
        self.generated_tokens = 0  # every token sampled since start, for every request (a serving metric)
        self.passes = 0  # iterations of the loop run (each a prefill chunk and/or a decode step): progress
        self.step_log: deque[Step] = deque(maxlen=_STEP_LOG_SIZE)
        self._cache = SlotKVCache(loaded.num_layers, max_batch_size, _IDLE_COLUMNS)
        self._plan: LeanPlan | LoraPlan | None = None  # the decode rows' LoRA plan (a list: the lean forward's)
        self._columns = torch.arange(0, device=loaded.device)
        self._thread = threading.Thread(target=self._run, name=f"tunery-scheduler-{loaded.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Requests are waiting or running, so the loop is stepping (``passes`` must grow) until they end."""
        return bool(self._rows or self._inbox)

    @property
    def active_rows(self) -> int:
        """Requests waiting, prefilling or decoding; a cancelled one leaves at the next step."""
        with self._wake:
            return self._in_flight

    @property
    def cache_bytes(self) -> int:
        """Memory held by the batch's key/value buffers."""
        return self._cache.nbytes

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
                    self.passes += 1
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
        try:
            self._regroup()  # rows that finished in the last step free their slots
            with self._wake:
                admitted = self._take_waiting()
            for handle in admitted:
                self._admit(handle)
            if len(self._rows) > self._decoding:
                self._prefill_chunk()
            self._regroup()
        except Exception as exc:  # e.g. out of memory growing the cache: these rows cannot go on
            log.exception("Regrouping the batch of model %s failed", self._loaded.name)
            message = f"Generation failed: {exc}"
            self._fail(self._rows, lambda: GenerationError(message), exc)
            self._reset()
            return True
        if self._decoding:
            self._decode_step()
        return True

    def _take_waiting(self) -> list[RequestHandle]:
        """Take waiting requests in arrival order while slots are free (call it holding ``_wake``)."""
        room = self._max_batch_size - len(self._rows)
        admitted: list[RequestHandle] = []
        while self._inbox and len(admitted) < room:
            handle = self._inbox.popleft()
            if handle.stopped:
                self._end_cancelled(handle, 0)
                continue
            admitted.append(handle)
        return admitted

    def _admit(self, handle: RequestHandle) -> None:
        """Give a request the next slot, with its prompt's longest cached prefix already in place."""
        try:
            row = _Row(handle, self._loaded)
        except Exception as exc:
            self._fail_one(handle, exc)
            return
        slot = len(self._rows)
        if self.prefix_cache is not None:
            blocks = self.prefix_cache.lookup(row.prefix_key, handle.request.prompt_ids)
            try:  # if the copy fails (memory), the whole prompt is simply read
                if blocks:
                    keys = torch.cat([block.keys for block in blocks], dim=2)
                    values = torch.cat([block.values for block in blocks], dim=2)
                    self._cache.write(slot, 0, keys, values)
                    row.fed = keys.shape[2]
            except Exception:
                log.exception("Copying a cached prefix failed for model %s", self._loaded.name)
        self._rows.append(row)

    # --------------------------------------------------------------------------------------- prefill
    def _prefill_chunk(self) -> None:
        """Read the next chunk of the oldest prompts (one pass, ``max_prefill_tokens`` padded tokens at most)."""
        loaded, budget = self._loaded, self._max_prefill_tokens
        first = self._decoding
        rows: list[_Row] = []
        sizes: list[int] = []
        width = 0
        for row in self._rows[first:]:
            size = min(row.prompt_tokens - row.fed, budget if not rows else width)
            if rows and (size < 1 or max(width, size) * (len(rows) + 1) > budget):
                break
            rows.append(row)
            sizes.append(size)
            width = max(width, size)
        device = loaded.device
        began = time.perf_counter()
        try:
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            positions = torch.zeros((len(rows), width), dtype=torch.long)
            starts = [row.fed for row in rows]
            self._cache.ensure_columns(max(s + n for s, n in zip(starts, sizes, strict=True)))
            scratch = self._cache.scratch_column
            columns = torch.full((len(rows), width), scratch, dtype=torch.long)
            for i, (row, start, size) in enumerate(zip(rows, starts, sizes, strict=True)):
                ids[i, width - size :] = torch.tensor(row.handle.request.prompt_ids[start : start + size])
                span = torch.arange(start, start + size)
                positions[i, width - size :] = span
                columns[i, width - size :] = span
            read_length = max(s + n for s, n in zip(starts, sizes, strict=True))
            keys = torch.arange(read_length)
            # Query j of row i sees the columns up to its own; a padding query sees column 0 only (no empty row
            # of the mask, which would give NaN; its output is thrown away).
            limit = torch.where(columns == scratch, 0, columns)
            mask = keys[None, None, :] <= limit[:, :, None]
            self._cache.bind(
                torch.arange(first, first + len(rows), device=device)[:, None],
                columns.to(device),
                slice(first, first + len(rows)),
                read_length,
            )
            plan = self._plan_for([row.adapter for row in rows], width, grouped=True)
            if isinstance(plan, list):
                assert loaded.lean is not None
                logits = loaded.lean.forward(
                    ids.to(device), positions.to(device), columns.to(device), mask.to(device), self._cache, first, plan
                )
            else:
                with loaded.lora.applied(plan):
                    output = loaded.model(
                        input_ids=ids.to(device),
                        attention_mask=_additive(mask[:, None].to(device), loaded.model.dtype),
                        position_ids=positions.to(device),
                        cache=self._cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                logits = output.logits[:, -1]
            for row, size in zip(rows, sizes, strict=True):
                row.fed += size
            done = [i for i, row in enumerate(rows) if not row.prefilling]
            tokens = sample_rows(logits[done], [rows[i].sampler for i in done]) if done else []
            labels = tuple(row.label for row in rows)
            self.step_log.append(Step("prefill", labels, width * len(rows), time.perf_counter() - began))
        except Exception as exc:
            log.exception("Prefill failed for %d request(s) of model %s", len(rows), loaded.name)
            message = f"Generation failed while reading the prompt: {exc}"
            self._fail(rows, lambda: GenerationError(message), exc)
            return
        finished = [rows[i] for i in done]
        if self.prefix_cache is not None:
            for row in finished:
                slot = self._rows.index(row)
                self.prefix_cache.insert(
                    row.prefix_key,
                    row.handle.request.prompt_ids,
                    lambda start, end, slot=slot: self._cache.read(slot, start, end),  # type: ignore[misc]
                )
        self._accept(finished, tokens)

    # ---------------------------------------------------------------------------------------- decode
    def _regroup(self) -> None:
        """Drop finished and cancelled rows and move rows whose prompt is read among the decoding ones.

        Only rows whose slot changes are copied (a row moves down into a gap, or a new decoding row past rows
        still reading theirs).
        """
        for row in self._rows:
            if row.handle.stopped and not row.done:
                row.done = True
                self._end_cancelled(row.handle, row.generated)
        live = [row for row in self._rows if not row.done]
        if not live and self._cache.capacity > _IDLE_COLUMNS:  # idle: give back what a long request grew
            self._cache = SlotKVCache(self._loaded.num_layers, self._max_batch_size, _IDLE_COLUMNS)
        decoding = [row for row in live if not row.prefilling]
        order = decoding + [row for row in live if row.prefilling]
        if order == self._rows:
            if len(decoding) != self._decoding:
                self._decoding, self._plan = len(decoding), None
            return
        slots = {id(row): i for i, row in enumerate(self._rows)}
        moves = [(slots[id(row)], i, row.fed) for i, row in enumerate(order) if slots[id(row)] != i]
        self._cache.move_rows(moves)
        self._rows, self._decoding = order, len(decoding)
        self._plan = None

    def _decode_step(self) -> None:
        loaded, rows = self._loaded, self._rows[: self._decoding]
        device = loaded.device
        began = time.perf_counter()
        try:
            if self._plan is None:
                self._plan = self._plan_for([row.adapter for row in rows], 1, grouped=False)
            fed = [row.fed for row in rows]
            length = max(fed) + 1
            self._cache.ensure_columns(length)
            if self._columns.shape[0] < length:
                self._columns = torch.arange(max(length, 2 * self._columns.shape[0]), device=device)
            ids = torch.tensor([[row.last_token] for row in rows], device=device)
            positions = torch.tensor(fed, device=device)[:, None]
            allowed = self._columns[:length][None, :] <= positions
            if isinstance(self._plan, list):
                assert loaded.lean is not None
                logits = loaded.lean.forward(
                    ids, positions, positions, allowed[:, None], self._cache, 0, self._plan, lengths=positions[:, 0] + 1
                )
            else:
                mask = _additive(allowed[:, None, None, :], loaded.model.dtype)
                self._cache.bind(self._columns[: len(rows), None], positions, slice(0, len(rows)), length)
                with loaded.lora.applied(self._plan):
                    output = loaded.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        cache=self._cache,
                        use_cache=True,
                    )
                logits = output.logits[:, -1]
            tokens = sample_rows(logits, [row.sampler for row in rows])
            labels = tuple(row.label for row in rows)
            self.step_log.append(Step("decode", labels, len(rows), time.perf_counter() - began))
        except Exception as exc:
            log.exception("Decode step failed for %d request(s) of model %s", len(rows), loaded.name)
            message = f"Generation failed: {exc}"
            self._fail(rows, lambda: GenerationError(message), exc)  # their slots are dropped at the next regroup
            return
        for row in rows:
            row.fed += 1
        self._accept(rows, tokens)

    def _plan_for(self, adapters: list[LoraAdapter | None], tokens: int, *, grouped: bool) -> LeanPlan | LoraPlan:
        """The LoRA plan of a pass: the lean forward's (a list) when the model and these adapters allow it."""
        lean = self._loaded.lean
        if lean is not None:
            plan = lean.plan(adapters, tokens, grouped=grouped)
            if plan is not None:
                return plan
        return self._loaded.lora.plan(adapters, grouped=grouped)

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
        self._fail(self._rows, lambda: GenerationError("Generation failed: the batch was reset."), None)
        self._rows, self._decoding, self._plan = [], 0, None

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
