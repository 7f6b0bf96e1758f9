"""Executes one eval run: sample the model for a batch of items at once, grade each item, record results.

Items are sampled a round of ``batch_size * chunk_batches`` at a time through ``ChatService.complete_batch``,
which keeps ``batch_size`` of them in the engine at once (so they share decode steps; a new item joins as
soon as one ends); then each item is graded by every testing criterion through the graders module (model
graders reach the engine through the ``Judge`` the caller hands in). After each round the output items are
saved and the run's status checked: a cancel stops the run there, and a crash loses at most one round,
because a resumed run skips the rows that already have an output item. One item's failure (a template variable its
row lacks, a grader error, an over-long prompt) is recorded on that item; only run-wide problems (the model
gone, the data source unreadable) fail the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunery.domain.errors import ServiceError
from tunery.domain.evals import NO_ERROR, Eval, EvalRun, OutputItem, RunStatus, new_output_item_id
from tunery.domain.models import AdapterRef
from tunery.graders import Judge, PythonSandbox, parse_grader, passes, run_grader
from tunery.graders import templates as grader_templates
from tunery.graders.sample import sample_from_text
from tunery.services.chat import BatchAnswer, BatchSampling, ChatService
from tunery.services.eval_requests import (
    CompletionsDataSource,
    CreateEvalRunRequest,
    ItemReferenceMessages,
    TemplateMessages,
)
from tunery.services.evals import EvalService, Row, message_text
from tunery.storage.evals import EvalStore

log = logging.getLogger(__name__)


class RunStopped(Exception):
    """The run was canceled or taken over by another worker: stop quietly."""


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    batch_size: int = 32  # items in the engine at once
    # Items sampled per round between saves, cancel checks and progress: several engine batches, so the engine
    # stays full while a round's slowest answers finish (a new item joins as soon as one ends).
    chunk_batches: int = 4
    heartbeat_every_s: float = 5.0


class EvalRunExecutor:
    """Runs claimed eval runs to the end (or to a cancel)."""

    def __init__(
        self,
        evals: EvalService,
        chat: ChatService,
        judge: Callable[[str], Judge],
        settings: RunnerSettings,
        *,
        resolve_target: Callable[[EvalRun], AdapterRef] | None = None,
        on_finished: Callable[[EvalRun], None] | None = None,
        sandbox: PythonSandbox | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._evals = evals
        self._store: EvalStore = evals.store
        self._chat = chat
        self._judge = judge
        self._settings = settings
        self._resolve_target = resolve_target
        self._on_finished = on_finished
        self._sandbox = sandbox
        self._clock = clock

    def run_next(self, worker_id: str, stale_after: float) -> bool:
        """Claim one run (queued, or abandoned by a dead worker) and execute it; False when there was none."""
        run = self._store.claim_next(worker_id, self._clock(), stale_after)
        if run is None:
            return False
        self.execute(run, worker_id)
        return True

    def execute(self, run: EvalRun, worker_id: str) -> None:
        if run.status is RunStatus.QUEUED:
            started = self._store.transition(run.id, RunStatus.IN_PROGRESS, expect={RunStatus.QUEUED})
            if started is None:
                return  # canceled meanwhile
            run = started
        beating = threading.Event()

        def beat() -> None:  # keeps the run ours while one long batch is in the engine
            while not beating.wait(self._settings.heartbeat_every_s):
                self._store.heartbeat(run.id, worker_id, self._clock())

        threading.Thread(target=beat, name="tunery-eval-heartbeat", daemon=True).start()
        try:
            self._execute(run, worker_id)
        except RunStopped:
            return
        except ServiceError as exc:
            self._fail(run, "sampling_failed" if exc.param is None else "invalid_data_source", exc.message)
        except Exception as exc:  # a bug or an engine crash: the run fails clearly, the runner lives on
            log.exception("eval run %s failed", run.id)
            self._fail(run, "internal_error", f"The run failed: {exc}")
        finally:
            beating.set()

    def _fail(self, run: EvalRun, code: str, message: str) -> None:
        self._finish(run, RunStatus.FAILED, {"code": code, "message": message})

    def _execute(self, run: EvalRun, worker_id: str) -> None:
        ev = self._store.get_eval(run.project_id, run.eval_id)
        request = CreateEvalRunRequest.model_validate({"data_source": run.data_source})
        source = request.data_source
        rows = self._evals.rows(run.project_id, source.source)
        criteria = [(c, parse_grader(_spec(c), param="testing_criteria")) for c in ev.testing_criteria]
        ref = None
        if isinstance(source, CompletionsDataSource):
            if run.target is not None and run.target.checkpoint is not None and self._resolve_target is not None:
                ref = self._resolve_target(run)
            else:
                ref = self._evals.resolve_model(run.project_id, source.model)
        done = self._store.done_indices(run.id)
        pending = [index for index in range(len(rows)) if index not in done]
        judge = self._judge(run.project_id)
        chunk = self._settings.batch_size * self._settings.chunk_batches
        for start in range(0, len(pending), chunk):
            self._check_alive(run, worker_id)
            batch = pending[start : start + chunk]
            items = self._batch(ev, run, source, ref, rows, batch, criteria, judge)
            self._store.insert_items(items)
            self._save_progress(run)
        self._check_alive(run, worker_id)
        self._finish(run, RunStatus.COMPLETED, dict(NO_ERROR))

    def _check_alive(self, run: EvalRun, worker_id: str) -> None:
        status = self._store.heartbeat(run.id, worker_id, self._clock())
        if status is RunStatus.CANCELED:  # still ours: record what was graded before the cancel
            current = self._store.get_run_any(run.id)
            if current is not None:
                self._store.save_run(current.with_changes(**summarise(self._store.all_items(run.id), run)))
        if status is not RunStatus.IN_PROGRESS:
            raise RunStopped()

    def _batch(
        self,
        ev: Eval,
        run: EvalRun,
        source: Any,
        ref: AdapterRef | None,
        rows: list[Row],
        batch: list[int],
        criteria: list[tuple[dict[str, Any], Any]],
        judge: Judge,
    ) -> list[OutputItem]:
        samples: dict[int, dict[str, Any]] = {}
        answers: dict[int, tuple[str, str] | None] = {}
        if isinstance(source, CompletionsDataSource):
            assert ref is not None
            sampling = self._evals.sampling(source)
            conversations: list[list[dict[str, Any]]] = []
            for index in batch:
                conversation, error = _conversation(source, rows[index].item)
                conversations.append(conversation)
                samples[index] = _sample_record(conversation, "", "", source.model, sampling, error=error)
            runnable = [(i, c) for i, c in zip(batch, conversations, strict=True) if not samples[i]["error"]["code"]]
            replies = self._chat.complete_batch(
                ref,
                [c for _, c in runnable],
                BatchSampling(
                    max_tokens=sampling["max_completion_tokens"],
                    temperature=sampling["temperature"],
                    top_p=sampling["top_p"],
                    seed=sampling["seed"],
                ),
                window=self._settings.batch_size,
            )
            for (index, conversation), reply in zip(runnable, replies, strict=True):
                if isinstance(reply, BatchAnswer):
                    samples[index] = _sample_record(conversation, reply.text, reply.finish_reason, source.model,
                                                    sampling, usage=reply.usage)  # fmt: skip
                    answers[index] = (reply.text, reply.finish_reason)
                else:
                    error = {"code": reply.code or "sampling_failed", "message": reply.message}
                    samples[index] = _sample_record(conversation, "", "", source.model, sampling, error=error)
        else:
            for index in batch:
                given = rows[index].sample
                text = _sample_text(given) if given is not None else None
                samples[index] = _sample_record([], text or "", "stop" if given else "", str((given or {}).get(
                    "model") or ""), None)  # fmt: skip
                answers[index] = (text, "stop") if text is not None else None
        now = int(self._clock())
        items = []
        for index in batch:
            record = samples[index]
            item = rows[index].item
            errored = bool(record["error"]["code"])
            answer = answers.get(index)
            if answer is not None:
                grading_sample = sample_from_text(answer[0], finish_reason=answer[1])
            elif isinstance(source, CompletionsDataSource) or rows[index].sample is None:
                grading_sample = {} if errored else sample_from_text("")
            else:
                grading_sample = dict(rows[index].sample or {})
            results = []
            for raw, grader in criteria:
                result = self._grade(raw, grader, grading_sample, item, judge, errored)
                errored = errored or result.pop("_errored")
                results.append(result)
            passed = not errored and all(r["passed"] for r in results)
            items.append(
                OutputItem(
                    id=new_output_item_id(),
                    run_id=run.id,
                    eval_id=ev.id,
                    created_at=now,
                    status="pass" if passed else "fail",
                    datasource_item_id=index,
                    datasource_item=item,
                    results=results,
                    sample=record,
                    errored=errored,
                )
            )
        return items

    def _grade(
        self, raw: dict[str, Any], grader: Any, sample: dict[str, Any], item: dict[str, Any], judge: Judge,
        sample_failed: bool,
    ) -> dict[str, Any]:  # fmt: skip
        base = {"name": raw["id"], "type": raw.get("type")}
        if sample_failed:
            error = {"code": "sample_error", "message": "The model produced no sample for this item."}
            return {**base, "score": 0.0, "passed": False, "sample": None, "_errored": True, "error": error}
        try:
            result = run_grader(grader, sample=sample, item=item, judge=judge, sandbox=self._sandbox)
        except Exception as exc:  # a grader bug must not take the run down: it is this item's error
            log.exception("grader %s raised", raw.get("name"))
            return {**base, "score": 0.0, "passed": False, "sample": None, "_errored": True,
                    "error": {"code": "other_error", "message": str(exc)}}  # fmt: skip
        score = float(result.reward)
        errors = result.metadata.errors
        out: dict[str, Any] = {**base, "score": score, "passed": (not result.errored) and passes(grader, score),
                               "sample": None, "_errored": result.errored}  # fmt: skip
        if result.errored:
            flags = [k for k, v in errors.model_dump().items() if v is True]
            details = [v for k, v in errors.model_dump().items() if isinstance(v, str) and v]
            message = result.detail or "; ".join(details) or "The grader failed on this item."
            out["error"] = {"code": flags[0] if flags else "other_error", "message": message}
        usage = result.model_grader_token_usage_per_model
        if usage:
            model, counts = next(iter(usage.items()))
            out["sample"] = {"model": model, "usage": counts.model_dump()}
        return out

    def _save_progress(self, run: EvalRun) -> None:
        current = self._store.get_run_any(run.id)
        if current is None or current.status is not RunStatus.IN_PROGRESS:
            return
        self._store.save_run(current.with_changes(**summarise(self._store.all_items(run.id), run)))

    def _finish(self, run: EvalRun, status: RunStatus, error: dict[str, str]) -> None:
        summary = summarise(self._store.all_items(run.id), run)
        finished = self._store.transition(
            run.id, status, expect={RunStatus.IN_PROGRESS, RunStatus.QUEUED}, error=error,
            finished_at=int(self._clock()), **summary,
        )  # fmt: skip
        if finished is None:  # canceled meanwhile: keep the canceled status, record the counts
            current = self._store.get_run_any(run.id)
            if current is not None:
                self._store.save_run(current.with_changes(**summary))
            return
        if self._on_finished is not None:
            try:
                self._on_finished(finished)
            except Exception:
                log.exception("after eval run %s", run.id)


def summarise(items: list[OutputItem], run: EvalRun) -> dict[str, Any]:
    """``result_counts``, ``per_testing_criteria_results`` and ``per_model_usage`` from the output items."""
    counts = {"total": len(items), "errored": 0, "failed": 0, "passed": 0}
    per_criterion: dict[str, dict[str, Any]] = {}
    usage: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.errored:
            counts["errored"] += 1
        elif item.status == "pass":
            counts["passed"] += 1
        else:
            counts["failed"] += 1
        for result in item.results:
            entry = per_criterion.setdefault(result["name"], {"testing_criteria": result["name"], "passed": 0,
                                                              "failed": 0})  # fmt: skip
            entry["passed" if result.get("passed") else "failed"] += 1
            graded = result.get("sample") or {}
            if graded.get("model"):
                _add_usage(usage, graded["model"], graded.get("usage") or {})
        sample_usage = item.sample.get("usage") or {}
        if item.sample.get("model") and sample_usage.get("total_tokens"):
            _add_usage(usage, item.sample["model"], sample_usage)
    return {
        "result_counts": counts,
        "per_testing_criteria_results": list(per_criterion.values()),
        "per_model_usage": list(usage.values()),
    }


def _add_usage(usage: dict[str, dict[str, Any]], model: str, counts: dict[str, Any]) -> None:
    entry = usage.setdefault(model, {"model_name": model, "invocation_count": 0, "prompt_tokens": 0,
                                     "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})  # fmt: skip
    entry["invocation_count"] += 1
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        entry[key] += int(counts.get(key) or 0)


def _spec(criterion: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in criterion.items() if k != "id"}


def _conversation(source: CompletionsDataSource, item: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The chat messages for one item, or an error record when its row cannot fill the template."""
    messages = source.input_messages
    try:
        if isinstance(messages, ItemReferenceMessages):
            node: Any = {"item": item}
            for part in messages.item_reference.strip().removeprefix("{{").removesuffix("}}").strip().split("."):
                node = node[part]
            return [{"role": m["role"], "content": message_text(m.get("content"))} for m in node], dict(NO_ERROR)
        assert isinstance(messages, TemplateMessages)
        rendered = []
        for index, message in enumerate(messages.template):
            text = message_text(message.get("content"))
            param = f"data_source.input_messages.template[{index}].content"
            rendered.append({"role": message["role"],
                             "content": grader_templates.render(text, sample={}, item=item, param=param)})  # fmt: skip
        return rendered, dict(NO_ERROR)
    except Exception as exc:
        return [], {"code": "invalid_variable_error", "message": str(exc)}


def _sample_text(sample: dict[str, Any]) -> str | None:
    if isinstance(sample.get("output_text"), str):
        return str(sample["output_text"])
    choices = sample.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return message_text((choices[0].get("message") or {}).get("content"))
    return None


def _sample_record(
    conversation: list[dict[str, Any]],
    text: str,
    finish_reason: str,
    model: str,
    sampling: dict[str, Any] | None,
    *,
    usage: Any = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The output item's ``sample`` with every field OpenAI's schema requires filled (spec §2.5)."""
    sampling = sampling or {"temperature": 1.0, "top_p": 1.0, "seed": 42, "max_completion_tokens": 0}
    prompt = usage.prompt_tokens if usage is not None else 0
    completion = usage.completion_tokens if usage is not None else 0
    return {
        "input": [{"role": m["role"], "content": message_text(m.get("content"))} for m in conversation],
        "output": [{"role": "assistant", "content": text}] if finish_reason else [],
        "finish_reason": finish_reason,
        "model": model,
        "usage": {
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens": prompt,
            "cached_tokens": 0,
        },
        "error": error or dict(NO_ERROR),
        "temperature": sampling["temperature"],
        "max_completion_tokens": sampling["max_completion_tokens"],
        "top_p": sampling["top_p"],
        "seed": sampling["seed"],
    }
