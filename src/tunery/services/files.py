"""Files: upload, list, retrieve, delete, download, and the background checks of training and eval data.

An upload is streamed into the blob store and recorded as ``pending``; the dataset checks then run on a
background thread (``pending → running → processed | error``). A check is leased in the database
(``check_lease_until``, renewed while it runs), so when several servers share one database exactly one checks
a file, and a file whose checker died (its lease ran out) is taken by the next ``recover`` of any server, which
``tunery serve`` runs at start and every ``files.recheck_interval_s``: an accepted upload is never lost, and
never checked twice at once. This module
does not know about HTTP or dialects; the API edge translates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from tunery.domain.datasets import DatasetFormat, ExampleTokenizer, ValidationReport
from tunery.domain.errors import InsufficientStorage, InvalidRequest, NotFound, QuotaExceeded, ServiceError
from tunery.domain.files import UPLOADABLE_PURPOSES, FilePurpose, FileRecord, FileStatus
from tunery.domain.ids import new_id
from tunery.domain.pagination import Page, PageRequest
from tunery.storage.blobs import BlobStore
from tunery.storage.disk import SpaceReserve
from tunery.storage.files import FileStore
from tunery.training.datasets import validate_eval_jsonl, validate_jsonl

log = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255
CHUNK_BYTES = 1024 * 1024
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 2_592_000  # OpenAI's range for expires_after.seconds


@dataclass(frozen=True, slots=True)
class FileRules:
    """Per-deployment limits for uploads (plain values handed down from settings)."""

    max_upload_bytes: int
    min_examples: int = 10
    max_reported_problems: int = 20
    max_files_per_project: int = 50


TokenizerProvider = Callable[[], ExampleTokenizer | None]


# A blob or temporary file this old with no owner is a crash's leftover, not an upload in progress.
ORPHAN_MIN_AGE_S = 600.0
FINISH_ATTEMPTS = 3
FINISH_RETRY_S = 1.0
CHECK_LEASE_S = 120.0  # a checker renews its lease every third of this; a dead one's file is free after it


def blob_key(record: FileRecord) -> str:
    return f"files/{record.project_id}/{record.id}"


class FileService:
    def __init__(
        self,
        store: FileStore,
        blobs: BlobStore,
        rules: FileRules,
        tokenizer: TokenizerProvider,
        *,
        clock: Callable[[], float] = time.time,
        background: bool = True,
        reserve: SpaceReserve | None = None,
    ) -> None:
        self._reserve = reserve
        self._store = store
        self._blobs = blobs
        self._rules = rules
        self._tokenizer = tokenizer
        self._clock = clock
        self._background = background
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-file-checks")
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- upload
    def create(
        self,
        project_id: str,
        *,
        filename: str,
        purpose: str,
        chunks: Iterable[bytes],
        expires_after: tuple[str | None, int | None] = (None, None),
        max_bytes: int | None = None,
        verify: Callable[[int], None] | None = None,
    ) -> FileRecord:
        """Store an upload and schedule its checks.

        ``max_bytes`` replaces the single-upload limit (the Uploads API has its own); ``verify(size)`` runs
        after the bytes are stored and before the file exists: if it raises, the blob is removed.

        Raises:
            InvalidRequest: unknown purpose or bad filename.
            PayloadTooLarge: the upload is over the configured limit.
            QuotaExceeded: the project already keeps the most files allowed.
        """
        checked_purpose = self._check_purpose(purpose)
        name = filename.strip() if filename else ""
        if not name or len(name) > MAX_FILENAME_CHARS or "/" in name or "\\" in name:
            raise InvalidRequest(
                f"filename must be 1 to {MAX_FILENAME_CHARS} characters without path separators",
                param="file",
            )
        now = int(self._clock())  # one reading: expires_at is exactly created_at + seconds
        expires_at = self._expiry(expires_after, now)
        if self._store.count(project_id) >= self._rules.max_files_per_project:
            raise QuotaExceeded(
                f"This project already has {self._rules.max_files_per_project} files, the most allowed. "
                "Delete files you no longer need and try again.",
                param="file",
            )
        record = FileRecord(
            id=new_id("file"),
            project_id=project_id,
            filename=name,
            purpose=checked_purpose,
            bytes=0,
            created_at=now,
            status=FileStatus.PENDING,
            expires_at=expires_at,
        )
        limit = self._rules.max_upload_bytes if max_bytes is None else max_bytes
        size = self._blobs.write(blob_key(record), chunks, max_bytes=limit)
        if verify is not None:
            try:
                verify(size)
            except BaseException:
                self._blobs.delete(blob_key(record))
                raise
        record = record.with_changes(bytes=size)
        try:
            self._store.insert(record)
        except BaseException:
            self._blobs.delete(blob_key(record))  # no row, no blob (the disk may be full)
            raise
        self._schedule(record.id)
        return record

    def create_results(self, project_id: str, *, filename: str, data: bytes) -> FileRecord:
        """Store a file Tunery wrote itself (``results.csv``); it needs no checks."""
        record = FileRecord(
            id=new_id("file"),
            project_id=project_id,
            filename=filename,
            purpose=FilePurpose.FINE_TUNE_RESULTS,
            bytes=len(data),
            created_at=int(self._clock()),
            status=FileStatus.PROCESSED,
        )
        self._blobs.write(blob_key(record), [data])
        self._store.insert(record)
        return record

    def check_upload_purpose(self, purpose: str) -> None:
        """Raises InvalidRequest: files of this purpose cannot be uploaded."""
        self._check_purpose(purpose)

    # ----------------------------------------------------------------------------------------- reads
    def retrieve(self, project_id: str, file_id: str) -> FileRecord:
        return self._store.get(project_id, file_id)

    def list(self, project_id: str, page: PageRequest, purpose: str | None = None) -> Page[FileRecord]:
        checked = self._check_purpose(purpose, uploadable_only=False) if purpose else None
        return self._store.list(project_id, page, purpose=checked)

    def content(self, project_id: str, file_id: str) -> tuple[FileRecord, BinaryIO]:
        record = self._store.get(project_id, file_id)
        return record, self._blobs.open(blob_key(record))

    def delete(self, project_id: str, file_id: str) -> FileRecord:
        """Delete a file. Allowed even when a job used it: jobs keep their own copy of the data."""
        record = self._store.get(project_id, file_id)
        try:
            self._store.mark_deleted(project_id, file_id)
        except InsufficientStorage:
            # A full disk must not stop the one thing that frees it: give back the reserve and retry.
            if self._reserve is None or not self._reserve.release():
                raise
            self._store.mark_deleted(project_id, file_id)
        self._blobs.delete(blob_key(record))
        if self._reserve is not None:
            self._reserve.ensure()
        return record

    # ----------------------------------------------------------------------------------------- checks
    def check(self, file_id: str) -> None:
        """Run the dataset checks for one file waiting for them, once across threads, processes and servers
        (a pending file, or a running one whose checker's lease ran out); others' files are skipped."""
        if not self._store.claim_check(file_id, self._clock(), CHECK_LEASE_S):
            return
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(file_id, done), name="tunery-file-lease", daemon=True)
        renewer.start()
        try:
            self._check_claimed(file_id)
        finally:
            done.set()
            renewer.join()

    def _renew(self, file_id: str, done: threading.Event) -> None:
        while not done.wait(CHECK_LEASE_S / 3):
            try:
                if not self._store.renew_check(file_id, self._clock(), CHECK_LEASE_S):
                    return
            except Exception:  # the database is briefly away: the next renewal may reach it
                log.warning("could not renew the check lease of file %s", file_id, exc_info=True)

    def _check_claimed(self, file_id: str) -> None:
        try:
            record = self._store.get_any(file_id)
        except NotFound:
            return  # deleted between claim and read
        try:
            report = self.inspect(record)
        except ServiceError as exc:
            self._finish(record.with_changes(status=FileStatus.ERROR, status_details=exc.message))
            return
        except Exception:
            log.exception("checking file %s failed", file_id)
            self._finish(
                record.with_changes(
                    status=FileStatus.ERROR,
                    status_details="Tunery could not check this file because of an internal error; "
                    "upload it again, and report it if it happens again.",
                )
            )
            return
        self._finish(
            record.with_changes(
                status=FileStatus.PROCESSED if report.ok else FileStatus.ERROR,
                status_details=report.summary(),
                problems=report.problems,
                problem_count=report.problem_count,
                stats=report.stats,
                format=report.format.value if report.format else None,
            )
        )

    def _finish(self, record: FileRecord) -> None:
        """Store the outcome; a file deleted while it was being checked stays deleted.

        When the outcome cannot be written (a full disk), it is tried again a few times and then handed
        back as ``pending`` so that the next start checks the file again; it never stays ``running``."""
        for attempt in range(FINISH_ATTEMPTS):
            try:
                self._store.update(record)
                return
            except NotFound:
                log.info("file %s was deleted while being checked", record.id)
                return
            except Exception:
                log.exception("recording the check of file %s failed (attempt %d)", record.id, attempt + 1)
                time.sleep(FINISH_RETRY_S * (attempt + 1))
        try:
            self._store.set_status(record.id, FileStatus.PENDING, expect={FileStatus.RUNNING})
        except Exception:
            log.exception("file %s stays running until the next start re-checks it", record.id)

    def inspect(self, record: FileRecord, expected: DatasetFormat | None = None) -> ValidationReport:
        """Run the checks of the file's purpose on a stored file (evals files: JSON objects, one a line). They do
        not assume the file's role: the minimum number of examples is a training file's rule, checked when a job
        names it (``check_training_size``)."""
        if record.purpose is FilePurpose.EVALS:
            with self._blobs.open(blob_key(record)) as stream:
                return validate_eval_jsonl(stream, max_problems=self._rules.max_reported_problems)
        return self.inspect_blob(blob_key(record), expected)

    def inspect_blob(
        self, key: str, expected: DatasetFormat | None = None, *, training: bool = False
    ) -> ValidationReport:
        """Run the dataset checks on any stored JSONL (jobs check their own copies again at start); with
        ``training`` a file with fewer than ``min_examples`` valid examples is a problem too."""
        with self._blobs.open(key) as stream:
            return validate_jsonl(
                stream,
                expected=expected,
                tokenizer=self._tokenizer(),
                min_examples=self._rules.min_examples if training else 0,
                max_problems=self._rules.max_reported_problems,
            )

    @property
    def min_training_examples(self) -> int:
        return self._rules.min_examples

    def check_training_size(self, record: FileRecord, param: str = "training_file") -> None:
        """A training file needs ``min_examples`` valid examples (OpenAI's ``invalid_n_examples``).

        Raises:
            InvalidRequest: naming ``param``, with the count and the minimum.
        """
        examples = record.stats.examples if record.stats is not None else self._count_examples(record)
        if examples < self._rules.min_examples:
            raise InvalidRequest(
                f"Training file {record.id} has {examples} example(s), but must have at least "
                f"{self._rules.min_examples} examples.",
                param=param,
                code="invalid_n_examples",
            )

    def _count_examples(self, record: FileRecord) -> int:
        """Valid examples in a file checked without a tokenizer (a quick pass with no token counts)."""
        with self._blobs.open(blob_key(record)) as stream:
            return validate_jsonl(stream, min_examples=0, max_problems=1).examples

    def copy_to(self, record: FileRecord, key: str) -> None:
        """Copy a file's bytes to another key (a job keeps its own copy, so deleting the file is safe)."""
        with self._blobs.open(blob_key(record)) as source:
            self._blobs.write(key, iter(lambda: source.read(CHUNK_BYTES), b""))

    def recover(self) -> int:
        """Schedule checks for files left waiting: pending ones (their server stopped before checking them) and
        running ones whose checker's lease ran out. A file another live server is checking is left alone, and
        of several servers recovering at once, one checks each file. Returns how many were scheduled."""
        stranded = self._store.list_unchecked(self._clock())
        for record in stranded:
            self._schedule(record.id)
        return len(stranded)

    def sweep(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> int:
        """Delete what a crash mid-upload left behind: temporary files, and file blobs no file row owns
        (the row is written just after the blob). Only things older than ``min_age_s`` go, so an upload in
        progress in another process is never touched. Returns how many were deleted."""
        cutoff = self._clock() - min_age_s
        removed = self._blobs.remove_temporaries(cutoff)
        for key, modified in list(self._blobs.listing("files/")):
            file_id = key.rsplit("/", 1)[-1]
            if modified >= cutoff:
                continue
            try:
                self._store.get_any(file_id)
            except NotFound:
                self._blobs.delete(key)
                removed += 1
        if removed:
            log.info("start-up sweep deleted %d orphaned blob(s) and temporary file(s)", removed)
        return removed

    def wait_idle(self, timeout: float | None = None) -> None:
        """Block until scheduled checks have finished (tests and orderly shutdown)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.result(timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)

    # ----------------------------------------------------------------------------------------- helpers
    def _schedule(self, file_id: str) -> None:
        if not self._background:
            self.check(file_id)
            return
        future = self._executor.submit(self.check, file_id)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.error("checking a file failed", exc_info=exc)  # never silently: the file is re-checked at start

    def reserve_space(self) -> bool:
        """Set aside the few megabytes that let deletes run on a full disk (the server does this at start)."""
        return self._reserve.ensure() if self._reserve is not None else False

    def release_reserve(self) -> bool:
        """Give the reserved megabytes back so that a delete can run on a full disk; True when there were any.
        ``reserve_space`` sets them aside again once the delete has freed room."""
        return self._reserve.release() if self._reserve is not None else False

    def _expiry(self, expires_after: tuple[str | None, int | None], now: int) -> int | None:
        anchor, seconds = expires_after
        if anchor is None and seconds is None:
            return None
        if anchor != "created_at":
            raise InvalidRequest("expires_after.anchor must be 'created_at'.", param="expires_after.anchor")
        if seconds is None or not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
            raise InvalidRequest(
                f"expires_after.seconds must be between {MIN_EXPIRY_S} (1 hour) and {MAX_EXPIRY_S} (30 days).",
                param="expires_after.seconds",
            )
        return now + seconds

    @staticmethod
    def _check_purpose(purpose: str | None, *, uploadable_only: bool = True) -> FilePurpose:
        allowed = UPLOADABLE_PURPOSES if uploadable_only else set(FilePurpose)
        try:
            parsed = FilePurpose(purpose or "")
        except ValueError:
            parsed = None
        if parsed is None or parsed not in allowed:
            names = ", ".join(sorted(p.value for p in allowed))
            raise InvalidRequest(
                f"purpose must be one of: {names} (got {purpose!r})", param="purpose", code="invalidPayload"
            )
        return parsed
