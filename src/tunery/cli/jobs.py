"""``tunery jobs create|list|show|events|cancel|pause|resume|watch``: fine-tuning jobs through the API."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import openai
import typer
from openai.types.fine_tuning import FineTuningJob
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunery.cli.client import ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console, print_json, status_text, table, when

app = typer.Typer(help="Create, watch and control fine-tuning jobs.", no_args_is_help=True)

TERMINAL = {"succeeded", "failed", "cancelled"}
URL = "http://127.0.0.1:8000/v1"


def _hyperparameters(n_epochs: int | None, batch_size: int | None, lr: float | None) -> dict[str, Any]:
    values = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": lr}
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def create(
    model: Annotated[str, typer.Option(help="Base model, fine-tuned model or checkpoint")],
    training_file: Annotated[str, typer.Option("--training-file", "-t", help="File id of the training data")],
    validation_file: Annotated[str | None, typer.Option("--validation-file", "-v", help="File id")] = None,
    method: Annotated[str, typer.Option(help="supervised, dpo or reinforcement")] = "supervised",
    n_epochs: Annotated[int | None, typer.Option(help="Epochs (default: auto)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step (default: auto)")] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option(help="Default: auto")] = None,
    beta: Annotated[float | None, typer.Option(help="DPO beta (default: auto)")] = None,
    grader: Annotated[
        Path | None, typer.Option(help="Reinforcement: a JSON file holding the grader", exists=True, dir_okay=False)
    ] = None,
    compute_multiplier: Annotated[float | None, typer.Option(help="Reinforcement: samples per prompt / 4")] = None,
    eval_interval: Annotated[int | None, typer.Option(help="Reinforcement: steps between evaluations")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Reinforcement: answers per validation prompt")] = None,
    reasoning_effort: Annotated[str | None, typer.Option(help="Reinforcement: low, medium or high")] = None,
    suffix: Annotated[str | None, typer.Option(help="Added to the fine-tuned model's name")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: generated)")] = None,
    watch_job: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends")] = False,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start a fine-tuning job."""
    client = make_client(base_url, api_key)
    hyper = _hyperparameters(n_epochs, batch_size, learning_rate_multiplier)
    if method == "dpo" and beta is not None:
        hyper["beta"] = beta
    body: dict[str, Any] = {"type": method, method: {"hyperparameters": hyper}}
    if method == "reinforcement":
        rft = {
            "compute_multiplier": compute_multiplier,
            "eval_interval": eval_interval,
            "eval_samples": eval_samples,
            "reasoning_effort": reasoning_effort,
        }
        hyper.update({k: v for k, v in rft.items() if v is not None})
        if grader is None:
            raise typer.BadParameter("a reinforcement job needs --grader grader.json", param_hint="--grader")
        try:
            body[method]["grader"] = json.loads(grader.read_text())
        except ValueError as exc:
            raise typer.BadParameter(f"{grader} is not JSON: {exc}", param_hint="--grader") from None
    with api_errors():
        job = client.fine_tuning.jobs.create(
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            method=body,  # type: ignore[arg-type]
            suffix=suffix,
            seed=seed,
        )
    if as_json:
        print_json(job)
    else:
        console.print(f"Created {job.id} ({status_text(job.status)}) fine-tuning {job.model}")
    if watch_job:
        _watch(client, job.id)


@app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option(help="How many")] = 20,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    client = make_client(base_url, api_key)
    with api_errors():
        jobs = client.fine_tuning.jobs.list(limit=limit).data
    if as_json:
        print_json([j.model_dump(mode="json") for j in jobs])
        return
    table(
        ["id", "model", "status", "fine-tuned model", "created"],
        ([j.id, j.model, status_text(j.status), j.fine_tuned_model or "-", when(j.created_at)] for j in jobs),
    )


@app.command()
def show(
    job_id: str,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one job."""
    client = make_client(base_url, api_key)
    with api_errors():
        job = client.fine_tuning.jobs.retrieve(job_id)
    if as_json:
        print_json(job)
        return
    _describe(job)


def _describe(job: FineTuningJob) -> None:
    console.print(f"[bold]{job.id}[/bold]  {status_text(job.status)}")
    rows = [
        ("model", job.model),
        ("training file", job.training_file),
        ("validation file", job.validation_file or "-"),
        ("method", job.method.type if job.method else "supervised"),
        ("hyperparameters", json.dumps(job.hyperparameters.model_dump(exclude_none=True))),
        ("seed", str(job.seed)),
        ("fine-tuned model", job.fine_tuned_model or "-"),
        ("trained tokens", str(job.trained_tokens) if job.trained_tokens is not None else "-"),
        ("results", ", ".join(job.result_files) or "-"),
        ("created", when(job.created_at)),
        ("finished", when(job.finished_at)),
    ]
    if job.error:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for name, value in rows:
        console.print(f"  {name:>16}  {value}")


@app.command()
def events(
    job_id: str,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a job's events, newest first."""
    client = make_client(base_url, api_key)
    with api_errors():
        page = client.fine_tuning.jobs.list_events(job_id, limit=limit).data
    if as_json:
        print_json([e.model_dump(mode="json") for e in page])
        return
    table(["time", "level", "message"], ([when(e.created_at), e.level, e.message] for e in page))


def _control(action: str, job_id: str, base_url: str, api_key: str | None) -> None:
    client = make_client(base_url, api_key)
    with api_errors():
        job = getattr(client.fine_tuning.jobs, action)(job_id)
    console.print(f"{job.id}: {status_text(job.status)}")


@app.command()
def cancel(job_id: str, base_url: BaseUrlOption = URL, api_key: ApiKeyOption = None) -> None:
    """Cancel a job (a running one stops within one optimizer step)."""
    _control("cancel", job_id, base_url, api_key)


@app.command()
def pause(job_id: str, base_url: BaseUrlOption = URL, api_key: ApiKeyOption = None) -> None:
    """Pause a running job; it saves a deployable checkpoint."""
    _control("pause", job_id, base_url, api_key)


@app.command()
def resume(job_id: str, base_url: BaseUrlOption = URL, api_key: ApiKeyOption = None) -> None:
    """Resume a paused job where it stopped."""
    _control("resume", job_id, base_url, api_key)


@app.command()
def watch(job_id: str, base_url: BaseUrlOption = URL, api_key: ApiKeyOption = None) -> None:
    """Follow a job with a live progress bar (step, epoch, loss, tokens/s, ETA) until it ends."""
    _watch(make_client(base_url, api_key), job_id)


def _watch(client: openai.OpenAI, job_id: str, poll_s: float = 2.0) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epoch {task.fields[epoch]} · loss {task.fields[loss]} · {task.fields[speed]} tok/s"),
        TimeRemainingColumn(),
    )
    seen_tokens: tuple[float, int] | None = None
    with api_errors(), Progress(*columns, console=console) as bar:
        task = bar.add_task("waiting", total=None, epoch="-", loss="-", speed="-")
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            progress = (job.model_extra or {}).get("progress") or {}
            step, total = int(progress.get("step") or 0), progress.get("total_steps")
            loss = _latest_loss(client, job_id)
            epochs = job.hyperparameters.n_epochs if isinstance(job.hyperparameters.n_epochs, int) else None
            epoch = math.ceil(step / (total / epochs)) if total and epochs and step else "-"
            tokens, now = int(progress.get("trained_tokens") or 0), time.monotonic()
            speed = "-"
            if seen_tokens and tokens > seen_tokens[1]:
                speed = f"{(tokens - seen_tokens[1]) / (now - seen_tokens[0]):.0f}"
            seen_tokens = (now, tokens)
            bar.update(task, description=job.status, total=total, completed=step, epoch=epoch, loss=loss, speed=speed)
            if job.status in TERMINAL:
                break
            time.sleep(poll_s)
    _describe(job)
    if job.status != "succeeded":
        raise typer.Exit(1)


def _latest_loss(client: openai.OpenAI, job_id: str) -> str:
    for event in client.fine_tuning.jobs.list_events(job_id, limit=20).data:
        data = getattr(event, "data", None) or {}
        if event.type == "metrics" and "train_loss" in data:
            return f"{data['train_loss']:.4f}"
    return "-"
