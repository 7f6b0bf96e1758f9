"""``tunery webhooks create|list|rm|test|rotate|deliveries``: a project's webhook endpoints (official SDK)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tunery.cli.client import DEFAULT_BASE_URL, ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console, print_json, status_text, table, when

app = typer.Typer(help="Webhook endpoints: be called when a job or an eval run ends.", no_args_is_help=True)
JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


@app.command()
def create(
    url: Annotated[str, typer.Argument(help="http(s) URL that receives the events")],
    name: Annotated[str, typer.Option("--name", "-n", help="A name for the endpoint")] = "webhook",
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="Event type (repeat): fine_tuning.job.* or eval.run.*; default: job events"),
    ] = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Create an endpoint and print its signing secret (shown only now)."""
    client = make_client(base_url, api_key)
    with api_errors():
        created = client.webhooks.create(name=name, url=url, event_types=event or JOB_EVENTS)  # type: ignore[arg-type]
    console.print(f"Created [bold]{created.id}[/bold] → {created.url}")
    console.print(f"Signing secret (shown once): {created.signing_secret}", soft_wrap=True, highlight=False)


@app.command("list")
def list_endpoints(
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the project's endpoints."""
    client = make_client(base_url, api_key)
    with api_errors():
        found = list(client.webhooks.list())
    if as_json:
        print_json([e.model_dump() for e in found])
        return
    table(["id", "name", "url", "events"], ([e.id, e.name, e.url, ", ".join(e.event_types)] for e in found))


@app.command()
def rm(endpoint_id: str, base_url: BaseUrlOption = DEFAULT_BASE_URL, api_key: ApiKeyOption = None) -> None:
    """Delete an endpoint (its pending deliveries are dropped)."""
    client = make_client(base_url, api_key)
    with api_errors():
        client.webhooks.delete(endpoint_id)
    console.print(f"Deleted {endpoint_id}")


@app.command("test")
def send_test(
    endpoint_id: str,
    event: Annotated[str, typer.Option("--event", "-e")] = "fine_tuning.job.succeeded",
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Send a sample event now and print the receiver's status code."""
    client = make_client(base_url, api_key)
    with api_errors():
        result = client.webhooks.test(endpoint_id, event_type=event)  # type: ignore[arg-type]
    console.print(f"{result.event_type} → HTTP {result.status_code or 'no answer'}")
    if not 200 <= result.status_code < 300:
        raise typer.Exit(1)


@app.command()
def rotate(
    endpoint_id: str,
    keep_old: Annotated[bool, typer.Option(help="Keep signing with the old secret too for 24 hours")] = False,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Rotate the signing secret and print the new one."""
    client = make_client(base_url, api_key)
    with api_errors():
        rotated = client.webhooks.rotate_secret(endpoint_id, keep_old_secret_active_for_24_hours=keep_old)
    console.print(f"New signing secret: {rotated.signing_secret}", soft_wrap=True, highlight=False)


@app.command()
def deliveries(
    endpoint_id: str,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The endpoint's delivery log: each event, its attempts and the last answer."""
    client = make_client(base_url, api_key)
    with api_errors():
        data: Any = client.get(f"/webhook_endpoints/{endpoint_id}/deliveries", cast_to=object)
    if as_json:
        print_json(data["data"])
        return
    table(
        ["event", "type", "state", "attempts", "last status", "last attempt"],
        (
            [d["event_id"], d["event_type"], status_text(d["state"]), str(d["attempts"]),
             str(d["last_status_code"] or d["last_error"] or "-"), when(int(d["last_attempt_at"] or 0))]
            for d in data["data"]
        ),
    )  # fmt: skip
