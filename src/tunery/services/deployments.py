"""Deployments: give a model a name to chat with (spec §3.4, §9.1).

Create records the deployment as ``Accepted`` and warms it up in the background (the engine loads the
adapter); it turns ``Succeeded`` (or ``Failed`` with the reason). Deleting a deployment never deletes its
model, and a model with a deployment cannot be deleted. A reaper deletes deployments nobody has called
for the configured inactivity period (15 days by default), again leaving the model alone.
"""

from __future__ import annotations

import builtins
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tunery.domain.deployments import Deployment, ProvisioningState
from tunery.domain.errors import InvalidRequest, NotFound, QuotaExceeded, ServiceError
from tunery.domain.models import AdapterRef
from tunery.services.models import ModelService
from tunery.storage.deployments import DeploymentStore

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SECONDS_PER_DAY = 86_400
SKU_NAMES = {"standard": "Standard", "globalstandard": "GlobalStandard", "developertier": "DeveloperTier",
             "developer": "DeveloperTier", "provisionedmanaged": "ProvisionedManaged"}  # fmt: skip

Warmup = Callable[[AdapterRef], None]


@dataclass(frozen=True, slots=True)
class DeploymentRules:
    max_per_project: int = 5
    inactivity_days: float = 15.0


class DeploymentService:
    def __init__(
        self,
        store: DeploymentStore,
        models: ModelService,
        rules: DeploymentRules,
        *,
        warmup: Warmup | None = None,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        self._store = store
        self._models = models
        self._rules = rules
        self._warmup = warmup
        self._clock = clock
        self._background = background
        models.set_deployment_check(store.uses_model)

    def set_warmup(self, warmup: Warmup) -> None:
        self._warmup = warmup

    def create_or_update(
        self, project_id: str, name: str, *, model: str, sku_name: str = "Standard", sku_capacity: int = 1
    ) -> tuple[Deployment, bool]:
        """Create (or point an existing deployment at another model). Returns (deployment, created).

        Raises:
            InvalidRequest: bad name, unknown model, bad sku (``param`` names the field).
            QuotaExceeded: the project has the most deployments allowed.
        """
        if not NAME_RE.match(name):
            raise InvalidRequest(
                f"Deployment name {name!r} must be 1-64 letters, digits, '.', '-' or '_'.", param="name"
            )
        try:
            ref = self._models.resolve(project_id, model)
        except NotFound as exc:
            raise InvalidRequest(exc.message, param="properties.model.name", code="model_not_found") from None
        sku = SKU_NAMES.get(sku_name.replace(" ", "").lower())
        if sku is None:
            raise InvalidRequest(
                f"sku.name {sku_name!r} is not one of Standard, GlobalStandard, DeveloperTier, ProvisionedManaged.",
                param="sku.name",
            )
        if sku_capacity < 1:
            raise InvalidRequest("sku.capacity must be at least 1.", param="sku.capacity")
        now = int(self._clock())
        existing = self._store.get(project_id, name)
        deployment = Deployment(
            name=name,
            project_id=project_id,
            model=ref.name,
            base_model=ref.base_model,
            adapter_key=ref.adapter_key,
            sku_name=sku,
            sku_capacity=sku_capacity,
            state=ProvisioningState.ACCEPTED,
            created_at=existing.created_at if existing else now,
            updated_at=now,
            last_used_at=now,
        )
        if existing:
            self._store.replace(deployment)
        else:
            if self._store.count(project_id) >= self._rules.max_per_project:
                raise QuotaExceeded(
                    f"This project already has {self._rules.max_per_project} deployments, the most allowed. "
                    "Delete one first.",
                    param="name",
                )
            self._store.insert(deployment)
        self._schedule_warmup(deployment, ref)
        return deployment, existing is None

    def retrieve(self, project_id: str, name: str) -> Deployment:
        deployment = self._store.get(project_id, name)
        if deployment is None:
            raise NotFound(
                f"The API deployment '{name}' does not exist in this project.",
                param="deployment",
                code="DeploymentNotFound",
            )
        return deployment

    def list(self, project_id: str) -> list[Deployment]:
        return self._store.list(project_id)

    def delete(self, project_id: str, name: str) -> Deployment:
        """Delete the deployment; its model stays and can be deployed again."""
        deployment = self.retrieve(project_id, name)
        self._store.delete(project_id, name)
        return deployment

    def drop_serving(self, project_id: str, adapter_key: str) -> builtins.list[str]:
        """Delete the project's deployments that serve this adapter (a revoked share); their names."""
        dropped = [d.name for d in self._store.list(project_id) if d.adapter_key == adapter_key]
        for name in dropped:
            self._store.delete(project_id, name)
            log.info("deleted deployment %s of project %s: its shared checkpoint was revoked", name, project_id)
        return dropped

    def resolve(self, project_id: str, name: str) -> AdapterRef:
        """What a deployment serves; also records the call for the inactivity rule."""
        deployment = self.retrieve(project_id, name)
        self._store.touch(project_id, name, int(self._clock()))
        return AdapterRef(
            name=deployment.model,
            base_model=deployment.base_model,
            adapter_key=deployment.adapter_key,
            project_id=project_id,
        )

    def find(self, project_id: str, name: str) -> AdapterRef | None:
        """Like ``resolve``, but None when there is no such deployment."""
        if self._store.get(project_id, name) is None:
            return None
        return self.resolve(project_id, name)

    def reap(self) -> builtins.list[Deployment]:
        """Delete deployments nobody called for ``inactivity_days``; never their models."""
        cutoff = int(self._clock() - self._rules.inactivity_days * SECONDS_PER_DAY)
        reaped = self._store.delete_inactive(cutoff)  # atomic: concurrent reapers on other servers split the rows
        for deployment in reaped:
            log.info("deleted deployment %s: unused for %s days", deployment.name, self._rules.inactivity_days)
        return reaped

    def _schedule_warmup(self, deployment: Deployment, ref: AdapterRef) -> None:
        if not self._background:
            self._warm(deployment, ref)
            return
        threading.Thread(target=self._warm, args=(deployment, ref), name="tunery-deploy", daemon=True).start()

    def _warm(self, deployment: Deployment, ref: AdapterRef) -> None:
        state, error = ProvisioningState.SUCCEEDED, None
        try:
            if self._warmup is not None:
                self._warmup(ref)
        except ServiceError as exc:
            state, error = ProvisioningState.FAILED, exc.message
        except Exception as exc:  # the edge of a background thread: record, don't crash the server
            log.exception("warming up deployment %s failed", deployment.name)
            state, error = ProvisioningState.FAILED, f"Loading the model failed: {exc}"
        self._store.set_state(deployment.project_id, deployment.name, state, error, int(self._clock()))
