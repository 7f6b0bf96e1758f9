"""Chat completions: resolve a deployment or model name, apply the chat template, generate, count usage.

``model`` may name a deployment, a fine-tuned model, a checkpoint or a base model (spec §3.5); the
deployment-scoped path names the deployment only (unknown → 404 ``DeploymentNotFound``). The engine
batches concurrent requests; ``n`` choices run as ``n`` concurrent requests. No torch here.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from tunery.catalog import Catalog
from tunery.domain.errors import InvalidRequest, NotFound, ServiceError, Unavailable
from tunery.domain.models import AdapterRef
from tunery.inference.engine import Engine, GenerationChunk, GenerationRequest, SamplingParams, adapters_status
from tunery.services.deployments import DeploymentService
from tunery.services.models import ModelService
from tunery.services.runs import adapter_path
from tunery.storage.blobs import BlobStore

DEFAULT_MAX_TOKENS = 512
MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4
MAX_MESSAGES = 2048
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1  # OpenAI's int64
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

EngineFactory = Callable[[], Engine]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    tools: list[dict[str, Any]] | None = None
    model: str | None = None  # a deployment, model or checkpoint name; the deployment path may name it instead


@dataclass(slots=True)
class ChoiceDelta:
    """Streamed piece of one choice; ``finish_reason`` set on its last piece."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Completion:
    """A whole (non-streamed) answer."""

    id: str
    created: int
    model: str
    texts: list[str]
    finish_reasons: list[str]
    usage: Usage


@dataclass(slots=True)
class CompletionStream:
    """A streamed answer: iterate ``deltas``; ``usage`` is complete once they are exhausted."""

    id: str
    created: int
    model: str
    deltas: Iterator[ChoiceDelta]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class BatchSampling:
    """Sampling for every conversation of a batch; ``max_tokens`` None = as much as the context allows."""

    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    text: str
    finish_reason: str
    usage: Usage
    max_tokens: int


class ChatService:
    def __init__(
        self,
        models: ModelService,
        deployments: DeploymentService,
        catalog: Catalog,
        blobs: BlobStore,
        engine: EngineFactory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models = models
        self._deployments = deployments
        self._catalog = catalog
        self._blobs = blobs
        self._engine_factory = engine
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._clock = clock

    # ----------------------------------------------------------------------------------------- naming
    def resolve(self, project_id: str, *, model: str | None, deployment: str | None) -> AdapterRef:
        """A deployment (by the path, or by ``model``), else a fine-tuned model, checkpoint or base model."""
        if deployment is not None:
            return self._deployments.resolve(project_id, deployment)
        if not model:
            raise InvalidRequest("Missing required parameter: 'model'.", param="model")
        found = self._deployments.find(project_id, model)
        if found is not None:
            return found
        try:
            return self._models.resolve(project_id, model)
        except NotFound:
            raise NotFound(
                f"The model or deployment '{model}' does not exist in this project.",
                param="model",
                code="DeploymentNotFound",
            ) from None

    # ----------------------------------------------------------------------------------------- chat
    def create(
        self,
        project_id: str,
        request: ChatRequest,
        *,
        deployment: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion | CompletionStream:
        """Answer a chat request; setting ``cancel`` (the client left) stops every choice at the next step."""
        cancel = cancel if cancel is not None else threading.Event()
        ref = self.resolve(project_id, model=request.model, deployment=deployment)
        requests = self._generation_requests(ref, request, cancel)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(self._clock())
        name = deployment or request.model or ref.name
        stream = CompletionStream(id=completion_id, created=created, model=name, deltas=iter(()))
        stream.deltas = self._run(requests, stream.usage, cancel)
        if request.stream:
            return stream
        texts = [""] * request.n
        reasons = ["stop"] * request.n
        for delta in stream.deltas:
            texts[delta.index] += delta.text
            if delta.finish_reason:
                reasons[delta.index] = delta.finish_reason
        return Completion(
            id=completion_id, created=created, model=name, texts=texts, finish_reasons=reasons, usage=stream.usage
        )

    def complete_batch(
        self,
        ref: AdapterRef,
        conversations: list[list[dict[str, Any]]],
        sampling: BatchSampling,
        *,
        window: int,
    ) -> list[BatchAnswer | ServiceError]:
        """Answer many conversations with one model at once: up to ``window`` are in the engine together, so
        they share its decode steps (continuous batching). A conversation that cannot run (too long for the
        context) gets its error in its place; the others still run."""
        prepared: list[GenerationRequest | ServiceError] = []
        for index, messages in enumerate(conversations):
            request = ChatRequest(
                messages=messages, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, n=1, stop=(), seed=sampling.seed, stream=False, include_usage=False,
            )  # fmt: skip
            try:
                prepared.append(replace(self._generation_requests(ref, request)[0], request_id=str(index)))
            except ServiceError as exc:
                prepared.append(exc)
        engine = self._engine_instance()

        def answer(item: GenerationRequest | ServiceError) -> BatchAnswer | ServiceError:
            if isinstance(item, ServiceError):
                return item
            text, reason, usage = "", "stop", Usage()
            try:
                for chunk in engine.generate(item):
                    text += chunk.text
                    if chunk.finish_reason is not None:
                        reason = chunk.finish_reason
                        usage = Usage(chunk.prompt_tokens, chunk.completion_tokens)
            except ServiceError as exc:
                return exc
            except Exception as exc:  # one failed generation is that item's error, not the batch's
                return Unavailable(f"Generation failed: {exc}")
            return BatchAnswer(text=text, finish_reason=reason, usage=usage, max_tokens=item.params.max_tokens)

        with ThreadPoolExecutor(max_workers=max(1, window), thread_name_prefix="tunery-batch") as pool:
            return list(pool.map(answer, prepared))

    def warm(self, ref: AdapterRef) -> None:
        """Load a model's weights and adapter now (deployments call this), by generating one token."""
        request = ChatRequest(
            messages=[{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0.0, top_p=1.0, n=1,
            stop=(), seed=0, stream=False, include_usage=False,
        )  # fmt: skip
        for _ in self._run(self._generation_requests(ref, request), Usage(), threading.Event()):
            pass

    def active_rows(self) -> int:
        """Choices being generated now (0 before the engine is built)."""
        return self._engine.active_rows() if self._engine is not None else 0

    def generated_tokens(self) -> int:
        """Tokens the engine has sampled since it was built (0 before)."""
        return self._engine.generated_tokens() if self._engine is not None else 0

    def engine_status(self) -> dict[str, Any]:
        """The engine's state for ``/health``: its process, memory and restarts when it runs in a child."""
        engine = self._engine
        if engine is None:
            return {"state": "not started"}
        status = getattr(engine, "status", None)
        if callable(status):
            return dict(status())
        memory = getattr(engine, "adapter_memory", None)
        adapters = adapters_status(memory()) if callable(memory) else None
        active = engine.active_rows()
        return {"isolation": "thread", "state": "running", "active_requests": active, "adapters": adapters}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def _generation_requests(
        self, ref: AdapterRef, request: ChatRequest, cancel: threading.Event | None = None
    ) -> list[GenerationRequest]:
        tokenizer = self._catalog.chat_tokenizer(ref.base_model)
        prompt = tokenizer.render(request.messages, request.tools, add_generation_prompt=True)
        prompt_ids = tokenizer.encode(prompt)
        room = tokenizer.context_length - len(prompt_ids)
        if room < 1:
            raise InvalidRequest(
                f"This model's maximum context length is {tokenizer.context_length} tokens. However, your messages "
                f"resulted in {len(prompt_ids)} tokens, which leaves no room for a completion. Please reduce the "
                "length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = request.max_tokens or min(DEFAULT_MAX_TOKENS, room)
        if max_tokens > room:
            raise InvalidRequest(
                f"This model's maximum context length is {tokenizer.context_length} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        adapter_dir = str(adapter_path(self._blobs, ref.adapter_key)) if ref.adapter_key else None
        return [
            GenerationRequest(
                base_model=ref.base_model,
                prompt_ids=prompt_ids,
                params=SamplingParams(
                    max_tokens=max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    stop=request.stop,
                    seed=None if request.seed is None else request.seed + index,
                ),
                adapter_dir=adapter_dir,
                adapter_name=ref.name if ref.adapter_key else None,
                request_id=f"{index}",
                stop_token_ids=tuple(tokenizer.stop_token_ids),
                cancel=cancel,
            )
            for index in range(request.n)
        ]

    def _engine_instance(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine

    def _run(self, requests: list[GenerationRequest], usage: Usage, cancel: threading.Event) -> Iterator[ChoiceDelta]:
        """Run every choice concurrently; yield their pieces as they come (choices interleave).

        When ``cancel`` is set, or this iterator is closed, each choice stops at its next piece: its engine
        iterator is closed, which takes its row out of the batch.
        """
        engine = self._engine_instance()
        pieces: queue.Queue[tuple[int, GenerationChunk | BaseException | None]] = queue.Queue()

        def produce(index: int, request: GenerationRequest) -> None:
            chunks = engine.generate(request)
            try:
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    pieces.put((index, chunk))
            except BaseException as exc:  # handed to the consumer, which raises it
                pieces.put((index, exc))
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # the engine drops the row of an unfinished request
            pieces.put((index, None))

        threads = [
            threading.Thread(target=produce, args=(i, r), name="tunery-chat", daemon=True)
            for i, r in enumerate(requests)
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        prompt_counted = False
        try:
            while running:
                index, item = pieces.get()
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, ServiceError):
                    raise item
                if isinstance(item, BaseException):
                    raise Unavailable(f"Generation failed: {item}") from item
                if item.finish_reason is not None:
                    if not prompt_counted:
                        usage.prompt_tokens = item.prompt_tokens
                        prompt_counted = True
                    usage.completion_tokens += item.completion_tokens
                if item.text or item.finish_reason:
                    yield ChoiceDelta(index=index, text=item.text, finish_reason=item.finish_reason)
        finally:
            cancel.set()  # finished, failed or abandoned: no choice keeps generating for nobody
