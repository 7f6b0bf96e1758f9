"""The SQL schema: SQLAlchemy Core tables on one ``MetaData``.

Alembic migrations (``migrations/versions``) must produce exactly this schema; a test compares the two
on SQLite and PostgreSQL. The naming convention gives every constraint and index a stable name, which
Alembic's batch mode needs to alter tables on SQLite. Timestamps are integer Unix seconds (BIGINT, so
they outlive 2038). Records are converted to and from rows in the stores, not here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class TextJSON(TypeDecorator[Any]):
    """JSON whose strings are always text: an unpaired UTF-16 surrogate (which JSON can escape but UTF-8
    cannot hold) becomes U+FFFD going in and coming out, so every stored row can be read back and sent."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _repaired(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return _repaired(value)


def _repaired(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return value
    if isinstance(value, dict):
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    return value


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
ID = String(64)  # "<prefix>-<32 hex>"
ENUM = String(32)  # StrEnum values stored as text, so adding a value needs no migration

metadata = MetaData(naming_convention=NAMING_CONVENTION)

projects = Table(
    "projects",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", ID, primary_key=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True, index=True),
    Column("prefix", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # "admin" may share checkpoints with other projects; "member" may not. Keys older than roles: member.
    Column("role", ENUM, nullable=False, server_default="member"),
)

files = Table(
    "files",
    metadata,
    # seq orders pages stably (ids are random); it never leaves the storage layer.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("filename", String, nullable=False),
    Column("purpose", ENUM, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("status", ENUM, nullable=False, index=True),
    Column("status_details", Text, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("problems", TextJSON, nullable=False),  # [{"line", "code", "message"}, ...]
    Column("problem_count", Integer, nullable=False),
    Column("stats", TextJSON(none_as_null=True), nullable=True),  # DatasetStats.to_dict() or SQL NULL
    Column("format", ENUM, nullable=True),
    # while status is "running": until when the server checking the file holds it (renewed as it goes); once
    # past, any server may check the file again (its checker died). NULL on a running row: no live lease.
    Column("check_lease_until", Float, nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("model", String, nullable=False),  # as the user named it
    Column("base_model", String, nullable=False),
    Column("training_file", ID, nullable=False),
    Column("validation_file", ID, nullable=True),
    Column("method", ENUM, nullable=False),
    Column("hyperparameters", TextJSON, nullable=False),  # Hyperparameters.to_dict(): as requested
    Column("seed", BigInteger, nullable=False),
    Column("status", ENUM, nullable=False, index=True),
    Column("parent_model", String, nullable=True),
    Column("resolved", TextJSON(none_as_null=True), nullable=True),  # Hyperparameters.to_dict() or SQL NULL
    Column("suffix", String, nullable=True),
    Column("metadata", TextJSON(none_as_null=True), nullable=True),  # {str: str} or SQL NULL
    Column("integrations", TextJSON(none_as_null=True), nullable=True),  # [{...}, ...] or SQL NULL
    Column("training_type", ENUM, nullable=True),
    Column("extras", TextJSON, nullable=False),  # {name: value}
    Column("error", TextJSON(none_as_null=True), nullable=True),  # {"code", "message", "param"} or SQL NULL
    Column("fine_tuned_model", String, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("started_at", BigInteger, nullable=True),
    Column("trained_tokens", BigInteger, nullable=True),
    Column("result_files", TextJSON, nullable=False),  # [file id, ...]
    Column("estimated_finish", BigInteger, nullable=True),
    Column("step", Integer, nullable=False),
    Column("total_steps", Integer, nullable=True),
    # The worker that holds the job and its last sign of life (Unix seconds, fractional).
    Column("worker_id", String, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("trainer_pid", Integer, nullable=True),
)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("job_id", ID, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("level", ENUM, nullable=False),
    Column("message", Text, nullable=False),
    Column("type", ENUM, nullable=False),
    Column("data", TextJSON(none_as_null=True), nullable=True),  # {name: value} or SQL NULL
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("job_id", ID, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("project_id", ID, nullable=False),  # the job's, copied so lookups by name need no join
    Column("created_at", BigInteger, nullable=False),
    Column("step_number", Integer, nullable=False),
    Column("fine_tuned_model_checkpoint", String, nullable=False, unique=True),
    Column("adapter_key", String, nullable=False),
    Column("metrics", TextJSON, nullable=False),  # {column: value}
    # Kept whatever the retention count says: a pause checkpoint users were told they can deploy.
    Column("pinned", Boolean, nullable=False, server_default=false()),
)

job_metrics = Table(
    "job_metrics",
    metadata,
    # One results.csv row per optimizer step; a resumed run rewrites its steps in place.
    Column("job_id", ID, ForeignKey("jobs.id"), primary_key=True),
    Column("step", Integer, primary_key=True, autoincrement=False),
    Column("values", TextJSON, nullable=False),  # {column: value}; read it as job_metrics.c["values"]
)

fine_tuned_models = Table(
    "fine_tuned_models",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String, nullable=False, unique=True),  # the model name: <base>.ft-<job hex>[-<suffix>]
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("job_id", ID, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("base_model", String, nullable=False),
    Column("parent_model", String, nullable=True),
    Column("adapter_key", String, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("method", ENUM, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),  # set by a delete; the row stays (the name is taken)
)

deployments = Table(
    "deployments",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("model", String, nullable=False),
    Column("base_model", String, nullable=False),
    Column("adapter_key", String, nullable=True),
    Column("sku_name", String(64), nullable=False),
    Column("sku_capacity", Integer, nullable=False),
    Column("state", ENUM, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=False),
    Column("model_format", String(32), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("error", Text, nullable=True),
    UniqueConstraint("project_id", "name", name="uq_deployments_project_id_name"),
)

evals = Table(
    "evals",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("name", String, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("data_source_config", JSON, nullable=False),  # as echoed: {"type": "custom", "schema": {...}}
    Column("testing_criteria", JSON, nullable=False),  # [grader as echoed, with its "id"]
    Column("metadata", JSON(none_as_null=True), nullable=True),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("eval_id", ID, ForeignKey("evals.id"), nullable=False, index=True),
    Column("project_id", ID, nullable=False),
    Column("name", String, nullable=False),
    Column("model", String, nullable=False),
    Column("status", ENUM, nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("data_source", JSON, nullable=False),
    Column("metadata", JSON(none_as_null=True), nullable=True),
    Column("error", JSON, nullable=False),  # {"code", "message"}; empty strings while there is none
    Column("result_counts", JSON, nullable=False),
    Column("per_model_usage", JSON, nullable=False),
    Column("per_testing_criteria_results", JSON, nullable=False),
    # Tunery's per-checkpoint evals: the job and checkpoint (None = the base model) this run scores.
    Column("job_id", ID, nullable=True, index=True),
    Column("checkpoint", String, nullable=True),
    Column("step", Integer, nullable=False),
    Column("items_total", Integer, nullable=False),
    Column("worker_id", String, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
)

eval_output_items = Table(
    "eval_output_items",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("run_id", ID, ForeignKey("eval_runs.id"), nullable=False, index=True),
    Column("eval_id", ID, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("status", ENUM, nullable=False),
    Column("datasource_item_id", Integer, nullable=False),
    Column("datasource_item", JSON, nullable=False),
    Column("results", JSON, nullable=False),
    Column("sample", JSON, nullable=False),
    Column("errored", Integer, nullable=False),  # 1 when sampling or a grader errored
    UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_id_datasource_item_id"),
)

imported_models = Table(
    "imported_models",
    metadata,
    # Adapters trained elsewhere and imported (no job made them); they resolve like fine-tuned models.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String, nullable=False, unique=True),  # the model name: <base>.imported-<hex>[-<suffix>]
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("base_model", String, nullable=False),
    Column("adapter_key", String, nullable=False),
    Column("source", Text, nullable=False),  # what was imported: "upload:<filename>" or "path:<folder>"
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
)

migrated_jobs = Table(
    "migrated_jobs",
    metadata,
    # One row per fine-tuning job seen on a migration source; its source model id is an alias of the new one.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("source_url", String, nullable=False),
    Column("source_job_id", String, nullable=False),
    Column("source_model", String, nullable=True),  # the source's fine_tuned_model (the alias), if any
    Column("job_id", ID, nullable=True),  # the job recreated here; NULL when it was not moved
    Column("status", ENUM, nullable=False),  # moved | not_moved
    Column("reason", Text, nullable=True),
    Column("details", JSON, nullable=False),  # {"training_file", "validation_file", "base_model", ...}
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("project_id", "source_url", "source_job_id", name="uq_migrated_jobs_project_id_source"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("name", String, nullable=False),
    Column("url", String, nullable=False),
    Column("event_types", JSON, nullable=False),  # [type, ...]
    Column("secret", String, nullable=False),  # whsec_<base64>
    Column("previous_secret", String, nullable=True),  # still signs until previous_secret_until
    Column("previous_secret_until", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# The durable outbox: one row per (event, receiver), written in the transaction that ends the job. A
# receiver is a webhook endpoint (endpoint_id) or an experiment tracker (target "wandb", "mlflow").
outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),  # the delivery's id
    Column("event_id", ID, nullable=False, index=True),  # the same on every attempt and every receiver
    Column("event_type", String(64), nullable=False),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("job_id", ID, nullable=True),
    Column("target", ENUM, nullable=False),  # "webhook", "wandb", "mlflow", "huggingface"
    Column("endpoint_id", ID, nullable=True, index=True),
    Column("payload", Text, nullable=False),  # the exact body sent on every attempt
    Column("created_at", BigInteger, nullable=False),
    Column("state", ENUM, nullable=False, index=True),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("claimed_by", String, nullable=True),
    Column("claimed_until", Float, nullable=True),
    Column("last_attempt_at", Float, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_response", Text, nullable=True),  # the receiver's answer, cut short
    Column("last_error", Text, nullable=True),
    Column("finished_at", Float, nullable=True),
)

uploads = Table(
    "uploads",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("project_id", ID, ForeignKey("projects.id"), nullable=False, index=True),
    Column("filename", String, nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("mime_type", String, nullable=False),
    Column("status", ENUM, nullable=False),  # pending, completed, cancelled, expired
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("file_id", ID, nullable=True),
)

upload_parts = Table(
    "upload_parts",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("upload_id", ID, ForeignKey("uploads.id"), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("blob_key", String, nullable=False),
)

checkpoint_permissions = Table(
    "checkpoint_permissions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("checkpoint", String, nullable=False, index=True),  # fine_tuned_model_checkpoint name
    Column("owner_project_id", ID, ForeignKey("projects.id"), nullable=False),
    Column("project_id", ID, nullable=False, index=True),  # the project it is shared with
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("checkpoint", "project_id", name="uq_checkpoint_permissions_checkpoint_project_id"),
)
