"""The set of services one Tunery process runs; built by ``bootstrap`` and handed to the edges."""

from __future__ import annotations

from dataclasses import dataclass

from tunery.services.chat import ChatService
from tunery.services.checkpoint_evals import CheckpointEvals
from tunery.services.deployments import DeploymentService
from tunery.services.evals import EvalService
from tunery.services.files import FileService
from tunery.services.graders import GraderService
from tunery.services.jobs import JobService
from tunery.services.keys import KeyService
from tunery.services.migration import MigrationService
from tunery.services.models import ModelService
from tunery.services.outbox import OutboxSender
from tunery.services.permissions import PermissionService
from tunery.services.portability import ExportService, ImportService
from tunery.services.runs import RunService
from tunery.services.uploads import UploadService
from tunery.services.webhooks import WebhookService


@dataclass(slots=True)
class Services:
    keys: KeyService
    files: FileService
    jobs: JobService
    models: ModelService
    runs: RunService
    deployments: DeploymentService
    chat: ChatService
    evals: EvalService
    checkpoint_evals: CheckpointEvals
    graders: GraderService
    exports: ExportService
    imports: ImportService
    migrations: MigrationService
    webhooks: WebhookService
    uploads: UploadService
    permissions: PermissionService
    outbox: OutboxSender

    def close(self) -> None:
        self.files.close()
        self.chat.close()
        self.graders.close()
        self.outbox.close()
