"""The SQL schema: SQLAlchemy Core tables on one ``MetaData``.

Alembic migrations (``migrations/versions``) must produce exactly this schema; a test compares the two
on SQLite and PostgreSQL. The naming convention gives every constraint and index a stable name, which
Alembic's batch mode needs to alter tables on SQLite. Timestamps are integer Unix seconds (BIGINT, so
they outlive 2038). Records are converted to and from rows in the stores, not here.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Integer, MetaData, String, Table, Text

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
    Column("problems", JSON, nullable=False),  # [{"line", "code", "message"}, ...]
    Column("problem_count", Integer, nullable=False),
    Column("stats", JSON(none_as_null=True), nullable=True),  # DatasetStats.to_dict() or SQL NULL
    Column("format", ENUM, nullable=True),
)
