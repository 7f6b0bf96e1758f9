"""``tunery files upload|list|show|rm``: manage training files through the API."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from openai.types import FileObject
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from tunery.cli.client import ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console, human_bytes, print_json, status_text, table, when

app = typer.Typer(help="Upload and inspect training files.", no_args_is_help=True)

TERMINAL = {"processed", "error", "deleted"}


class _ProgressReader:
    """A file wrapper that advances a progress bar as the upload reads it."""

    def __init__(self, raw: BinaryIO, progress: Progress, task: Any) -> None:
        self._raw, self._progress, self._task = raw, progress, task
        self.name = raw.name

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._progress.advance(self._task, len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def show_report(obj: FileObject) -> None:
    """Print a file's status, statistics and line-numbered problems readably."""
    extra = obj.model_extra or {}
    console.print(f"[bold]{obj.filename}[/bold]  {obj.id}  {human_bytes(obj.bytes)}  {status_text(obj.status)}")
    validation = extra.get("validation") or {}
    stats = validation.get("statistics")
    if stats:
        console.print(
            f"  {stats['examples']} examples · tokens min/mean/max {stats['tokens_min']}/"
            f"{stats['tokens_mean']:.0f}/{stats['tokens_max']} · {stats['trainable_tokens']} trainable tokens"
            f" · {stats['examples_over_context']} over the {stats.get('context_length') or '?'}-token context"
        )
    problems = validation.get("problems") or []
    if problems:
        total = validation.get("problem_count", len(problems))
        console.print(
            f"  [red]{total} problem(s)[/red]" + (f", first {len(problems)}:" if total > len(problems) else ":")
        )
        for problem in problems:
            where = f"line {problem['line']}" if problem.get("line") else "file"
            console.print(f"  [yellow]{where:>10}[/yellow]  {problem['message']}  [dim]({problem['code']})[/dim]")
    elif obj.status == "error" and obj.status_details:
        console.print(f"  [red]{obj.status_details}[/red]")


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    base_url: BaseUrlOption = "http://127.0.0.1:8000/v1",
    api_key: ApiKeyOption = None,
    purpose: Annotated[str, typer.Option(help="File purpose")] = "fine-tune",
    wait: Annotated[bool, typer.Option(help="Wait for the checks and print the report")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the file object as JSON")] = False,
) -> None:
    """Upload a JSONL training file and show what the checks found."""
    client = make_client(base_url, api_key)
    size = path.stat().st_size
    with api_errors():
        with (
            path.open("rb") as raw,
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
                transient=True,
                disable=as_json,
            ) as progress,
        ):
            task = progress.add_task(f"Uploading {path.name}", total=size)
            obj = client.files.create(file=(path.name, _ProgressReader(raw, progress, task)), purpose=purpose)  # type: ignore[arg-type]
        if wait:
            deadline = time.monotonic() + 600
            with console.status("Checking the file…", spinner="dots") if not as_json else nullcontext():
                while obj.status not in TERMINAL and time.monotonic() < deadline:
                    time.sleep(0.5)
                    obj = client.files.retrieve(obj.id)
    if as_json:
        print_json(obj)
    else:
        show_report(obj)
    if obj.status == "error":
        raise typer.Exit(1)


@app.command("list")
def list_files(
    base_url: BaseUrlOption = "http://127.0.0.1:8000/v1",
    api_key: ApiKeyOption = None,
    purpose: Annotated[str | None, typer.Option(help="Only files with this purpose")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List files, newest first."""
    client = make_client(base_url, api_key)
    with api_errors():
        files = list(client.files.list(purpose=purpose) if purpose else client.files.list())
    if as_json:
        print_json([f.model_dump(mode="json") for f in files])
        return
    table(
        ["id", "filename", "purpose", "size", "status", "created"],
        ([f.id, f.filename, f.purpose, human_bytes(f.bytes), status_text(f.status), when(f.created_at)] for f in files),
    )


@app.command()
def show(
    file_id: str,
    base_url: BaseUrlOption = "http://127.0.0.1:8000/v1",
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one file with its statistics or problems."""
    client = make_client(base_url, api_key)
    with api_errors():
        obj = client.files.retrieve(file_id)
    print_json(obj) if as_json else show_report(obj)


@app.command()
def rm(
    file_id: str,
    base_url: BaseUrlOption = "http://127.0.0.1:8000/v1",
    api_key: ApiKeyOption = None,
) -> None:
    """Delete a file."""
    client = make_client(base_url, api_key)
    with api_errors():
        client.files.delete(file_id)
    console.print(f"Deleted {file_id}")
