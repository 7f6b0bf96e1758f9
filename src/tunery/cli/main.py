"""``tunery``: the root command. Settings are read here, once, and handed down.

Server commands (``serve``, ``keys``) work on the local database directly; client commands (``files``,
…) talk to a running server through the official ``openai`` SDK.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from tunery import __version__
from tunery.cli import chat, deployments, evals, files, jobs, models, webhooks
from tunery.cli.output import console
from tunery.config import Settings

app = typer.Typer(
    help="Tunery: self-hosted fine-tuning with the Azure OpenAI / OpenAI API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create API keys (works on the local database; the server need not run).")
app.add_typer(keys_app, name="keys")
app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.add_typer(deployments.app, name="deployments")
app.add_typer(evals.app, name="evals")
app.add_typer(webhooks.app, name="webhooks")
app.command("deploy")(deployments.deploy)
app.command("chat")(chat.chat)
app.add_typer(models.app, name="models")
app.command("migrate")(models.migrate)

DEFAULT_PROJECT = "default"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000)")] = None,
    prepare: Annotated[bool, typer.Option(help="Prepare the default base model's tokenizer before serving")] = True,
    worker: Annotated[
        bool | None, typer.Option("--worker/--no-worker", help="Run a training worker in this process")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Start the API server, its background file checks and (by default) a training worker."""
    import threading

    import uvicorn

    from tunery.api.app import create_app
    from tunery.bootstrap import build_services, prepare_base_model
    from tunery.portal.routes import router as portal_router
    from tunery.worker.outbox import start_outbox_thread
    from tunery.worker.runner import Worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    host = host or settings.api.host
    port = port or settings.api.port
    if prepare:
        with console.status("Preparing the default base model's tokenizer…"):
            prepare_base_model(settings)
    services = build_services(settings)
    first_key = None
    if not services.keys.has_keys():
        first_key = services.keys.create(DEFAULT_PROJECT, admin=True)
    services.files.sweep()
    services.files.reserve_space()
    recovered = services.files.recover()
    if recovered:
        logging.getLogger("tunery").info("re-checking %d file(s) left unfinished by a restart", recovered)
    app_ = create_app(
        services,
        max_upload_bytes=settings.files.max_upload_bytes,
        max_import_bytes=settings.portability.max_import_bytes,
        max_part_bytes=settings.files.max_part_bytes,
        cors_origins=settings.api.cors_origins,
    )
    app_.include_router(portal_router)  # the web portal at /, a client of the API above
    stop = threading.Event()
    worker_thread = None
    if settings.worker.enabled if worker is None else worker:
        runner = Worker(services.runs, poll_s=settings.worker.poll_interval_s)
        worker_thread = threading.Thread(target=runner.run, args=(stop,), name="tunery-worker", daemon=True)
        worker_thread.start()
    if settings.webhooks.enabled:
        start_outbox_thread(services.outbox, stop, settings.webhooks.poll_interval_s)

    eval_thread = None
    if settings.evals.runner_enabled:
        from tunery.bootstrap import build_eval_executor
        from tunery.worker.eval_runner import EvalRunner

        eval_runner = EvalRunner(
            build_eval_executor(settings, services),
            services.checkpoint_evals,
            poll_s=settings.evals.poll_interval_s,
            stale_after_s=settings.evals.stale_after_s,
        )
        eval_thread = threading.Thread(target=eval_runner.run, args=(stop,), name="tunery-evals", daemon=True)
        eval_thread.start()

    def reap_forever() -> None:  # the 15-day inactivity rule (spec §9.1): deployments go, models stay
        while not stop.wait(settings.deployments.reap_interval_s):
            try:
                services.deployments.reap()
            except Exception:  # the database may be briefly unreachable: try again next round
                logging.getLogger("tunery.reaper").exception("reaping inactive deployments failed")
            try:
                services.exports.prune()  # this server's export cache: deleted models, old and least-used exports
            except Exception:
                logging.getLogger("tunery.reaper").exception("pruning the export cache failed")

    threading.Thread(target=reap_forever, name="tunery-reaper", daemon=True).start()

    def recheck_forever() -> None:  # files another (stopped) server accepted but never finished checking
        while not stop.wait(settings.files.recheck_interval_s):
            try:
                services.files.recover()
            except Exception:
                logging.getLogger("tunery.files").exception("taking up waiting file checks failed")

    threading.Thread(target=recheck_forever, name="tunery-file-rechecks", daemon=True).start()
    url = f"http://{host}:{port}"
    console.print(f"[bold green]Tunery {__version__}[/bold green] serving on [bold]{url}[/bold]")
    console.print(f"  Portal: {url}/")
    console.print(f"  OpenAI layout: {url}/v1   Azure: {url}/openai/v1  ·  data in {settings.data_dir}")
    if first_key:
        console.print(f"  API key for project '{first_key.project.name}': [bold]{first_key.secret}[/bold]")
        console.print("  (shown once; `tunery keys create --project NAME` makes more)")
    try:
        uvicorn.run(app_, host=host, port=port, log_level=log_level.lower())
    finally:
        stop.set()
        if worker_thread is not None:
            worker_thread.join(timeout=30)
        if eval_thread is not None:
            eval_thread.join(timeout=30)
        services.close()


@app.command("worker")
def worker_command(
    log_level: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Run a training worker (several may share one PostgreSQL database)."""
    import signal
    import threading

    from tunery.bootstrap import build_services
    from tunery.worker.outbox import start_outbox_thread
    from tunery.worker.runner import Worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    services = build_services(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if settings.webhooks.enabled:
        start_outbox_thread(services.outbox, stop, settings.webhooks.poll_interval_s)
    runner = Worker(services.runs, poll_s=settings.worker.poll_interval_s)
    console.print(f"Tunery worker {runner.worker_id} waiting for jobs (Ctrl-C to stop)")
    try:
        runner.run(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        services.close()


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="Project the key belongs to (created on first use)")] = DEFAULT_PROJECT,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: may also share checkpoints")] = False,
) -> None:
    """Create an API key and print it (it is shown only once). Keys are members unless --admin."""
    from tunery.bootstrap import build_services

    services = build_services(Settings(), background_checks=False)
    try:
        issued = services.keys.create(project, admin=admin)
    finally:
        services.close()
    console.print(issued.secret, soft_wrap=True, highlight=False)


@app.command()
def version() -> None:
    """Print Tunery's version."""
    console.print(__version__)


def main() -> None:
    app()
