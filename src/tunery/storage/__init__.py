"""Persistence: SQL rows and blobs. Knows nothing about HTTP or torch, and never reads settings.

``Database`` holds the engine and runs migrations; one store per resource converts rows to domain records;
``BlobStore`` keeps file contents on disk (``LocalBlobStore``) or in S3 (``S3BlobStore``).
"""

from tunery.storage.blobs import BlobStore, LocalBlobStore, S3BlobStore
from tunery.storage.checkpoints import CheckpointStore, MetricStore
from tunery.storage.db import Database, sqlite_url
from tunery.storage.deployments import DeploymentStore
from tunery.storage.evals import EvalStore
from tunery.storage.events import EventStore
from tunery.storage.files import FileStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore
from tunery.storage.projects import ApiKeyStore, ProjectStore

__all__ = [
    "ApiKeyStore",
    "BlobStore",
    "CheckpointStore",
    "Database",
    "DeploymentStore",
    "EvalStore",
    "EventStore",
    "FileStore",
    "JobStore",
    "LocalBlobStore",
    "MetricStore",
    "ModelStore",
    "ProjectStore",
    "S3BlobStore",
    "sqlite_url",
]
