"""Renders API objects for people (rich tables) or machines (``--json``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def when(timestamp: int | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def print_json(obj: Any) -> None:
    data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj
    console.print_json(json.dumps(data))


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None) -> None:
    grid = Table(*columns, title=title, header_style="bold", show_lines=False)
    for row in rows:
        grid.add_row(*row)
    console.print(grid)


STATUS_STYLE = {
    "processed": "green",
    "succeeded": "green",
    "error": "red",
    "failed": "red",
    "cancelled": "yellow",
    "pending": "cyan",
    "running": "cyan",
    "uploaded": "cyan",
}


def status_text(status: str) -> str:
    style = STATUS_STYLE.get(status, "white")
    return f"[{style}]{status}[/{style}]"
