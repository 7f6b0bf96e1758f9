"""The File object on the wire (``openai.types.FileObject``) plus Tunery's check results."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from tunery.api.dialects import Dialect
from tunery.domain.files import FilePurpose, FileRecord, FileStatus

OMITTED_WHEN_NULL = ("expires_at", "status_details", "validation")


class FileProblem(BaseModel):
    """One problem found in a training file; ``line`` is 1-based, null for whole-file problems."""

    line: int | None
    code: str
    message: str


class FileValidation(BaseModel):
    """Tunery extension: what the dataset checks found (null until they have run)."""

    format: str | None
    """``chat`` (supervised), ``preference`` (DPO) or ``reinforcement`` (RFT); null for ``evals`` files."""
    problem_count: int
    """How many problems were found in total."""
    problems: list[FileProblem]
    """The first problems, each with its line number."""
    statistics: dict[str, Any] | None
    """Examples and token counts (with the default base model's tokenizer) for a good training file."""


class FileObject(BaseModel):
    id: str
    """The file identifier, which can be referenced in the API endpoints."""
    object: Literal["file"] = "file"
    bytes: int
    """The size of the file, in bytes."""
    created_at: int
    """Unix seconds when the file was created."""
    filename: str
    purpose: str
    """``fine-tune`` for training data, ``evals`` for eval rows; ``fine-tune-results`` for files Tunery writes."""
    status: str
    """Azure: pending | running | processed | error. OpenAI layout: uploaded | processed | error."""
    status_details: str | None = None
    """Why checks failed, line by line (null while pending and for good files on the OpenAI layout)."""
    expires_at: int | None = None
    validation: FileValidation | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's schema types these as plain strings/integers: leave them out rather than send null."""
        data: dict[str, Any] = handler(self)
        for key in OMITTED_WHEN_NULL:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @classmethod
    def from_domain(cls, record: FileRecord, dialect: Dialect) -> FileObject:
        status = record.status.value
        if dialect is Dialect.OPENAI and record.status in (FileStatus.PENDING, FileStatus.RUNNING):
            status = "uploaded"  # OpenAI's enum has no pending/running
        validation = None
        checked = record.status in (FileStatus.PROCESSED, FileStatus.ERROR)
        if checked and record.purpose in (FilePurpose.FINE_TUNE, FilePurpose.EVALS):
            validation = FileValidation(
                format=record.format,
                problem_count=record.problem_count,
                problems=[FileProblem(line=p.line, code=p.code, message=p.message) for p in record.problems],
                statistics=record.stats.to_dict() if record.stats else None,
            )
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=record.created_at,
            filename=record.filename,
            purpose=record.purpose.value,
            status=status,
            status_details=record.status_details,
            expires_at=record.expires_at,
            validation=validation,
        )
