"""Builds the official ``openai`` client the client commands use, and turns its errors into one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import openai
import typer

from tunery.cli.output import err_console

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

BaseUrlOption = Annotated[
    str, typer.Option("--base-url", envvar="TUNERY_BASE_URL", help="Tunery's OpenAI-layout URL (…/v1)")
]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="TUNERY_API_KEY", help="API key (printed by `tunery serve`)")
]


def make_client(base_url: str, api_key: str | None) -> openai.OpenAI:
    if not api_key:
        err_console.print(
            "[red]No API key:[/red] pass --api-key or set TUNERY_API_KEY "
            "(`tunery serve` prints one; `tunery keys create` makes more)."
        )
        raise typer.Exit(1)
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=1)


@contextmanager
def api_errors() -> Iterator[None]:
    """Print an API error as one line and exit 1, as a CLI user expects."""
    try:
        yield
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or str(exc)
        err_console.print(f"[red]Error {exc.status_code}:[/red] {message}")
        raise typer.Exit(1) from None
    except openai.APIConnectionError as exc:
        err_console.print(f"[red]Cannot reach Tunery:[/red] {exc.__cause__ or exc}. Is `tunery serve` running?")
        raise typer.Exit(1) from None


ClientFactory = Callable[[], openai.OpenAI]
