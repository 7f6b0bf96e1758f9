"""``tunery models export|import`` and ``tunery migrate``: move models out of and into Tunery.

Export streams the download to disk, checks it against the server's sha256 and (for archives) unpacks it
into the folder asked for. Import uploads a PEFT folder (packed here as a tar) or names a server folder.
Migrate asks the server to pull fine-tuning jobs from another OpenAI-compatible service and prints the report.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from tunery.cli.client import ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console, err_console, print_json, table

app = typer.Typer(help="Export models, import adapters.", no_args_is_help=True)
URL = "http://127.0.0.1:8000/v1"
CHUNK_BYTES = 1024 * 1024


@app.command("export")
def export(
    model: Annotated[str, typer.Argument(help="Fine-tuned model or checkpoint")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to unpack into (or a .tar/.gguf file)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="peft | merged | gguf")] = "peft",
    part: Annotated[str | None, typer.Option(help="gguf only: 'merged' or 'adapter' for one .gguf file")] = None,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Download a model as a PEFT folder, a merged Hugging Face folder, or GGUF (checksum verified)."""
    make_client(base_url, api_key)  # checks the key is there
    params = {"format": fmt, **({"part": part} if part else {})}
    url = f"{base_url.rstrip('/')}/models/{quote(model, safe='')}/export"
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=output.parent if output.parent.exists() else None, delete=False) as tmp:
        partial = Path(tmp.name)
        try:
            with httpx.stream("GET", url, params=params, headers={"Authorization": f"Bearer {api_key}"},
                              timeout=httpx.Timeout(60.0, read=3600.0)) as response:  # fmt: skip
                if response.status_code != 200:
                    response.read()
                    message = (response.json().get("error") or {}).get("message", response.text)
                    err_console.print(f"[red]Error {response.status_code}:[/red] {message}")
                    raise typer.Exit(1)
                expected = response.headers.get("x-checksum-sha256", "")
                with console.status(f"Downloading {model} ({fmt})…"):
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        digest.update(chunk)
                        tmp.write(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            err_console.print(f"[red]Cannot reach Tunery:[/red] {exc}. Is `tunery serve` running?")
            raise typer.Exit(1) from None
    if expected and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        err_console.print(f"[red]Checksum mismatch:[/red] got {digest.hexdigest()}, the server said {expected}.")
        raise typer.Exit(1)
    if part or output.suffix in (".tar", ".gguf"):
        partial.replace(output)
    else:
        output.mkdir(parents=True, exist_ok=True)
        with tarfile.open(partial) as archive:
            for member in archive.getmembers():
                member.name = member.name.partition("/")[2]  # drop the archive's top folder
                if member.name:
                    archive.extract(member, output, filter="data")
        partial.unlink()
    console.print(f"Exported {model} ({fmt}) to {output}  sha256 {digest.hexdigest()}")


@app.command("import")
def import_adapter(
    source: Annotated[str, typer.Argument(help="A PEFT adapter folder or archive here, or (--server-path) there")],
    base_model: Annotated[str | None, typer.Option(help="Base model here (default: from adapter_config.json)")] = None,
    suffix: Annotated[str | None, typer.Option(help="Added to the new model's name")] = None,
    server_path: Annotated[bool, typer.Option(help="SOURCE is a folder on the server (admin-allowed)")] = False,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Import a LoRA adapter trained elsewhere as a model you can deploy, chat with and fine-tune further."""
    client = make_client(base_url, api_key)
    options = {k: v for k, v in (("base_model", base_model), ("suffix", suffix)) if v}
    with api_errors():
        if server_path:
            model: Any = client.post("/models/import", body={"path": source, **options}, cast_to=object)
        else:
            path = Path(source)
            if path.is_dir():
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as archive:
                    archive.add(path, arcname=path.name)
                payload, name = buffer.getvalue(), f"{path.name}.tar"
            else:
                payload, name = path.read_bytes(), path.name
            response = httpx.post(
                f"{base_url.rstrip('/')}/models/import", headers={"Authorization": f"Bearer {api_key}"},
                files={"file": (name, payload)}, data=options, timeout=600.0,
            )  # fmt: skip
            if response.status_code != 200:
                message = (response.json().get("error") or {}).get("message", response.text)
                err_console.print(f"[red]Error {response.status_code}:[/red] {message}")
                raise typer.Exit(1)
            model = response.json()
    if as_json:
        print_json(model)
        return
    console.print(f"Imported [bold]{model['id']}[/bold]")


@app.command("push")
def push(
    model: Annotated[str, typer.Argument(help="Fine-tuned model or checkpoint")],
    repo: Annotated[str, typer.Option("--repo", help="Hugging Face Hub repository, owner/name")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="peft | merged | gguf")] = "peft",
    hf_token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hub token with write access")] = None,
    public: Annotated[bool, typer.Option(help="Create the repository public (default private)")] = False,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Push an exported model to a Hugging Face Hub repository (the server uploads it)."""
    client = make_client(base_url, api_key).with_options(timeout=3600.0)
    body = {"hf_output_repo_name": repo, "format": fmt, "hf_token": hf_token, "private": not public}
    with api_errors():
        pushed: Any = client.post(f"/models/{quote(model, safe='')}/push", body=body, cast_to=object)
    console.print(f"Pushed {model} ({fmt}) to {pushed['repo_id']}: {pushed['commit_url']}")


def migrate(
    from_url: Annotated[str, typer.Option("--from-url", help="The source's OpenAI-layout URL (…/v1)")],
    source_key: Annotated[
        str, typer.Option("--source-api-key", envvar="TUNERY_SOURCE_API_KEY", help="The source's API key")
    ],
    base: Annotated[str | None, typer.Option("--base", help="Base model here for the recreated jobs")] = None,
    compare: Annotated[bool, typer.Option(help="Old vs new answers where both models answer")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would move; create nothing")] = False,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recreate another service's fine-tuning jobs here (same data, hyperparameters, seed, suffix, metadata).

    Run it again later: nothing moves twice, failed moves are retried, and finished jobs get their side by side.
    """
    client = make_client(base_url, api_key).with_options(timeout=3600.0)
    body = {"source_url": from_url, "api_key": source_key, "base_model": base, "compare": compare, "dry_run": dry_run}
    with api_errors():
        report: Any = client.post("/migrations", body=body, cast_to=object)
    if as_json:
        print_json(report)
        return
    moved = f"{report['would_move']} would move (dry run)" if dry_run else f"{report['moved']} moved"
    console.print(
        f"From {report['source_url']} onto {report['base_model']}: {moved}, "
        f"{report['already_moved']} moved before, {report['not_moved']} not moved"
    )
    table(
        ["source job", "old model", "status", "new job", "reason"],
        ([e["source_job_id"], e["source_model"] or "", e["status"], e["job_id"] or "", e["reason"] or ""]
         for e in report["entries"]),
    )  # fmt: skip
    for entry in report["entries"]:
        for row in entry["comparisons"]:
            console.print(f"[bold]{entry['source_model']}[/bold] vs {entry['fine_tuned_model']}:")
            console.print(f"  old: {row.get('old')!r}\n  new: {row.get('new')!r}")
