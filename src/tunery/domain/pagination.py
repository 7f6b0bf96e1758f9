"""Cursor pagination shared by every list endpoint: ``after``, ``limit``, ``order``, ``has_more``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from tunery.domain.errors import InvalidRequest

T = TypeVar("T")


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Which page to return: items after the object ``after`` in ``order``, at most ``limit``."""

    limit: int
    after: str | None = None
    order: Order = Order.DESC

    @classmethod
    def build(
        cls,
        *,
        limit: int | None,
        after: str | None,
        order: str | None,
        default_limit: int,
        max_limit: int,
        default_order: Order = Order.DESC,
    ) -> PageRequest:
        """Check the caller's values and fill in the defaults.

        Raises:
            InvalidRequest: ``limit`` out of range or ``order`` not ``asc``/``desc``.
        """
        if limit is None:
            limit = default_limit
        if not 1 <= limit <= max_limit:
            raise InvalidRequest(f"limit must be between 1 and {max_limit}, got {limit}", param="limit")
        if order is None:
            parsed = default_order
        else:
            try:
                parsed = Order(order)
            except ValueError:
                raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order") from None
        return cls(limit=limit, after=after or None, order=parsed)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results; ``has_more`` tells the client whether to ask again with ``after``."""

    data: list[T]
    has_more: bool
