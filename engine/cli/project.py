"""`nurture init`: a ready project (examples, settings, fresh secrets) and its database."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from engine.db import make_engine
from engine.errors import ConfigurationError
from engine.migrations import upgrade
from engine.settings import DEFAULT_DATABASE_URL, Settings
from engine.starter import ENV_FILE, scaffold, write_env

EXIT_FOUND = 1


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
@click.option("--force", is_flag=True, help="Overwrite existing example files (never .env).")
@click.pass_context
def init_command(ctx: click.Context, folder: Path | None, force: bool) -> None:
    """Create a project (workflows, templates, .env with fresh secrets) and its database.

    A folder that already has its workflows keeps them, and an existing .env is never
    replaced: run again, init only creates or upgrades the database, as a deploy needs.
    """
    settings: Settings = ctx.obj if folder is None else _in(folder, ctx.obj)
    root = folder or Path.cwd()
    if force or not settings.workflows_dir.exists():
        try:
            written = scaffold(settings.workflows_dir, settings.templates_dir, root, force=force)
        except ConfigurationError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_FOUND)
        click.echo(f"examples ready in {root}: {len(written)} file(s) written")
    else:
        click.echo(f"kept {settings.workflows_dir}: it holds this project's workflows")
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
