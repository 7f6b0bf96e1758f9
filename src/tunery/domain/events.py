"""Job events: the log a user watches (spec §3.2.9, §4.4), newest first."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventLevel(StrEnum):
    INFO = "info"
    WARN = "warn"  # Azure's dated layout spells it "warning"
    ERROR = "error"


class EventType(StrEnum):
    MESSAGE = "message"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: str
    job_id: str
    created_at: int
    level: EventLevel
    message: str
    type: EventType = EventType.MESSAGE
    data: dict[str, Any] | None = None
