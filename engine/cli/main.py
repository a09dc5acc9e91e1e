"""The `nurture` command: validate workflows, run the production processes; the rest attached."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import click
import dramatiq
import uvicorn
from dotenv import load_dotenv
from fastapi import FastAPI

from engine.app import App, load
from engine.cli.backtest import register as register_backtest
from engine.cli.commands import open_app, register
from engine.cli.experiments import register as register_experiments
from engine.cli.imports import register as register_imports
from engine.cli.merging import register as register_merging
from engine.cli.playback import register as register_playback
from engine.cli.privacy import register as register_privacy
from engine.cli.project import init_command
from engine.cli.rollout import apply_at_start
from engine.cli.rollout import register as register_rollout
from engine.errors import ConfigurationError, NurtureError, WorkflowError
from engine.http.api import create_api
from engine.migrations import upgrade
from engine.runner.actors import POLL_MS, Tasks, make_broker
from engine.runner.jobs import run_job
from engine.safety import refuse_unsafe
from engine.settings import QUEUES, Settings
from engine.starter import ENV_FILE
from engine.workflow.changes import check_against
from engine.workflow.loading import load_previous

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
# Without API keys, `nurture run` serves only this machine.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj  # type: ignore[no-any-return]


@click.group()
@click.option("--database-url", envvar="NURTURE_DATABASE_URL", help="SQLAlchemy database URL.")
@click.option("--redis-url", envvar="NURTURE_REDIS_URL", help="Redis URL of the Dramatiq broker.")
@click.option(
    "--workflows", envvar="NURTURE_WORKFLOWS", help="Folder of scoring.yml and sequences."
)
@click.option(
    "--templates", envvar="NURTURE_TEMPLATES", help="Folder of email/ and sms/ templates."
)
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str | None,
    redis_url: str | None,
    workflows: str | None,
    templates: str | None,
) -> None:
    """nurture: lead scoring, nurture sequences and SQL handoff."""
    overrides = {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_REDIS_URL": redis_url,
        "NURTURE_WORKFLOWS": workflows,
        "NURTURE_TEMPLATES": templates,
    }
    ctx.obj = Settings.from_env({**os.environ, **{k: v for k, v in overrides.items() if v}})


@main.command()
@click.option(
    "--against",
    type=click.Path(exists=True, path_type=Path),
    help="A previous version (sequence file or workflows folder): check renames against it.",
)
@click.pass_context
def validate(ctx: click.Context, against: Path | None) -> None:
    """Check scoring, sequences, sending rules and templates; every problem with file:line."""
    try:
        workflows, _, _ = load(_settings(ctx))
        if against is not None:
            previous = load_previous(against)
            problems = [
                problem
                for name, sequence in sorted(workflows.sequences.items())
                if name in previous
                for problem in check_against(previous[name], sequence)
            ]
            if problems:
                raise WorkflowError(problems)
    except WorkflowError as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(error.problems)} problem(s) found", err=True)
        sys.exit(EXIT_FOUND)
    names = ", ".join(sorted(workflows.sequences))
    click.echo(f"ok: scoring and {len(workflows.sequences)} sequence(s) valid ({names})")


def _refuse_unsafe() -> None:
    """Exit 2 naming every weak or published secret: a production process never starts on one."""
    try:
        refuse_unsafe(os.environ)
    except ConfigurationError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)


def _until_signalled() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so processes stop cleanly under an orchestrator."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@main.command()
@click.option("--threads", default=8, show_default=True, help="Worker threads in this process.")
@click.option(
    "--queues",
    default=",".join(QUEUES),
    show_default=True,
    help="Queues this worker takes, comma separated: e.g. a worker of its own for paced sends.",
)
@click.pass_context
def worker(ctx: click.Context, threads: int, queues: str) -> None:
    """Run a Dramatiq worker: events, journeys, sends and handoffs."""
    chosen = {q.strip() for q in queues.split(",") if q.strip()}
    if not chosen or not chosen <= set(QUEUES):
        click.echo(f"error: --queues takes some of {', '.join(QUEUES)}", err=True)
        sys.exit(EXIT_USAGE)
    _refuse_unsafe()
    app = open_app(ctx, schema=False)
    if not app.settings.redis_url:
        click.echo("error: a worker needs NURTURE_REDIS_URL (or use `nurture run`)", err=True)
        sys.exit(EXIT_USAGE)
    broker = make_broker(app.settings.redis_url)
    Tasks(broker, app, jobs=run_job)
    process = dramatiq.Worker(broker, worker_threads=threads, queues=chosen, worker_timeout=POLL_MS)
    process.start()
    click.echo(f"worker started with {threads} threads", err=True)
    _until_signalled().wait()
    process.stop()


def _schedule(tasks: Tasks, stop: threading.Event, interval: float, batch: int) -> None:
    """Claim and enqueue due work every `interval` seconds, at once again while it keeps coming."""
    while not stop.is_set():
        started = time.monotonic()
        busy = tasks.tick(batch) >= batch
        if not busy:
            stop.wait(max(0.0, interval - (time.monotonic() - started)))


_interval = click.option(
    "--interval", default=1.0, show_default=True, help="Seconds between passes."
)
_batch = click.option(
    "--batch", default=500, show_default=True, help="Rows claimed per kind per pass."
)
_host = click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
_port = click.option("--port", default=8000, show_default=True, help="Port to listen on.")


@main.command()
@_interval
@_batch
@click.option(
    "--lease",
    default=300.0,
    show_default=True,
    help="Seconds before claimed work whose message was lost is enqueued again.",
)
@click.pass_context
def scheduler(ctx: click.Context, interval: float, batch: int, lease: float) -> None:
    """Claim due work from the database and enqueue it; several may run at once."""
    _refuse_unsafe()
    app = open_app(ctx, schema=False)
    if not app.settings.redis_url:
        click.echo("error: a scheduler needs NURTURE_REDIS_URL (or use `nurture run`)", err=True)
        sys.exit(EXIT_USAGE)
    tasks = Tasks(make_broker(app.settings.redis_url), app, timedelta(seconds=lease))
    click.echo("scheduler started", err=True)
    _schedule(tasks, _until_signalled(), interval, batch)


def _api(app: App, tasks: Tasks | None, *, allow_no_auth: bool = False) -> FastAPI:
    """The FastAPI application, or exit 2 when its configuration is incomplete."""
    try:
        return create_api(app, tasks, allow_no_auth=allow_no_auth)
    except NurtureError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)


@main.command()
@_host
@_port
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the HTTP API (needs NURTURE_API_KEYS and NURTURE_REDIS_URL)."""
    _refuse_unsafe()
    app = open_app(ctx, schema=False)
    if not app.settings.redis_url:
        click.echo("error: the API needs NURTURE_REDIS_URL (or use `nurture run`)", err=True)
        sys.exit(EXIT_USAGE)
    api = _api(app, Tasks(make_broker(app.settings.redis_url), app))
    uvicorn.run(api, host=host, port=port, log_level="info", proxy_headers=True)


@main.command()
@_host
@_port
@_interval
@click.option("--threads", default=4, show_default=True, help="Worker threads.")
@click.pass_context
def run(ctx: click.Context, host: str, port: int, interval: float, threads: int) -> None:
    """API, scheduler and worker in one process: the embedded default, or PostgreSQL/Redis."""
    if host not in LOOPBACK:
        _refuse_unsafe()
    app = open_app(ctx, schema=False)
    upgrade(app.engine)
    apply_at_start(app)
    tasks = Tasks(make_broker(app.settings.redis_url), app, jobs=run_job)
    api = _api(app, tasks, allow_no_auth=host in LOOPBACK)
    process = dramatiq.Worker(tasks.broker, worker_threads=threads, worker_timeout=POLL_MS)
    process.start()
    stop = _until_signalled()  # uvicorn re-raises SIGTERM after its shutdown: land here, not die
    loop = threading.Thread(target=_schedule, args=(tasks, stop, interval, 500), daemon=True)
    loop.start()
    where = app.engine.url.render_as_string(hide_password=True)
    click.echo(f"nurture running on http://{host}:{port} with {where}", err=True)
    try:
        uvicorn.run(api, host=host, port=port, log_level="warning")
    finally:
        stop.set()
        loop.join()
        process.stop()


main.add_command(init_command)
register(main)
register_imports(main)
register_merging(main)
register_playback(main)
register_rollout(main)
register_backtest(main)
register_experiments(main)
register_privacy(main)


def cli() -> None:
    """The `nurture` executable: the project's .env joins this process's environment (variables
    already set win), then the command runs. Calling `main` in-process leaves os.environ alone."""
    load_dotenv(Path.cwd() / ENV_FILE, override=False)
    main(prog_name="nurture")


if __name__ == "__main__":
    cli()
