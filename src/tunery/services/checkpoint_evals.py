"""Per-checkpoint evals (Tunery extension): score every checkpoint of a job and name the best one.

A job created with ``evals: [{"eval_id", "data_source"}]`` (through ``extra_body``) gets, for each eval, a
run on its base model at once and a run on each checkpoint as it appears (``schedule`` is called by the eval
runner's loop, so it works whichever process trains). ``data_source`` is a ``completions`` run data source
whose ``model`` Tunery fills in. Each finished run becomes a job event; the job shows every result and its
best checkpoint (highest mean pass rate over the job's evals, the later checkpoint on a tie); each
checkpoint's ``metrics`` gain ``eval_pass_rate`` (the mean) and ``eval_<eval id>_pass_rate``; and
``<fine-tuned model>:best`` names the best checkpoint wherever a model name goes (deploy, chat, eval runs).
"""

from __future__ import annotations

import logging
from typing import Any

from tunery.domain.checkpoints import Checkpoint
from tunery.domain.errors import InvalidRequest, NotFound
from tunery.domain.evals import EvalRun, RunStatus, RunTarget
from tunery.domain.jobs import Job
from tunery.services.eval_requests import CheckpointEval
from tunery.services.evals import EvalService
from tunery.services.jobs import JobService
from tunery.services.models import ModelService
from tunery.storage.checkpoints import CheckpointStore
from tunery.storage.jobs import JobStore

log = logging.getLogger(__name__)


class CheckpointEvals:
    def __init__(
        self, evals: EvalService, jobs: JobService, job_store: JobStore, checkpoints: CheckpointStore,
        models: ModelService,
    ) -> None:  # fmt: skip
        self._evals = evals
        self._jobs = jobs
        self._job_store = job_store
        self._checkpoints = checkpoints
        self._models = models
        self._settled: set[str] = set()

    # ------------------------------------------------------------------------------------ job creation
    def check(self, project_id: str, raw: Any, model: str) -> list[dict[str, Any]] | None:
        """Check a job request's ``evals`` completely (as if each run were created on ``model`` now).

        Raises:
            InvalidRequest: naming ``evals[i]....``.
        """
        if raw is None:
            return None
        if not isinstance(raw, list):
            raise InvalidRequest("evals must be a list of {'eval_id', 'data_source'} objects.", param="evals")
        checked = []
        for index, entry in enumerate(raw):
            prefix = f"evals[{index}]"
            try:
                parsed = CheckpointEval.model_validate(entry)
            except Exception:
                raise InvalidRequest(
                    f"{prefix} must be an object with 'eval_id' and a completions 'data_source'.", param=prefix
                ) from None
            data_source = dict(parsed.data_source)
            if data_source.get("type") != "completions":
                raise InvalidRequest(
                    f"{prefix}.data_source.type must be 'completions': the checkpoints answer the items.",
                    param=f"{prefix}.data_source.type",
                )
            data_source["model"] = model
            request = self._evals.parse_run_request({"data_source": data_source}, param_prefix=f"{prefix}.")
            try:
                self._evals.create_run(project_id, parsed.eval_id, request, dry_run=True)
            except NotFound as exc:
                raise InvalidRequest(exc.message, param=f"{prefix}.eval_id") from None
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message, param=f"{prefix}.{exc.param}" if exc.param else prefix,
                                     code=exc.code) from None  # fmt: skip
            checked.append({"eval_id": parsed.eval_id, "data_source": {k: v for k, v in data_source.items()
                                                                        if k != "model"}})  # fmt: skip
        return checked

    def start(self, job: Job) -> None:
        """Queue the base-model runs of a job created with evals."""
        for entry in job.extras.get("evals") or []:
            self._create(job, entry, model=job.model, target=RunTarget(job_id=job.id, checkpoint=None, step=0))

    # ------------------------------------------------------------------------------------ scheduling
    def schedule(self) -> int:
        """Create the runs of checkpoints that have none yet; returns how many were created."""
        created = 0
        for job_id in self._evals.store.job_ids_with_runs():
            if job_id in self._settled:
                continue
            try:
                job = self._job_store.get_any(job_id)
            except NotFound:
                self._settled.add(job_id)
                continue
            entries = job.extras.get("evals") or []
            have = {(run.eval_id, run.target.step) for run in self._evals.store.runs_for_job(job_id)
                    if run.target is not None and run.target.checkpoint is not None}  # fmt: skip
            for checkpoint in self._checkpoints.list_all(job_id):
                for entry in entries:
                    if (entry["eval_id"], checkpoint.step_number) in have:
                        continue
                    target = RunTarget(job_id=job.id, checkpoint=checkpoint.fine_tuned_model_checkpoint,
                                       step=checkpoint.step_number)  # fmt: skip
                    if self._create(job, entry, model=checkpoint.fine_tuned_model_checkpoint, target=target):
                        created += 1
            if job.status.terminal:
                self._settled.add(job_id)
        return created

    def _create(self, job: Job, entry: dict[str, Any], *, model: str, target: RunTarget) -> bool:
        step = "the base model" if target.checkpoint is None else f"checkpoint step {target.step}"
        try:
            request = self._evals.parse_run_request({"data_source": {**entry["data_source"], "model": model},
                                                     "name": f"{job.id} {step}"})  # fmt: skip
            self._evals.create_run(job.project_id, entry["eval_id"], request, target=target)
        except (InvalidRequest, NotFound) as exc:
            self._jobs.log(job.id, f"Could not start eval {entry['eval_id']} on {step}: {exc.message}")
            return False
        return True

    def resolve_target(self, run: EvalRun) -> Any:
        """The model a per-checkpoint run scores, found by step (the last checkpoint is renamed at success)."""
        assert run.target is not None
        for checkpoint in self._checkpoints.list_all(run.target.job_id):
            if checkpoint.step_number == run.target.step:
                return self._models.resolve(run.project_id, checkpoint.fine_tuned_model_checkpoint)
        raise InvalidRequest(f"Checkpoint step {run.target.step} of {run.target.job_id} no longer exists.",
                             param="data_source.model")  # fmt: skip

    def finished(self, run: EvalRun) -> None:
        """Report a finished per-checkpoint run as a job event."""
        if run.target is None:
            return
        where = "the base model" if run.target.checkpoint is None else f"checkpoint step {run.target.step}"
        counts = run.result_counts
        if run.status is RunStatus.COMPLETED:
            rate = run.pass_rate or 0.0
            message = (f"Eval {run.eval_id} on {where}: pass rate {rate:.3f} ({counts.get('passed', 0)}/"
                       f"{counts.get('total', 0)} items passed)")  # fmt: skip
        else:
            rate = None
            message = f"Eval {run.eval_id} on {where} {run.status.value}: {run.error.get('message', '')}"
        self._jobs.log(run.target.job_id, message, data={
            "eval_id": run.eval_id, "eval_run_id": run.id, "step": run.target.step,
            "checkpoint": run.target.checkpoint, "status": run.status.value, "pass_rate": rate,
        })  # fmt: skip

    # ------------------------------------------------------------------------------------ reading
    def results(self, job: Job) -> dict[str, Any] | None:
        """The job's extension fields: ``evals`` as requested, ``eval_results`` and ``best_checkpoint``."""
        entries = job.extras.get("evals")
        if not entries:
            return None
        runs = self._evals.store.runs_for_job(job.id)
        results = [
            {"eval_id": r.eval_id, "eval_run_id": r.id, "step": r.target.step if r.target else 0,
             "model": r.model, "checkpoint": r.target.checkpoint is not None if r.target else False,
             "status": r.status.value, "pass_rate": r.pass_rate, "result_counts": r.result_counts}
            for r in runs
        ]  # fmt: skip
        best = self._best(job, runs, len(entries))
        return {"evals": entries, "eval_results": results, "best_checkpoint": best}

    def metrics(self, job: Job, checkpoint: Checkpoint) -> dict[str, float]:
        """Eval metrics to show on one checkpoint."""
        if not job.extras.get("evals"):
            return {}
        rates = {
            r.eval_id: r.pass_rate
            for r in self._evals.store.runs_for_job(job.id)
            if r.target is not None
            and r.target.checkpoint is not None
            and r.target.step == checkpoint.step_number
            and r.status is RunStatus.COMPLETED
            and r.pass_rate is not None
        }
        if not rates:
            return {}
        shown = {f"eval_{eval_id}_pass_rate": float(rate) for eval_id, rate in rates.items() if rate is not None}
        shown["eval_pass_rate"] = sum(shown.values()) / len(shown)
        return shown

    def best_checkpoint(self, project_id: str, model: str) -> str:
        """The name of ``model``'s best-scoring checkpoint (``<model>:best``).

        Raises:
            NotFound: the model is unknown or none of its checkpoints has been scored.
        """
        ref = self._models.resolve(project_id, model)
        if ref.job_id is None:
            raise NotFound(f"'{model}:best' names no fine-tuned model with per-checkpoint evals.", param="model")
        job = self._job_store.get(project_id, ref.job_id)
        best = self._best(job, self._evals.store.runs_for_job(job.id), len(job.extras.get("evals") or []))
        if best is None:
            raise NotFound(
                f"No checkpoint of '{model}' has been scored yet: create the job with 'evals' and wait for its "
                "eval runs to complete.",
                param="model",
            )
        return str(best["fine_tuned_model_checkpoint"])

    def _best(self, job: Job, runs: list[EvalRun], wanted: int) -> dict[str, Any] | None:
        by_step: dict[int, dict[str, float]] = {}
        base: dict[str, float] = {}
        for run in runs:
            if run.target is None or run.status is not RunStatus.COMPLETED or run.pass_rate is None:
                continue
            if run.target.checkpoint is None:
                base[run.eval_id] = run.pass_rate
            else:
                by_step.setdefault(run.target.step, {})[run.eval_id] = run.pass_rate
        names = {c.step_number: c.fine_tuned_model_checkpoint for c in self._checkpoints.list_all(job.id)}
        scored = [(sum(r.values()) / len(r), step) for step, r in by_step.items() if len(r) >= wanted and step in names]
        if not scored:
            return None
        score, step = max(scored)
        return {
            "step_number": step,
            "fine_tuned_model_checkpoint": names[step],
            "pass_rate": score,
            "base_pass_rate": sum(base.values()) / len(base) if base and len(base) >= wanted else None,
        }
