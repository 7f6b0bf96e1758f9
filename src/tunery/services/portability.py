"""Moving models out and in: export a fine-tuned model as a file, import an adapter trained elsewhere.

Export resolves the name in the caller's project (another project's model is a 404), builds the format once
into ``export_dir`` with ``catalog.export`` (streamed, tensor by tensor) and hands back a finished file with
its size and sha256, so the API can send a Content-Length and a checksum before the first byte; later
downloads of the same model and format reuse the file. The cache is bounded (``ExportCacheRules``): ``prune``
removes the exports of models that no longer resolve (deleted, or their name now means another adapter) and
exports unused for ``max_age_s``, then the least recently used until the cache fits ``max_bytes``; it runs
after each new export, after a model is deleted (``forget``: that model's exports go at once), and with the
server's hourly housekeeping. An export used in the last ``grace_s`` is never evicted for size or age (a
download opens its file just after ``export`` returns; once open, removing the file does not cut it short).
Import unpacks an uploaded archive (or reads an admin-allowed folder), checks the adapter against its base with
``catalog.peft_adapter`` and stores it as a model that resolves like any fine-tuned one. ``JobHubPush`` is the
outbox's receiver for a job created with ``hf_output_repo_name``: once the job succeeds its model is pushed as
``push_to_hub`` pushes it. Migration from another service lives in ``services.migration``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tunery.catalog import BaseModelSpec, Catalog
from tunery.catalog.export import EXPORT_FORMATS, export_model, sha256_of, write_archive
from tunery.catalog.gguf_export import UnsupportedForGguf
from tunery.catalog.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, AdapterProblem, PeftAdapter, check_against_base
from tunery.catalog.safetensors_stream import SafetensorsError, read_infos, weight_files
from tunery.domain.errors import InvalidRequest, NotFound, ServiceError, Unavailable
from tunery.domain.webhooks import Delivery
from tunery.services.models import ModelEntry, ModelService
from tunery.services.outbox import TrackerFailed
from tunery.services.runs import adapter_path
from tunery.storage.blobs import BlobStore
from tunery.storage.jobs import JobStore
from tunery.storage.portability import ImportedModel, ImportedModelStore

log = logging.getLogger(__name__)

BaseWeights = Callable[[str], Path]
GGUF_PARTS = ("merged", "adapter")
CHUNK_BYTES = 1024 * 1024
OWNER_FILE = "owner.json"  # in an export's key folder: the project, name and adapter it was made for
DONE_FILE = ".done"  # in a format folder: the export is complete; its mtime is the last use


@dataclass(frozen=True, slots=True)
class ExportCacheRules:
    max_bytes: int = 20 * 1024**3
    max_age_s: float = 7 * 24 * 3600.0
    grace_s: float = 600.0  # an export used this recently is never evicted (a download may be reading it)


@dataclass(frozen=True, slots=True)
class ExportedFile:
    path: Path
    filename: str
    size: int
    sha256: str
    media_type: str


@dataclass(frozen=True, slots=True)
class HubSettings:
    endpoint: str = "https://huggingface.co"
    token: str | None = None  # used when a push request brings none


class ExportService:
    def __init__(
        self,
        models: ModelService,
        blobs: BlobStore,
        base_weights: BaseWeights,
        export_dir: Path,
        hub: HubSettings | None = None,
        cache: ExportCacheRules | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hub = hub or HubSettings()
        self._cache = cache or ExportCacheRules()
        self._clock = clock
        self._prune_guard = threading.Lock()
        self._models = models
        self._blobs = blobs
        self._base_weights = base_weights
        self._export_dir = export_dir
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def export(self, project_id: str, name: str, fmt: str, part: str | None = None) -> ExportedFile:
        """The model as a tar of its ``fmt`` folder, or (``fmt="gguf"`` with ``part``) one GGUF file.

        Raises:
            NotFound: no model or checkpoint of this project has that name.
            InvalidRequest: unknown format or part, a base model, or a model GGUF cannot describe.
        """
        if fmt not in EXPORT_FORMATS:
            raise InvalidRequest(f"Unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}.",
                                 param="format")  # fmt: skip
        if part is not None and (fmt != "gguf" or part not in GGUF_PARTS):
            raise InvalidRequest(f"'part' is only for format gguf and is one of {', '.join(GGUF_PARTS)}.",
                                 param="part")  # fmt: skip
        ref = self._models.resolve(project_id, name)
        if ref.adapter_key is None:
            raise InvalidRequest(
                f"'{ref.name}' is a base model; only fine-tuned models and checkpoints can be exported.", param="model"
            )
        model_name = ref.name.replace(":", "-")
        spec = self._models.catalog.get(ref.base_model)
        key = hashlib.sha256(f"{ref.adapter_key}\0{ref.name}".encode()).hexdigest()[:24]
        folder = self._export_dir / key / fmt
        built = False
        with self._lock(f"{key}/{fmt}"):
            owner = {"project_id": project_id, "name": ref.name, "adapter_key": ref.adapter_key}
            if not (folder / DONE_FILE).is_file():
                folder.parent.mkdir(parents=True, exist_ok=True)
                (folder.parent / OWNER_FILE).write_text(json.dumps(owner))  # before the build: prune reads it
                self._build(
                    fmt, ref.adapter_key, ref.base_model, folder, base_id=spec.portable_id, model_name=model_name
                )
                built = True
            now = self._clock()
            os.utime(folder / DONE_FILE, (now, now))  # last use, for the cache's age and LRU rules
        if built:
            self.prune()
        if part is not None:
            path = folder / "files" / (f"{model_name}.gguf" if part == "merged" else f"{model_name}-lora.gguf")
            digest = (folder / f"{path.name}.sha256").read_text().strip()
            return ExportedFile(path, path.name, path.stat().st_size, digest, "application/octet-stream")
        archive = folder / "archive.tar"
        digest = (folder / "archive.tar.sha256").read_text().strip()
        filename = f"{model_name}-{fmt}.tar"
        return ExportedFile(archive, filename, archive.stat().st_size, digest, "application/x-tar")

    def push_to_hub(
        self, project_id: str, name: str, fmt: str, *, repo_id: str, token: str | None, private: bool
    ) -> dict[str, str]:
        """Export the model and upload the folder to a Hugging Face Hub repository (created if missing).

        Raises:
            InvalidRequest: no token, a bad repo id, or the Hub refused the upload (its message is passed on).
            Unavailable: the Hub cannot be reached.
        """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise InvalidRequest(f"hf_output_repo_name '{repo_id}' is not 'owner/name'.", param="hf_output_repo_name")
        token = token or self._hub.token
        if not token:
            raise InvalidRequest(
                "A Hugging Face token is needed: pass hf_token, or the admin sets TUNERY_PORTABILITY__HF_TOKEN.",
                param="hf_token",
            )
        exported = self.export(project_id, name, fmt)
        folder = exported.path.parent / "files"
        api = HfApi(endpoint=self._hub.endpoint, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=f"Upload {name} ({fmt}) exported by Tunery"
            )
        except (HfHubHTTPError, ValueError) as exc:
            raise InvalidRequest(
                f"The Hub at {self._hub.endpoint} refused the push: {exc}", param="hf_output_repo_name",
                code="hub_error",
            ) from None  # fmt: skip
        except (OSError, httpx.HTTPError) as exc:
            raise Unavailable(f"Cannot reach the Hub at {self._hub.endpoint}: {exc}") from None
        return {"object": "model.push", "model": name, "format": fmt, "repo_id": repo_id,
                "commit_url": str(commit.commit_url), "commit_oid": str(commit.oid)}  # fmt: skip

    def _build(
        self, fmt: str, adapter_key: str, base_model: str, folder: Path, *, base_id: str, model_name: str
    ) -> None:
        adapter_dir = adapter_path(self._blobs, adapter_key)
        base_dir = self._base_weights(base_model) if fmt != "peft" else adapter_dir
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        try:
            files = staging / "files"
            try:
                export_model(fmt, adapter_dir, base_dir, files, base_id=base_id, model_name=model_name)  # type: ignore[arg-type]
            except UnsupportedForGguf as exc:
                raise InvalidRequest(str(exc), param="format", code="unsupported_format") from None
            _, digest = write_archive(files, staging / f"{model_name}-{fmt}.tar")
            os.replace(staging / f"{model_name}-{fmt}.tar", staging / "archive.tar")
            (staging / "archive.tar.sha256").write_text(digest + "\n")
            if fmt == "gguf":
                for item in files.glob("*.gguf"):
                    (staging / f"{item.name}.sha256").write_text(sha256_of(item) + "\n")
            (staging / ".done").write_text(str(int(time.time())))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, project_id: str, name: str | None) -> int:
        """A model was deleted (``name``; None: a job): remove the exports made of it, then ``prune``."""
        removed = 0
        if name is not None and self._export_dir.is_dir():
            for owner_file in self._export_dir.glob(f"*/{OWNER_FILE}"):
                with contextlib.suppress(OSError, ValueError):
                    owner = json.loads(owner_file.read_text())
                    if (owner.get("project_id"), owner.get("name")) == (project_id, name):
                        shutil.rmtree(owner_file.parent, ignore_errors=True)
                        removed += 1
        return removed + self.prune()

    def prune(self) -> int:
        """Apply the cache rules (see the module docstring); returns how many exports were removed."""
        if not self._export_dir.is_dir():
            return 0
        with self._prune_guard:
            now = self._clock()
            removed = 0
            kept: list[tuple[float, int, Path]] = []  # (last use, bytes, format folder)
            for key_dir in sorted(p for p in self._export_dir.iterdir() if p.is_dir()):
                formats = [p for p in key_dir.iterdir() if p.is_dir()]
                if not self._owner_resolves(key_dir):
                    removed += sum(1 for f in formats if (f / DONE_FILE).exists())
                    shutil.rmtree(key_dir, ignore_errors=True)
                    continue
                for folder in formats:
                    if not (folder / DONE_FILE).exists():  # being built, or left by a crash mid-build
                        if folder.name.startswith(".building-") and _age(folder, now) > self._cache.max_age_s:
                            shutil.rmtree(folder, ignore_errors=True)
                        continue
                    used = _last_use(folder)
                    if used < now - max(self._cache.max_age_s, self._cache.grace_s):
                        shutil.rmtree(folder, ignore_errors=True)
                        removed += 1
                    else:
                        kept.append((used, _tree_bytes(folder), folder))
            total = sum(size for _, size, _ in kept)
            for used, size, folder in sorted(kept):
                if total <= self._cache.max_bytes:
                    break
                if used > now - self._cache.grace_s:
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                total -= size
                removed += 1
        if removed:
            log.info("export cache: removed %d export(s)", removed)
        return removed

    def _owner_resolves(self, key_dir: Path) -> bool:
        """Whether the model an export was made for still exists and still means the same adapter."""
        try:
            owner = json.loads((key_dir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return _age(key_dir, self._clock()) < self._cache.grace_s  # just made; else unknown and old
        try:
            ref = self._models.resolve(owner["project_id"], owner["name"])
        except NotFound:
            return False
        return bool(ref.adapter_key == owner.get("adapter_key"))


def _last_use(folder: Path) -> float:
    try:
        return (folder / DONE_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _tree_bytes(folder: Path) -> int:
    total = 0
    for item in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if item.is_file():
                total += item.stat().st_size
    return total


class JobHubPush:
    """Pushes a succeeded job's model to the Hub repository the job was created with (``hf_output_repo_name``).

    Called by the outbox sender for the job's ``huggingface`` row (written when the job succeeds, so a restart
    in between loses nothing). One attempt; a failure is raised as ``TrackerFailed`` and becomes a warning
    event on the job, which stays succeeded. The job's own Hub token is dropped after the attempt.
    """

    def __init__(self, jobs: JobStore, exports: ExportService) -> None:
        self._jobs = jobs
        self._exports = exports

    def __call__(self, delivery: Delivery) -> str:
        if delivery.job_id is None:
            raise TrackerFailed("the event names no job")
        job = self._jobs.get_any(delivery.job_id)
        target = job.extras.get("hf_output") or {}
        if not target.get("repo_id") or not job.fine_tuned_model:
            raise TrackerFailed("the job names no Hub repository or has no model")
        try:
            pushed = self._exports.push_to_hub(
                job.project_id, job.fine_tuned_model, str(target.get("format") or "peft"),
                repo_id=str(target["repo_id"]), token=job.extras.get("hf_api_token"),
                private=bool(target.get("private", True)),
            )  # fmt: skip
        except ServiceError as exc:
            raise TrackerFailed(exc.message) from None
        finally:
            self._jobs.forget_extra(job.id, "hf_api_token")
        return (
            f"Pushed {job.fine_tuned_model} ({pushed['format']}) to the Hugging Face Hub repository "
            f"{pushed['repo_id']}: {pushed['commit_url']}"
        )


@dataclass(frozen=True, slots=True)
class ImportRules:
    allowed_dir: Path | None  # local folders under it may be imported by path; None: path imports are off
    max_archive_bytes: int


class ImportService:
    def __init__(
        self,
        models: ModelService,
        catalog: Catalog,
        imported: ImportedModelStore,
        blobs: BlobStore,
        base_weights: BaseWeights,
        rules: ImportRules,
        work_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models = models
        self._catalog = catalog
        self._imported = imported
        self._blobs = blobs
        self._base_weights = base_weights
        self._rules = rules
        self._work_dir = work_dir
        self._clock = clock

    def import_archive(
        self, project_id: str, *, filename: str, chunks: Iterable[bytes], base_model: str | None, suffix: str | None
    ) -> ModelEntry:
        """Import a PEFT adapter from an uploaded ``.tar``, ``.tar.gz`` or ``.zip``.

        Raises:
            InvalidRequest: the archive or the adapter is not usable (the message says why), or does not fit
                its base model.
        """
        self._work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._work_dir) as scratch:
            archive = Path(scratch) / "upload"
            total = 0
            with archive.open("wb") as out:
                for chunk in chunks:
                    total += len(chunk)
                    if total > self._rules.max_archive_bytes:
                        raise InvalidRequest(
                            f"The archive is larger than {self._rules.max_archive_bytes} bytes.", param="file"
                        )
                    out.write(chunk)
            folder = _unpack(archive, Path(scratch) / "adapter", filename)
            return self._import(project_id, folder, base_model, suffix, source=f"upload:{filename}", param="file")

    def import_path(self, project_id: str, *, path: str, base_model: str | None, suffix: str | None) -> ModelEntry:
        """Import a PEFT adapter folder on the server's disk; it must lie under the admin-allowed folder.

        Raises:
            InvalidRequest: path imports are off, the path is outside the allowed folder or not an adapter.
        """
        allowed = self._rules.allowed_dir
        if allowed is None:
            raise InvalidRequest(
                "Importing from a server path is turned off; the server's admin allows it by setting "
                "TUNERY_PORTABILITY__IMPORT_ALLOWED_DIR. Upload the adapter as an archive instead.",
                param="path",
            )
        folder = Path(path).expanduser().resolve()
        if not folder.is_relative_to(allowed.resolve()):
            raise InvalidRequest(
                f"The path {path} is outside the folder the server allows imports from ({allowed}).", param="path"
            )
        if not folder.is_dir():
            raise InvalidRequest(f"The path {path} is not a folder on the server.", param="path")
        return self._import(project_id, folder, base_model, suffix, source=f"path:{folder}", param="path")

    def _import(
        self, project_id: str, folder: Path, base_model: str | None, suffix: str | None, *, source: str, param: str
    ) -> ModelEntry:
        if suffix is not None and (len(suffix) > 40 or not all(c.isalnum() or c in "-_" for c in suffix)):
            raise InvalidRequest("suffix may hold up to 40 letters, digits, '-' and '_'.", param="suffix")
        try:
            with PeftAdapter(folder) as adapter:
                spec = self._base_for(adapter.base_model_id, base_model)
                base_infos = {}
                for weights in weight_files(self._base_weights(spec.name)):
                    base_infos.update(read_infos(weights))
                check_against_base(adapter, base_infos, spec.name)
        except AdapterProblem as exc:
            raise InvalidRequest(
                f"The adapter cannot be imported: {exc}", param=param, code="invalid_adapter"
            ) from None
        except SafetensorsError as exc:
            raise InvalidRequest(f"The base model's weights cannot be read: {exc}", param="base_model") from None
        token = uuid.uuid4().hex
        name = f"{spec.name}.imported-{token[:12]}" + (f"-{suffix}" if suffix else "")
        key = f"adapters/imported/{token}"
        for filename in (CONFIG_FILE, WEIGHTS_FILE):
            with (folder / filename).open("rb") as handle:
                self._blobs.write(f"{key}/{filename}", iter(functools.partial(handle.read, CHUNK_BYTES), b""))
        now = int(self._clock())
        self._imported.insert(
            ImportedModel(id=name, project_id=project_id, base_model=spec.name, adapter_key=key, source=source,
                          created_at=now)
        )  # fmt: skip
        return self._models.retrieve(project_id, name)

    def _base_for(self, named: str, requested: str | None) -> BaseModelSpec:
        known = {spec.name: spec for spec in self._catalog.list()}
        by_id = {spec.portable_id: spec for spec in known.values()}
        named_spec = known.get(named) or by_id.get(named) or by_id.get(named.rstrip("/").rpartition("/")[2])
        if requested is not None:
            try:
                spec = self._catalog.get(requested)
            except NotFound as exc:
                raise InvalidRequest(exc.message, param="base_model") from None
            if named_spec is not None and named_spec.name != spec.name:
                raise AdapterProblem(
                    f"adapter_config.json names the base model '{named}' ({named_spec.name} here), not '{spec.name}'."
                )
            return spec
        if named_spec is None:
            raise AdapterProblem(
                f"adapter_config.json names the base model '{named or '(none)'}', which is not a base model of this "
                f"server ({', '.join(known)}); pass base_model to choose one."
            )
        return named_spec


def _unpack(archive: Path, target: Path, filename: str) -> Path:
    """Extract a tar or zip safely (no absolute paths, no '..', no links) and find the adapter folder in it."""
    target.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.infolist():
                    _safe_member(member.filename)
                bundle.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                for info in bundle.getmembers():
                    _safe_member(info.name)
                    if not (info.isfile() or info.isdir()):
                        raise InvalidRequest(
                            f"The archive holds '{info.name}', which is not a plain file.", param="file"
                        )
                bundle.extractall(target, filter="data")
        else:
            raise InvalidRequest(f"'{filename}' is not a .tar, .tar.gz or .zip archive.", param="file")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidRequest(f"'{filename}' cannot be unpacked: {exc}.", param="file") from None
    configs = sorted(target.rglob(CONFIG_FILE), key=lambda p: len(p.parts))
    if not configs:
        raise InvalidRequest(
            f"The archive '{filename}' holds no {CONFIG_FILE}; upload a PEFT adapter folder (as save_pretrained "
            "writes it) packed as .tar, .tar.gz or .zip.",
            param="file",
            code="invalid_adapter",
        )
    return configs[0].parent


def _safe_member(name: str) -> None:
    if name.startswith(("/", "\\")) or ".." in Path(name).parts:
        raise InvalidRequest(f"The archive holds the unsafe path '{name}'.", param="file")
