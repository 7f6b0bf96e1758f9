"""Imported adapters and jobs migrated from another OpenAI-compatible service.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "imported_models",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("base_model", sa.String(), nullable=False),
        sa.Column("adapter_key", sa.String(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_imported_models_project_id_projects")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_imported_models")),
        sa.UniqueConstraint("id", name=op.f("uq_imported_models_id")),
    )
    op.create_index(op.f("ix_imported_models_project_id"), "imported_models", ["project_id"], unique=False)
    op.create_table(
        "migrated_jobs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("source_url", sa.String(), nullable=False),
        sa.Column("source_job_id", sa.String(), nullable=False),
        sa.Column("source_model", sa.String(), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_migrated_jobs_project_id_projects")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_migrated_jobs")),
        sa.UniqueConstraint("project_id", "source_url", "source_job_id", name="uq_migrated_jobs_project_id_source"),
    )
    op.create_index(op.f("ix_migrated_jobs_project_id"), "migrated_jobs", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_migrated_jobs_project_id"), table_name="migrated_jobs")
    op.drop_table("migrated_jobs")
    op.drop_index(op.f("ix_imported_models_project_id"), table_name="imported_models")
    op.drop_table("imported_models")
