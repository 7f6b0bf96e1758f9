"""``tunery evals create|run|show``: evals through the API (the official ``openai`` SDK over HTTP).

``create`` takes the item schema and graders as JSON (inline or ``@file``); ``run`` reads a local JSONL of
``{"item": {...}}`` rows (or uses an uploaded file id), starts a run on any model Tunery serves and shows a
progress bar until it ends; ``show`` lists an eval's runs, or one run's counts and items.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import openai
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunery.cli.client import ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console, err_console, print_json, status_text, table, when

app = typer.Typer(help="Create evals, run them on models, and read the results.", no_args_is_help=True)

URL = "http://127.0.0.1:8000/v1"
TERMINAL = {"completed", "failed", "canceled"}
DEFAULT_TEMPLATE = '[{"role": "user", "content": "{{item.input}}"}]'


def _json_arg(value: str, what: str) -> Any:
    """JSON given inline, or ``@path`` to read it from a file."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        err_console.print(f"[red]{what} is not valid JSON:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def create(
    item_schema: Annotated[str, typer.Option(help="JSON schema of one item (JSON or @file)")],
    grader: Annotated[list[str], typer.Option(help="A testing criterion (JSON or @file); repeatable")],
    name: Annotated[str, typer.Option(help="Name of the eval")] = "",
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an eval with a custom item schema and one or more graders."""
    client = make_client(base_url, api_key)
    criteria = [_json_arg(g, "--grader") for g in grader]
    with api_errors():
        ev = client.evals.create(
            name=name,
            data_source_config={"type": "custom", "item_schema": _json_arg(item_schema, "--item-schema")},
            testing_criteria=criteria,
        )
    if as_json:
        print_json(ev)
    else:
        console.print(f"Created eval {ev.id} with {len(ev.testing_criteria)} testing criteria")


@app.command()
def run(
    eval_id: Annotated[str, typer.Argument(help="The eval to run")],
    model: Annotated[str, typer.Option(help="Base model, fine-tune, checkpoint, deployment or <model>:best")],
    data: Annotated[Path | None, typer.Option(help='Local JSONL of {"item": {...}} rows')] = None,
    file_id: Annotated[str | None, typer.Option(help="An uploaded JSONL file instead of --data")] = None,
    template: Annotated[str, typer.Option(help="Input messages template (JSON or @file)")] = DEFAULT_TEMPLATE,
    max_tokens: Annotated[int | None, typer.Option(help="Most completion tokens per item")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature")] = 0.0,
    name: Annotated[str | None, typer.Option(help="Name of the run")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Show progress until the run ends")] = True,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run an eval on a model: every item's completion is sampled (batched) and graded."""
    if (data is None) == (file_id is None):
        err_console.print("[red]Give exactly one of --data (a local JSONL) or --file-id.[/red]")
        raise typer.Exit(2)
    if data is not None:
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        source: dict[str, Any] = {"type": "file_content",
                                  "content": [r if "item" in r else {"item": r} for r in rows]}  # fmt: skip
    else:
        source = {"type": "file_id", "id": file_id}
    sampling: dict[str, Any] = {"temperature": temperature}
    if max_tokens is not None:
        sampling["max_completion_tokens"] = max_tokens
    data_source = {"type": "completions", "model": model, "source": source, "sampling_params": sampling,
                   "input_messages": {"type": "template", "template": _json_arg(template, "--template")}}  # fmt: skip
    client = make_client(base_url, api_key)
    with api_errors():
        created = client.evals.runs.create(eval_id, data_source=data_source, name=name or model)  # type: ignore[arg-type]
    if not wait:
        print_json(created) if as_json else console.print(f"Started run {created.id} ({created.status})")
        return
    finished = _watch(client, eval_id, created.id)
    if as_json:
        print_json(finished)
    else:
        _describe_run(finished)
    if finished.status != "completed":
        raise typer.Exit(1)


def _watch(client: openai.OpenAI, eval_id: str, run_id: str, poll_s: float = 0.5) -> Any:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("passed {task.fields[passed]}"), TimeElapsedColumn())  # fmt: skip
    with api_errors(), Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("queued", total=None, passed=0)
        while True:
            current = client.evals.runs.retrieve(run_id, eval_id=eval_id)
            progress = (current.model_extra or {}).get("progress") or {}
            bar.update(task, description=current.status, total=progress.get("total") or None,
                       completed=progress.get("done") or 0, passed=current.result_counts.passed)  # fmt: skip
            if current.status in TERMINAL:
                return current
            time.sleep(poll_s)


def _describe_run(run: Any) -> None:
    counts = run.result_counts
    rate = f"{counts.passed / counts.total:.1%}" if counts.total else "-"
    console.print(f"Run {run.id} on {run.model or '-'}: {status_text(run.status)}")
    console.print(f"  {counts.passed} passed · {counts.failed} failed · {counts.errored} errored "
                  f"of {counts.total} (pass rate {rate})")  # fmt: skip
    for result in run.per_testing_criteria_results or []:
        console.print(f"  {result.testing_criteria}: {result.passed} passed, {result.failed} failed")
    if run.error and run.error.code:
        console.print(f"  [red]{run.error.code}[/red]: {run.error.message}")


@app.command()
def show(
    eval_id: Annotated[str, typer.Argument(help="The eval")],
    run_id: Annotated[str | None, typer.Option("--run", help="Show this run and its items")] = None,
    limit: Annotated[int, typer.Option(help="Items to list with --run")] = 20,
    base_url: BaseUrlOption = URL,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show an eval and its runs, or one run with its output items."""
    client = make_client(base_url, api_key)
    with api_errors():
        if run_id is None:
            ev = client.evals.retrieve(eval_id)
            runs = client.evals.runs.list(eval_id, limit=100).data
            if as_json:
                print_json({"eval": ev.model_dump(mode="json"), "runs": [r.model_dump(mode="json") for r in runs]})
                return
            console.print(f"Eval {ev.id} '{ev.name}' created {when(ev.created_at)}; criteria: "
                          + ", ".join(c.name for c in ev.testing_criteria))  # fmt: skip
            table(
                ["run", "model", "status", "passed", "total", "pass rate"],
                [[r.id, r.model, status_text(r.status), str(r.result_counts.passed), str(r.result_counts.total),
                  f"{r.result_counts.passed / r.result_counts.total:.1%}" if r.result_counts.total else "-"]
                 for r in runs],
            )  # fmt: skip
            return
        found = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        items = client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=limit).data
    if as_json:
        print_json({"run": found.model_dump(mode="json"), "items": [i.model_dump(mode="json") for i in items]})
        return
    _describe_run(found)
    table(
        ["#", "status", "answer", "grades"],
        [[str(i.datasource_item_id), i.status, (i.sample.output[0].content if i.sample.output else "")[:60],
          ", ".join(f"{r.name.rsplit('-', 5)[0]}={r.score:g}" for r in i.results)] for i in items],
    )  # fmt: skip
