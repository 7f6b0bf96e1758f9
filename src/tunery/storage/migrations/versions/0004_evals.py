"""Evals, their runs and the runs' output items.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(none_as_null=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_evals_project_id_projects")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_evals")),
        sa.UniqueConstraint("id", name=op.f("uq_evals_id")),
    )
    op.create_index(op.f("ix_evals_project_id"), "evals", ["project_id"], unique=False)
    op.create_table(
        "eval_runs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("eval_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(), nullable=False),
        sa.Column("result_counts", sa.JSON(), nullable=False),
        sa.Column("per_model_usage", sa.JSON(), nullable=False),
        sa.Column("per_testing_criteria_results", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("checkpoint", sa.String(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("items_total", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["eval_id"], ["evals.id"], name=op.f("fk_eval_runs_eval_id_evals")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_eval_runs")),
        sa.UniqueConstraint("id", name=op.f("uq_eval_runs_id")),
    )
    op.create_index(op.f("ix_eval_runs_eval_id"), "eval_runs", ["eval_id"], unique=False)
    op.create_index(op.f("ix_eval_runs_status"), "eval_runs", ["status"], unique=False)
    op.create_index(op.f("ix_eval_runs_job_id"), "eval_runs", ["job_id"], unique=False)
    op.create_table(
        "eval_output_items",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("eval_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("datasource_item", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("sample", sa.JSON(), nullable=False),
        sa.Column("errored", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"], name=op.f("fk_eval_output_items_run_id_eval_runs")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_eval_output_items")),
        sa.UniqueConstraint("id", name=op.f("uq_eval_output_items_id")),
        sa.UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_id_datasource_item_id"),
    )
    op.create_index(op.f("ix_eval_output_items_run_id"), "eval_output_items", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_eval_output_items_run_id"), table_name="eval_output_items")
    op.drop_table("eval_output_items")
    op.drop_index(op.f("ix_eval_runs_job_id"), table_name="eval_runs")
    op.drop_index(op.f("ix_eval_runs_status"), table_name="eval_runs")
    op.drop_index(op.f("ix_eval_runs_eval_id"), table_name="eval_runs")
    op.drop_table("eval_runs")
    op.drop_index(op.f("ix_evals_project_id"), table_name="evals")
    op.drop_table("evals")
