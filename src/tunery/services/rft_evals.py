"""The eval of a reinforcement fine-tuning job: one run per validation evaluation, from the trainer's grades.

OpenAI creates an eval for every RFT job and, at each validation step, "the input prompts, model samples,
grader outputs, and more metadata will be combined to make a new eval run for that step" (spec §3.4). Tunery
does the same without sampling or grading anything twice: the trainer writes every graded validation answer
of an evaluation to its run folder (``RunFolder.graded``) before the record reporting it; this records them as
a ``completed`` run of the job's eval.

* The eval is created with the job (so ``eval_id`` is on the create response): named after the job,
  ``metadata.fine_tuning_job_id``, a custom data source with any object as item and the sample schema, and the
  job's grader as its testing criterion (a ``multi`` grader, which cannot be one, is listed as its children,
  and each output item adds the combined reward as one more result named after it).
* Each evaluation becomes a run ``"step <N>"`` (step 0: the base model before training) on the checkpoint
  saved at that step, its data source the validation file, ``metadata`` ``{fine_tuning_job_id, step}``.
* One output item per graded answer: ``eval_samples`` answers per validation row, so item ``datasource_item_id``
  is ``row * eval_samples + sample`` (the row itself is ``datasource_item``). An item passes when the reward
  passes the grader (1 for string_check, else ``pass_threshold`` or the middle of its range), so with a
  pass/fail grader the run's pass rate is the evaluation's ``valid_reward_mean``.
* The eval cannot be deleted while its job has not ended (409).
* A resumed job re-evaluates the steps after the one it resumes from: their runs are replaced.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunery.domain.errors import Conflict, NotFound
from tunery.domain.evals import (
    NO_ERROR,
    Eval,
    EvalRun,
    OutputItem,
    RunStatus,
    new_eval_id,
    new_output_item_id,
    new_run_id,
)
from tunery.domain.jobs import Job
from tunery.domain.pagination import Order, PageRequest
from tunery.graders import GraderMulti, parse_grader, passes
from tunery.services.eval_runs import summarise
from tunery.services.evals import SAMPLE_SCHEMA, message_text
from tunery.storage.evals import EvalStore
from tunery.storage.jobs import JobStore
from tunery.training.progress import read_graded

log = logging.getLogger(__name__)

RUNS_PAGE = 100


class RftEvals:
    def __init__(self, store: EvalStore, jobs: JobStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._jobs = jobs
        self._clock = clock

    def check_delete(self, ev: Eval) -> None:
        """Refuse to delete the eval of an RFT job that has not ended (its next evaluation is recorded there).

        Raises:
            Conflict: the job is still running (or waiting, paused...).
        """
        job_id = (ev.metadata or {}).get("fine_tuning_job_id")
        if not job_id:
            return
        try:
            job = self._jobs.get(ev.project_id, job_id)
        except NotFound:
            return
        if job.extras.get("eval_id") == ev.id and not job.status.terminal:
            raise Conflict(
                f"Eval {ev.id} records the evaluations of fine-tuning job {job_id}, which is {job.status.value}: "
                "delete it once the job has ended.",
                param="eval_id",
            )

    def create_eval(self, project_id: str, job_id: str, raw_grader: dict[str, Any]) -> str:
        """Create the job's eval; returns its id."""
        criteria = [_criterion(raw) for raw in _criteria(raw_grader)]
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {"item": {"type": "object"}, "sample": SAMPLE_SCHEMA},
            "required": ["item", "sample"],
        }
        ev = Eval(
            id=new_eval_id(),
            project_id=project_id,
            name=job_id,
            created_at=int(self._clock()),
            data_source_config={"type": "custom", "schema": schema},
            testing_criteria=criteria,
            metadata={"fine_tuning_job_id": job_id},
        )
        self._store.insert_eval(ev)
        return ev.id

    def record(self, job: Job, step: int, model: str, path: Path, *, temperature: float = 1.0) -> EvalRun | None:
        """Record the graded answers in ``path`` as the completed run of ``step``; None when the job has no eval
        (deleted, or created before jobs had one) or the file is missing."""
        eval_id = job.extras.get("eval_id")
        graded = read_graded(path)
        if not eval_id or not graded:
            return None
        try:
            ev = self._store.get_eval(job.project_id, str(eval_id))
        except NotFound:
            return None
        self.forget_after(job, step - 1)
        samples = max(int(g.get("sample", 0)) for g in graded) + 1
        now = int(self._clock())
        run = EvalRun(
            id=new_run_id(),
            eval_id=ev.id,
            project_id=job.project_id,
            name=f"step {step}",
            model=model,
            status=RunStatus.COMPLETED,
            created_at=now,
            data_source={"type": "jsonl", "source": {"type": "file_id", "id": job.validation_file or ""}},
            metadata={"fine_tuning_job_id": job.id, "step": str(step)},
            items_total=len(graded),
            finished_at=now,
        )
        grader = parse_grader(job.extras["grader"], param="grader")
        items = [self._item(ev, run, grader, g, samples, model, temperature, now) for g in graded]
        run = run.with_changes(**summarise(items, run))
        self._store.insert_finished_run(run, items)
        return run

    def forget_after(self, job: Job, step: int) -> None:
        """Delete the runs of steps after ``step`` (a resumed job evaluates them again)."""
        eval_id = job.extras.get("eval_id")
        if not eval_id:
            return
        try:
            runs = self._store.list_runs(job.project_id, str(eval_id), PageRequest(limit=RUNS_PAGE, order=Order.DESC))
        except NotFound:
            return
        for run in runs.data:  # newest first: stop at the first that stays
            if int((run.metadata or {}).get("step", -1)) <= step:
                break
            self._store.delete_run(job.project_id, run.eval_id, run.id)

    def _item(
        self, ev: Eval, run: EvalRun, grader: Any, graded: dict[str, Any], samples: int, model: str,
        temperature: float, now: int,
    ) -> OutputItem:  # fmt: skip
        reward = float(graded.get("reward") or 0.0)
        error = graded.get("error")
        results: list[dict[str, Any]] = []
        if isinstance(grader, GraderMulti):
            children = grader.children()
            subs = graded.get("sub_rewards") or {}
            for criterion in ev.testing_criteria:
                key = criterion.get("name", "")
                score = float(subs.get(key, 0.0))
                child = children.get(key)
                results.append(_result(criterion, score, child is not None and passes(child, score), error))
            results.append(_result({"id": grader.name, "type": "multi"}, reward, passes(grader, reward), error))
        else:
            results.append(_result(ev.testing_criteria[0], reward, passes(grader, reward), error))
        passed = error is None and results[-1]["passed"]
        item = graded.get("item") or {}
        messages = item.get("messages") or []
        text = str(graded.get("output_text") or "")
        completion = int(graded.get("completion_tokens") or 0)
        prompt = int(graded.get("prompt_tokens") or 0)
        sample = {
            "input": [{"role": m.get("role"), "content": message_text(m.get("content"))} for m in messages],
            "output": [{"role": "assistant", "content": text}],
            "finish_reason": "stop" if graded.get("finished", True) else "length",
            "model": model,
            "usage": {"total_tokens": prompt + completion, "completion_tokens": completion,
                      "prompt_tokens": prompt, "cached_tokens": 0},
            "error": {"code": "grader_error", "message": str(error)} if error else dict(NO_ERROR),
            "temperature": temperature,
            "max_completion_tokens": completion,
            "top_p": 1.0,
            "seed": 0,
        }  # fmt: skip
        return OutputItem(
            id=new_output_item_id(),
            run_id=run.id,
            eval_id=ev.id,
            created_at=now,
            status="pass" if passed else "fail",
            datasource_item_id=int(graded.get("row", 0)) * samples + int(graded.get("sample", 0)),
            datasource_item=item,
            results=results,
            sample=sample,
            errored=error is not None,
        )


def _criteria(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The eval's testing criteria for a job grader: itself, or a multi grader's children (named by key)."""
    if raw.get("type") != "multi":
        return [raw]
    children = raw.get("graders")
    if isinstance(children, dict):
        return [{**child, "name": key} for key, child in children.items()]
    if isinstance(children, list):
        return list(children)
    return [children] if isinstance(children, dict) else []


def _criterion(raw: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "id": f"{raw.get('name', 'criterion')}-{uuid.uuid4()}"}


def _result(criterion: dict[str, Any], score: float, passed: bool, error: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": criterion["id"], "type": criterion.get("type"), "score": score,
                           "passed": passed and error is None, "sample": None}  # fmt: skip
    if error:
        out["error"] = {"code": "other_error", "message": str(error)}
    return out
