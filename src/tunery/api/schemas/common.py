"""Shapes shared by every resource: list pages and deletion receipts, and the building blocks of request
bodies (``Loose`` models that keep unknown fields, int64 bounds, fields validated by a function)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

T = TypeVar("T")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class Loose(BaseModel):
    """A request body: JSON types are checked strictly (``"5"`` is not 5, ``true`` is not 1), and fields this
    model does not name are accepted and kept, as the official clients send some Tunery does not use."""

    model_config = ConfigDict(strict=True, extra="allow")


def one_of(check: Callable[[Any], Any], json_schema: dict[str, Any]) -> tuple[PlainValidator, WithJsonSchema]:
    """Metadata for a field of several JSON shapes, ``Annotated[T, *one_of(check, schema)]``: validated by
    ``check`` (its ValueError names this field alone, where a pydantic union would name each branch) and
    documented in OpenAPI as ``json_schema``."""
    return PlainValidator(check), WithJsonSchema(json_schema)


class ListResponse(BaseModel, Generic[T]):
    """A cursor page: the client asks again with ``after=last_id`` while ``has_more`` is true."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list[T], has_more: bool, *, ids: bool = False) -> ListResponse[T]:
        """``ids=True`` adds ``first_id``/``last_id``: OpenAI's schema requires them as strings, so an
        empty page carries empty strings rather than nulls."""
        if not ids:
            return cls(data=data, has_more=has_more)
        first = getattr(data[0], "id", "") if data else ""
        last = getattr(data[-1], "id", "") if data else ""
        return cls(data=data, has_more=has_more, first_id=first, last_id=last)


class DeletedResponse(BaseModel):
    """``{"id", "object", "deleted": true}`` as the SDK's ``FileDeleted`` / ``ModelDeleted``."""

    id: str
    object: str
    deleted: bool = True
