"""The set of services one Tunery process runs; built by ``bootstrap`` and handed to the edges."""

from __future__ import annotations

from dataclasses import dataclass

from tunery.services.chat import ChatService
from tunery.services.deployments import DeploymentService
from tunery.services.files import FileService
from tunery.services.jobs import JobService
from tunery.services.keys import KeyService
from tunery.services.models import ModelService
from tunery.services.outbox import OutboxSender
from tunery.services.permissions import PermissionService
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
    webhooks: WebhookService
    uploads: UploadService
    permissions: PermissionService
    outbox: OutboxSender

    def close(self) -> None:
        self.files.close()
        self.chat.close()
        self.outbox.close()
