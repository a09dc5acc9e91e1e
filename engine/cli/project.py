"""`nurture init`: a ready project (examples, settings, fresh secrets) and its database."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click

from engine.cli.commands import EXIT_USAGE, fail
from engine.db import make_engine
from engine.errors import ConfigurationError
from engine.migrations import upgrade
from engine.settings import DEFAULT_DATABASE_URL, Settings
from engine.starter import ENV_FILE, scaffold, write_env


def _in(folder: Path, settings: Settings) -> Settings:
    """The settings of a project in `folder`: its workflows, templates and default database."""
    database = settings.database_url
    if database == DEFAULT_DATABASE_URL:
        database = f"sqlite:///{folder / 'nurture.db'}"
    return replace(
        settings,
        workflows_dir=folder / "workflows",
        templates_dir=folder / "templates",
        database_url=database,
    )


@click.command("init")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--force", is_flag=True, help="Write the examples over an existing workflows/templates folder."
)
@click.pass_context
def init_command(ctx: click.Context, folder: Path | None, force: bool) -> None:
    """Create a project (workflows, templates, .env with fresh secrets) and its database.

    Nothing that exists is overwritten (--force writes the examples over the workflows and
    templates): run again, init only creates or upgrades the database, as a deploy needs.
    """
    settings: Settings = ctx.obj if folder is None else _in(folder, ctx.obj)
    root = folder or Path.cwd()
    try:
        made = scaffold(settings.workflows_dir, settings.templates_dir, root, force=force)
    except ConfigurationError as error:
        fail(str(error), EXIT_USAGE)
    for path in made.kept:
        again = " (--force writes the examples over it)" if path.is_dir() else ""
        click.echo(f"kept {path}{again}")
    if made.written:
        click.echo(f"{len(made.written)} file(s) written in {root}")
    # A deploy's migration step has its secrets in the environment: no .env to write there.
    if not os.environ.get("NURTURE_SECRET_KEY"):
        env = write_env(root)
        if env is None:
            click.echo(f"kept {root / ENV_FILE}: its secrets sign links already sent")
        else:
            click.echo(f"wrote {env} with fresh secrets (never commit it)")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    click.echo(f"database ready: {engine.url.render_as_string(hide_password=True)}")
    if folder is not None:
        click.echo(f"next: cd {folder} && nurture demo")
