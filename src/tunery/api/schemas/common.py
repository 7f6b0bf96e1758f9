"""Shapes shared by every resource: list pages and deletion receipts."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


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
