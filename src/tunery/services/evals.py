"""Evals: create and manage evals and their runs; check a run's data before any work starts (spec §2).

A run is only recorded here (``queued``); ``eval_runner`` executes it in the background. Everything a run
needs is checked at creation: the rows exist and match the item schema, templates name item fields that
exist, the model resolves, and the work is bounded (items and completion tokens), so a run fails later
only for reasons nobody could see coming (the model deleted meanwhile, the engine down).
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
from pydantic import ValidationError

from tunery.domain.errors import InvalidRequest, NotFound
from tunery.domain.evals import Eval, EvalRun, OutputItem, RunStatus, RunTarget, new_eval_id, new_run_id
from tunery.domain.files import FilePurpose, FileRecord, FileStatus
from tunery.domain.pagination import Page, PageRequest
from tunery.graders import EVAL_GRADER_TYPES, parse_grader, validate_grader
from tunery.graders import templates as grader_templates
from tunery.services.chat import ChatService
from tunery.services.eval_requests import (
    CompletionsDataSource,
    CreateEvalRequest,
    CreateEvalRunRequest,
    FileContentSource,
    FileIdSource,
    ItemReferenceMessages,
    TemplateMessages,
    UpdateEvalRequest,
)
from tunery.services.files import FileService
from tunery.storage.evals import EvalStore

ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.IN_PROGRESS})
# Recommended sample schema for include_sample_schema (spec §2.2).
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
        "output_audio": {"type": "object"},
    },
    "required": ["model", "choices"],
}
DEFAULT_SEED = 42


@dataclass(frozen=True, slots=True)
class EvalRules:
    max_items_per_run: int = 5000
    max_completion_tokens: int = 1024  # per item
    default_completion_tokens: int = 256  # when sampling_params names none
    max_run_tokens: int = 2_000_000  # items x completion tokens, checked before a run starts
    max_file_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Row:
    """One data source row: its ``item`` and, for jsonl runs, an optional ready ``sample``."""

    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class EvalService:
    def __init__(
        self,
        store: EvalStore,
        files: FileService,
        chat: ChatService,
        rules: EvalRules,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._files = files
        self._chat = chat
        self.rules = rules
        self._clock = clock
        self._delete_guards: builtins.list[Callable[[Eval], None]] = []

    def guard_deletes(self, guard: Callable[[Eval], None]) -> None:
        """Add a check that may refuse to delete an eval (raising ``Conflict``): an RFT job's while it runs."""
        self._delete_guards.append(guard)

    @property
    def store(self) -> EvalStore:
        return self._store

    # ------------------------------------------------------------------------------------------ evals
    def create(self, project_id: str, request: CreateEvalRequest) -> Eval:
        config = request.data_source_config
        try:
            jsonschema.Draft202012Validator.check_schema(config.item_schema)
        except jsonschema.SchemaError as exc:
            raise InvalidRequest(
                f"data_source_config.item_schema is not a valid JSON schema: {exc.message}",
                param="data_source_config.item_schema",
            ) from None
        schema: dict[str, Any] = {"type": "object", "properties": {"item": config.item_schema}, "required": ["item"]}
        if config.include_sample_schema:
            schema["properties"]["sample"] = SAMPLE_SCHEMA
            schema["required"] = ["item", "sample"]
        fields = item_fields(config.item_schema)
        criteria = [self._criterion(raw, index, fields) for index, raw in enumerate(request.testing_criteria)]
        ev = Eval(
            id=new_eval_id(),
            project_id=project_id,
            name=request.name or "",
            created_at=int(self._clock()),
            data_source_config={"type": "custom", "schema": schema},
            testing_criteria=criteria,
            metadata=request.metadata,
        )
        self._store.insert_eval(ev)
        return ev

    def _criterion(self, raw: dict[str, Any], index: int, fields: set[str] | None) -> dict[str, Any]:
        param = f"testing_criteria[{index}]"
        if raw.get("type") == "multi":
            raise InvalidRequest(
                "A multi grader cannot be an eval's testing criterion (it is for fine-tuning and /graders/run).",
                param=f"{param}.type",
            )
        if raw.get("type") == "text_similarity" and not isinstance(raw.get("pass_threshold"), (int, float)):
            raise InvalidRequest(
                "A text_similarity testing criterion needs a numeric 'pass_threshold'.", param=f"{param}.pass_threshold"
            )
        spec = {k: v for k, v in raw.items() if k != "id"}
        grader = parse_grader(spec, param=param, allowed=EVAL_GRADER_TYPES)
        validate_grader(grader, item_fields=fields, param=param)
        echoed = _normalise_messages(dict(raw), "input")
        echoed["id"] = f"{raw.get('name', 'criterion')}-{uuid.uuid4()}"
        return echoed

    def list(self, project_id: str, page: PageRequest) -> Page[Eval]:
        return self._store.list_evals(project_id, page)

    def retrieve(self, project_id: str, eval_id: str) -> Eval:
        return self._store.get_eval(project_id, eval_id)

    def update(self, project_id: str, eval_id: str, request: UpdateEvalRequest) -> Eval:
        ev = self._store.get_eval(project_id, eval_id)
        changes: dict[str, Any] = {}
        if request.name is not None:
            changes["name"] = request.name
        if "metadata" in request.model_fields_set:
            changes["metadata"] = request.metadata
        ev = ev.with_changes(**changes)
        self._store.update_eval(ev)
        return ev

    def delete(self, project_id: str, eval_id: str) -> None:
        ev = self._store.get_eval(project_id, eval_id)
        for guard in self._delete_guards:
            guard(ev)
        self._store.delete_eval(project_id, eval_id)

    # ------------------------------------------------------------------------------------------- runs
    def create_run(
        self,
        project_id: str,
        eval_id: str,
        request: CreateEvalRunRequest,
        *,
        target: RunTarget | None = None,
        dry_run: bool = False,
    ) -> EvalRun:
        """Check the run completely, then record it ``queued`` for the runner.

        Raises:
            NotFound: no such eval.
            InvalidRequest: naming the parameter: a row failing the item schema, a template naming a missing
                item field, an unknown model, a file that is not this project's, a run over the bounds.
        """
        ev = self._store.get_eval(project_id, eval_id)
        source = request.data_source
        rows = self.rows(project_id, source.source)
        if not rows:
            raise InvalidRequest("The data source has no rows.", param="data_source.source")
        if len(rows) > self.rules.max_items_per_run:
            raise InvalidRequest(
                f"The data source has {len(rows)} rows; a run may have at most {self.rules.max_items_per_run}.",
                param="data_source.source",
            )
        self._check_items(ev, rows)
        echo = source.model_dump(mode="json", exclude_none=True, by_alias=True)
        model = ""
        if isinstance(source, CompletionsDataSource):
            model = source.model
            self._check_completions(project_id, ev, source, rows)
            echo["sampling_params"] = self.sampling(source)
            if isinstance(source.input_messages, TemplateMessages):
                echo["input_messages"]["template"] = [_normalise_message(m) for m in source.input_messages.template]
        else:
            models = {str((row.sample or {}).get("model") or "") for row in rows}
            model = models.pop() if len(models) == 1 else ""
        run = EvalRun(
            id=new_run_id(),
            eval_id=ev.id,
            project_id=project_id,
            name=request.name or model or "jsonl",
            model=model,
            status=RunStatus.QUEUED,
            created_at=int(self._clock()),
            data_source=echo,
            metadata=request.metadata,
            target=target,
            items_total=len(rows),
        )
        if not dry_run:
            self._store.insert_run(run)
        return run

    def sampling(self, source: CompletionsDataSource) -> dict[str, Any]:
        """The effective sampling parameters of a completions run (echoed; never null)."""
        params = source.sampling_params
        max_tokens = (params.max_completion_tokens if params else None) or self.rules.default_completion_tokens
        return {
            "temperature": params.temperature if params and params.temperature is not None else 1.0,
            "top_p": params.top_p if params and params.top_p is not None else 1.0,
            "seed": params.seed if params and params.seed is not None else DEFAULT_SEED,
            "max_completion_tokens": max_tokens,
        }

    def _check_completions(
        self, project_id: str, ev: Eval, source: CompletionsDataSource, rows: builtins.list[Row]
    ) -> None:
        sampling = self.sampling(source)
        if sampling["max_completion_tokens"] > self.rules.max_completion_tokens:
            raise InvalidRequest(
                f"max_completion_tokens may be at most {self.rules.max_completion_tokens} in an eval run.",
                param="data_source.sampling_params.max_completion_tokens",
            )
        total = sampling["max_completion_tokens"] * len(rows)
        if total > self.rules.max_run_tokens:
            raise InvalidRequest(
                f"This run could generate {total} tokens ({len(rows)} items x {sampling['max_completion_tokens']}); "
                f"a run may generate at most {self.rules.max_run_tokens}. Use fewer items or fewer tokens.",
                param="data_source.sampling_params.max_completion_tokens",
            )
        self.resolve_model(project_id, source.model)
        messages = source.input_messages
        if messages is None:
            raise InvalidRequest(
                "A completions run needs 'input_messages' (a template or an item_reference).",
                param="data_source.input_messages",
            )
        if isinstance(messages, TemplateMessages):
            fields = item_fields(ev.item_schema)
            for index, message in enumerate(messages.template):
                param = f"data_source.input_messages.template[{index}]"
                if not isinstance(message.get("role"), str):
                    raise InvalidRequest("Each template message needs a 'role'.", param=f"{param}.role")
                for path, text in _template_strings({"content": message.get("content")}, param):
                    for variable in grader_templates.variables(text, param=path):
                        if variable.namespace != "item":
                            raise InvalidRequest(
                                f"'{path}' may only use the item namespace ({{{{item.*}}}}), not "
                                f"'{{{{{variable.text}}}}}'.",
                                param=path,
                            )
                    grader_templates.check(text, param=path, item_fields=fields)
                    for row_index, row in enumerate(rows):
                        try:
                            grader_templates.render(text, sample={}, item=row.item, param=path)
                        except Exception as exc:  # TemplateVariableError: the row lacks the field
                            raise InvalidRequest(f"Row {row_index}: {exc} (used by {path}).", param=path) from None
        elif isinstance(messages, ItemReferenceMessages):
            reference = messages.item_reference.strip().removeprefix("{{").removesuffix("}}").strip()
            for row_index, row in enumerate(rows):
                if not _valid_messages(_lookup(reference, row.item)):
                    raise InvalidRequest(
                        f"Row {row_index}: '{messages.item_reference}' does not name a list of chat messages "
                        "({'role', 'content'} objects) in the item.",
                        param="data_source.input_messages.item_reference",
                    )

    def resolve_model(self, project_id: str, model: str) -> Any:
        try:
            return self._chat.resolve(project_id, model=model, deployment=None)
        except NotFound as exc:
            raise InvalidRequest(exc.message, param="data_source.model", code="model_not_found") from None

    def _check_items(self, ev: Eval, rows: builtins.list[Row]) -> None:
        validator = jsonschema.Draft202012Validator(ev.item_schema)
        for index, row in enumerate(rows):
            error = jsonschema.exceptions.best_match(validator.iter_errors(row.item))
            if error is not None:
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
                raise InvalidRequest(
                    f"Row {index}: the item does not match the eval's item_schema: item{where}: {error.message}",
                    param=f"data_source.source.content[{index}].item",
                )

    def rows(self, project_id: str, source: FileContentSource | FileIdSource) -> builtins.list[Row]:
        """The data source's rows (inline, or read from a file of this project, one JSON object a line)."""
        if isinstance(source, FileContentSource):
            return [Row(item=row.item, sample=row.sample) for row in source.content]
        try:
            record, stream = self._files.content(project_id, source.id)
        except NotFound:
            raise InvalidRequest(f"No file with id '{source.id}' was found.", param="data_source.source.id") from None
        if record.purpose is FilePurpose.EVALS and record.status is not FileStatus.PROCESSED:
            stream.close()
            raise _unusable_file(record)
        with stream:
            data = stream.read(self.rules.max_file_bytes + 1)
        if len(data) > self.rules.max_file_bytes:
            raise InvalidRequest(
                f"File {source.id} is larger than {self.rules.max_file_bytes} bytes.", param="data_source.source.id"
            )
        rows = []
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
                if not isinstance(parsed, dict):
                    raise ValueError("not an object")
                row = Row(item=parsed["item"], sample=parsed.get("sample")) if "item" in parsed else Row(item=parsed)
                if not isinstance(row.item, dict):
                    raise ValueError("'item' is not an object")
            except ValueError as exc:
                raise InvalidRequest(
                    f"Line {number} of file {source.id} is not a JSON object with an 'item' object: {exc}",
                    param="data_source.source.id",
                ) from None
            rows.append(row)
        return rows

    def list_runs(self, project_id: str, eval_id: str, page: PageRequest, status: str | None = None) -> Page[EvalRun]:
        self._store.get_eval(project_id, eval_id)
        parsed = None
        if status is not None:
            try:
                parsed = RunStatus(status)
            except ValueError:
                allowed = ", ".join(s.value for s in RunStatus)
                raise InvalidRequest(f"status must be one of {allowed}.", param="status") from None
        return self._store.list_runs(project_id, eval_id, page, parsed)

    def retrieve_run(self, project_id: str, eval_id: str, run_id: str) -> EvalRun:
        return self._store.get_run(project_id, eval_id, run_id)

    def cancel_run(self, project_id: str, eval_id: str, run_id: str) -> EvalRun:
        """Cancel a queued or running run (the runner stops at its next batch); a finished run is returned
        unchanged."""
        run = self._store.get_run(project_id, eval_id, run_id)
        if run.status.terminal:
            return run
        canceled = self._store.transition(run.id, RunStatus.CANCELED, expect=ACTIVE, finished_at=int(self._clock()))
        return canceled or self._store.get_run(project_id, eval_id, run_id)

    def delete_run(self, project_id: str, eval_id: str, run_id: str) -> None:
        run = self._store.get_run(project_id, eval_id, run_id)
        if not run.status.terminal:
            self.cancel_run(project_id, eval_id, run_id)
        self._store.delete_run(project_id, eval_id, run_id)

    def list_items(
        self, project_id: str, eval_id: str, run_id: str, page: PageRequest, status: str | None = None
    ) -> Page[OutputItem]:
        self._store.get_run(project_id, eval_id, run_id)
        if status not in (None, "pass", "fail"):
            raise InvalidRequest("status must be 'pass' or 'fail'.", param="status")
        return self._store.list_items(run_id, page, status)

    def retrieve_item(self, project_id: str, eval_id: str, run_id: str, item_id: str) -> OutputItem:
        self._store.get_run(project_id, eval_id, run_id)
        return self._store.get_item(run_id, item_id)

    def parse_run_request(self, body: dict[str, Any], *, param_prefix: str = "") -> CreateEvalRunRequest:
        """A run request from a raw dict (the job's per-checkpoint evals), errors naming ``param_prefix``."""
        try:
            return CreateEvalRunRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "tagged-union")))
            raise InvalidRequest(f"Invalid value for '{param_prefix}{path}': {first['msg']}.",
                                 param=f"{param_prefix}{path}") from None  # fmt: skip


def item_fields(item_schema: dict[str, Any]) -> set[str] | None:
    """The item's top-level fields when the schema lists them (templates may name only these), else None."""
    properties = item_schema.get("properties")
    if isinstance(properties, dict) and properties and item_schema.get("additionalProperties") is not True:
        return set(properties)
    return None


def _template_strings(node: Any, param: str) -> list[tuple[str, str]]:
    """Every string holding ``{{`` in a grader or message (but not python source), with its param path."""
    found: list[tuple[str, str]] = []
    if isinstance(node, str):
        if "{{" in node:
            found.append((param, node))
    elif isinstance(node, dict):
        for key, value in node.items():
            if key != "source":
                found += _template_strings(value, f"{param}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _template_strings(value, f"{param}[{index}]")
    return found


def _normalise_message(message: dict[str, Any]) -> dict[str, Any]:
    """``{"role", "content": str}`` -> OpenAI's stored ``EvalItem`` form (spec §2.3 echo normalisation)."""
    if isinstance(message, dict) and isinstance(message.get("content"), str) and "role" in message:
        return {"type": "message", "role": message["role"],
                "content": {"type": "input_text", "text": message["content"]}}  # fmt: skip
    if isinstance(message, dict) and "type" not in message and "role" in message:
        return {"type": "message", **message}
    return message


def _normalise_messages(grader: dict[str, Any], key: str) -> dict[str, Any]:
    if isinstance(grader.get(key), list):
        grader[key] = [_normalise_message(m) for m in grader[key]]
    return grader


def _lookup(path: str, item: dict[str, Any]) -> Any:
    node: Any = {"item": item}
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _unusable_file(record: FileRecord) -> InvalidRequest:
    """The 400 for an evals file whose checks failed or have not finished."""
    if record.status is FileStatus.ERROR:
        first = record.problems[0].describe() if record.problems else (record.status_details or "")
        return InvalidRequest(
            f"File {record.id} failed its checks ({record.problem_count} problem(s); first: {first}). "
            "Fix the file and upload it again.",
            param="data_source.source.id",
        )
    return InvalidRequest(
        f"File {record.id} is still being checked (status {record.status.value}); wait until it is processed "
        "(client.files.wait_for_processing) and try again.",
        param="data_source.source.id",
        code="file_not_ready",
    )


def _valid_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    )


def message_text(content: Any) -> str:
    """A message's text, whether content is a string, an ``input_text`` part or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    return ""
