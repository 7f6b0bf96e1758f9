"""``tunery deploy`` and ``tunery deployments list|rm``: name a model to chat with (data-plane API)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tunery.cli.client import ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console, print_json, status_text, table, when

app = typer.Typer(help="List and delete deployments.", no_args_is_help=True)
URL = "http://127.0.0.1:8000/v1"


def deploy(
    model: Annotated[str, typer.Argument(help="Fine-tuned model, checkpoint (name or id) or base model")],
    name: Annotated[str, typer.Option("--name", "-n", help="Deployment name to call it by")],
    capacity: Annotated[int, typer.Option(help="sku capacity")] = 1,
    wait: Annotated[bool, typer.Option(help="Wait until it is ready to serve")] = True,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Deploy a model under a name (Accepted → Succeeded)."""
    client = make_client(base_url, api_key)
    body = {"sku": {"name": "standard", "capacity": capacity},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}}}  # fmt: skip
    with api_errors():
        deployment: Any = client.put(f"/deployments/{name}", body=body, cast_to=object)
        deadline = time.monotonic() + 600
        with console.status(f"Loading {model}…"):
            while wait and deployment["properties"]["provisioningState"] == "Accepted" and time.monotonic() < deadline:
                time.sleep(0.5)
                deployment = client.get(f"/deployments/{name}", cast_to=object)
    if as_json:
        print_json(deployment)
        return
    state = deployment["properties"]["provisioningState"]
    console.print(f"Deployment [bold]{name}[/bold] → {model}: {status_text(state.lower())}")
    if deployment.get("error"):
        console.print(f"  [red]{deployment['error']}[/red]")
        raise typer.Exit(1)


@app.command("list")
def list_deployments(
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List deployments."""
    client = make_client(base_url, api_key)
    with api_errors():
        data: Any = client.get("/deployments", cast_to=object)
    if as_json:
        print_json(data["data"])
        return
    table(
        ["name", "model", "state", "last used"],
        ([d["id"], d["model"], status_text(d["status"]), when(d["last_used_at"])] for d in data["data"]),
    )


@app.command()
def rm(name: str, base_url: BaseUrlOption = URL, api_key: ApiKeyOption = None) -> None:
    """Delete a deployment (its model stays)."""
    client = make_client(base_url, api_key)
    with api_errors():
        client.delete(f"/deployments/{name}", cast_to=object)
    console.print(f"Deleted deployment {name}")
