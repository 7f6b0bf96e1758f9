"""Models: what a name means (base model, fine-tuned model, or checkpoint), listing, and deletion.

``resolve`` is the one place that turns a user-given model name into (base model, adapter); jobs use it
for continuous fine-tuning, and chat and deployments use it to serve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tunery.catalog import BaseModelSpec, Catalog
from tunery.domain.checkpoints import Checkpoint
from tunery.domain.errors import Conflict, NotFound
from tunery.domain.ids import has_prefix
from tunery.domain.models import AdapterRef, FineTunedModel
from tunery.storage.checkpoints import CheckpointStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore
from tunery.storage.portability import ImportedModelStore, MigrationStore

log = logging.getLogger(__name__)

# Something that answers "is this model deployed?" (deployments are added by the serving layer).
DeploymentCheck = Callable[[str, str], bool]
# (project id, name) -> another project's checkpoint shared with this project, or None
SharedCheckpoint = Callable[[str, str], Checkpoint | None]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One row of ``/models``: a base model or a fine-tuned model of the caller's project."""

    id: str
    created_at: int
    owned_by: str
    base_model: str | None = None  # for fine-tuned models
    job_id: str | None = None
    parent_model: str | None = None
    fine_tunable: bool = True
    context_length: int | None = None
    description: str = ""


BEST_SUFFIX = ":best"


class ModelService:
    def __init__(
        self,
        catalog: Catalog,
        models: ModelStore,
        checkpoints: CheckpointStore,
        jobs: JobStore,
        *,
        is_deployed: DeploymentCheck | None = None,
        shared: SharedCheckpoint | None = None,
        started_at: int | None = None,
        clock: Callable[[], float] = time.time,
        imported: ImportedModelStore | None = None,
        migrations: MigrationStore | None = None,
    ) -> None:
        self._imported = imported
        self._migrations = migrations
        self._catalog = catalog
        self._models = models
        self._checkpoints = checkpoints
        self._jobs = jobs
        self._is_deployed = is_deployed or (lambda _project, _model: False)
        self._shared = shared or (lambda _project, _name: None)
        self._started_at = started_at or int(clock())
        self._clock = clock
        self._best: Callable[[str, str], str] | None = None
        self._deleted_listeners: list[Callable[[str, str | None], object]] = []

    def on_delete(self, listener: Callable[[str, str | None], object]) -> None:
        """Call ``listener(project_id, name)`` after a model is deleted (``name`` None: a job, with its
        checkpoints); the export cache drops what it made of them."""
        self._deleted_listeners.append(listener)

    def notify_deleted(self, project_id: str, name: str | None) -> None:
        for listener in self._deleted_listeners:
            try:
                listener(project_id, name)
            except Exception:  # a cache that cannot be tidied now is tidied by the next housekeeping round
                log.exception("a model-deleted listener failed")

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def set_deployment_check(self, check: DeploymentCheck) -> None:
        self._is_deployed = check

    def set_best_checkpoint(self, best: Callable[[str, str], str]) -> None:
        """``best(project_id, model)`` names the best-scoring checkpoint of a fine-tuned model: what
        ``<model>:best`` means (per-checkpoint evals)."""
        self._best = best

    def resolve(self, project_id: str, name: str) -> AdapterRef:
        """Raises:
        NotFound: no base model, fine-tuned model or checkpoint of this project has that name (param model).
        """
        if name.endswith(BEST_SUFFIX) and self._best is not None:
            name = self._best(project_id, name.removesuffix(BEST_SUFFIX))
        try:
            spec = self._catalog.get(name)
        except NotFound:
            pass
        else:
            return AdapterRef(name=spec.name, base_model=spec.name, adapter_key=None)
        model = self._models.get(project_id, name)
        if model is not None:
            return AdapterRef(
                name=model.id,
                base_model=model.base_model,
                adapter_key=model.adapter_key,
                project_id=project_id,
                job_id=model.job_id,
            )
        imported = self._imported.get(project_id, name) if self._imported is not None else None
        if imported is not None:
            return AdapterRef(
                name=imported.id, base_model=imported.base_model, adapter_key=imported.adapter_key,
                project_id=project_id,
            )  # fmt: skip
        checkpoint = self._checkpoint(project_id, name)
        if checkpoint is not None:
            job = self._jobs.get(project_id, checkpoint.job_id)
            return AdapterRef(
                name=checkpoint.fine_tuned_model_checkpoint,
                base_model=job.base_model,
                adapter_key=checkpoint.adapter_key,
                project_id=project_id,
                job_id=job.id,
            )
        target = self.alias_target(project_id, name)
        if target is not None:
            return self.resolve(project_id, target)
        shared = self._shared(project_id, name)
        if shared is not None:  # another project's checkpoint, shared with this one
            owner_job = self._jobs.get(shared.project_id, shared.job_id)
            return AdapterRef(
                name=shared.fine_tuned_model_checkpoint,
                base_model=owner_job.base_model,
                adapter_key=shared.adapter_key,
                project_id=shared.project_id,
                job_id=owner_job.id,
            )
        available = ", ".join(spec.name for spec in self._catalog.list())
        raise NotFound(
            f"The model '{name}' does not exist: it is not a base model ({available}) nor a fine-tuned model "
            "or checkpoint of this project (or shared with it).",
            param="model",
            code="model_not_found",
        )

    def alias_target(self, project_id: str, name: str) -> str | None:
        """The model a migrated job's old id stands for (its new job's fine-tuned model), or None.

        Raises:
            NotFound: the alias is known but its new job has not produced a model (yet, or it failed).
        """
        moved = self._migrations.by_alias(project_id, name) if self._migrations is not None else None
        if moved is None or moved.job_id is None:
            return None
        job = self._jobs.get(project_id, moved.job_id)
        if not job.fine_tuned_model:
            raise NotFound(
                f"The model '{name}' was migrated to the job {job.id}, which has no fine-tuned model yet "
                f"(status {job.status.value}).",
                param="model",
                code="model_not_found",
            )
        return job.fine_tuned_model

    def list(self, project_id: str) -> list[ModelEntry]:
        entries = [self._base_entry(spec) for spec in self._catalog.list()]
        entries += [self._fine_tuned_entry(model) for model in self._models.list(project_id)]
        if self._imported is not None:
            entries += [
                ModelEntry(id=m.id, created_at=m.created_at, owned_by=project_id, base_model=m.base_model,
                           description=f"Imported adapter ({m.source})")
                for m in self._imported.list(project_id)
            ]  # fmt: skip
        return entries

    def retrieve(self, project_id: str, name: str) -> ModelEntry:
        ref = self.resolve(project_id, name)
        if ref.adapter_key is None:
            return self._base_entry(self._catalog.get(ref.name))
        model = self._models.get(project_id, ref.name)
        if model is not None:
            return self._fine_tuned_entry(model)
        imported = self._imported.get(project_id, ref.name) if self._imported is not None else None
        if imported is not None:
            return ModelEntry(
                id=imported.id,
                created_at=imported.created_at,
                owned_by=project_id,
                base_model=imported.base_model,
                description=f"Imported adapter ({imported.source})",
            )
        return ModelEntry(
            id=ref.name,
            created_at=self._started_at,
            owned_by=ref.project_id or project_id,
            base_model=ref.base_model,
            job_id=ref.job_id,
        )

    def delete(self, project_id: str, name: str) -> str:
        """Delete a fine-tuned or imported model and return its name. A fine-tuned model's checkpoints go with
        it (what the portal tells users): they leave the job's list and no longer resolve or deploy; the job
        and its events and results stay.

        Raises:
            NotFound: not a fine-tuned model of this project.
            Conflict: it is deployed; delete the deployment first.
        """
        model = self._models.get(project_id, name)
        if model is None and self._imported is not None and self._imported.get(project_id, name) is not None:
            if self._is_deployed(project_id, name):
                raise Conflict(f"The model '{name}' has a deployment; delete the deployment first.", param="model")
            self._imported.mark_deleted(project_id, name, int(self._clock()))
            self.notify_deleted(project_id, name)
            return name
        if model is None:
            raise NotFound(f"The model '{name}' is not a fine-tuned model of this project.", param="model")
        self.check_unused(project_id, model.job_id, name)
        self._models.mark_deleted(project_id, name, int(self._clock()))
        for checkpoint in self._checkpoints.list_all(model.job_id):
            self._checkpoints.delete(checkpoint.id)
        self.notify_deleted(project_id, name)  # after the checkpoints: their exports no longer resolve either
        return model.id

    def check_unused(self, project_id: str, job_id: str, name: str) -> None:
        """Refuse to delete ``name`` (a job's model, or the job itself) while anything still uses its adapters.

        Raises:
            Conflict: a deployment serves the model or one of the job's checkpoints, or an unfinished job
                starts from one of them.
        """
        served = list(
            dict.fromkeys([name, *(c.fine_tuned_model_checkpoint for c in self._checkpoints.list_all(job_id))])
        )
        deployed = [n for n in served if self._is_deployed(project_id, n)]
        if deployed:
            raise Conflict(
                f"'{name}' has a deployment (of {', '.join(deployed)}); delete the deployment first.",
                param="model",
                code="conflict",
            )
        children = self._jobs.starting_from(project_id, set(served))
        if children:
            raise Conflict(
                f"'{name}' is the parent model of unfinished job {', '.join(children)}; cancel it or wait "
                "for it to finish first.",
                param="model",
                code="conflict",
            )

    def _checkpoint(self, project_id: str, name: str) -> Checkpoint | None:
        if has_prefix(name, "ftchkpt"):
            return self._checkpoints.get(project_id, name)
        return self._checkpoints.get_by_name(project_id, name)

    def _base_entry(self, spec: BaseModelSpec) -> ModelEntry:
        return ModelEntry(
            id=spec.name,
            created_at=self._started_at,
            owned_by="tunery",
            context_length=spec.context_length,
            description=spec.description,
        )

    @staticmethod
    def _fine_tuned_entry(model: FineTunedModel) -> ModelEntry:
        return ModelEntry(
            id=model.id,
            created_at=model.created_at,
            owned_by=model.project_id,
            base_model=model.base_model,
            job_id=model.job_id,
            parent_model=model.parent_model,
        )
