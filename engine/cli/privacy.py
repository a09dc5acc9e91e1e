"""`nurture privacy`: answer access and erasure requests, and erase leads idle past retention."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine.app import App
from engine.cli.commands import fail, open_app
from engine.cli.output import emit_json, table
from engine.errors import NurtureError
from engine.funnel.erasure import RETENTION_BATCH, erase_idle, erase_lead, idle_leads, months_before
from engine.models import ErasureReason, Lead
from engine.read.export import export_lead
from engine.read.views import find_by_key

SHOWN = 50  # idle leads listed by a dry run


@click.group("privacy")
def privacy_group() -> None:
    """Access and erasure requests, and retention of idle leads."""


def _find(app: App, key: str) -> Lead:
    """The lead a key names, detached for reading; exits 1 naming the key when nobody has it."""
    try:
        with app.sessions() as session:
            return find_by_key(session, key)
    except NurtureError as error:
        fail(str(error))


@privacy_group.command("export")
@click.argument("key")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the JSON to this file instead of stdout.",
)
@click.pass_context
def export_command(ctx: click.Context, key: str, output: Path | None) -> None:
    """Everything held about a lead (id, email, +phone or external id), as JSON."""
    app = open_app(ctx)
    try:
        with app.sessions() as session:
            document = export_lead(session, find_by_key(session, key), app.rt.clock.now())
    except NurtureError as error:
        fail(str(error))
    if output is None:
        emit_json(document)
        return
    output.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    click.echo(f"wrote {output}", err=True)


@privacy_group.command("erase")
@click.argument("key")
@click.option("--yes", is_flag=True, help="Erase without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print what was scrubbed as JSON.")
@click.pass_context
def erase_command(ctx: click.Context, key: str, yes: bool, as_json: bool) -> None:
    """Remove a lead's personal data everywhere; an anonymised tombstone keeps the counts and
    its addresses stay suppressed. Cannot be undone."""
    app = open_app(ctx)
    lead = _find(app, key)
    if lead.erased_at is not None:
        fail(f"lead {lead.id} was already erased ({lead.erased_at.isoformat()})")
    if not yes:
        click.confirm(
            f"Erase the personal data of {lead.key} (lead {lead.id})? This cannot be undone",
            abort=True,
        )
    try:
        with app.sessions.begin() as session:
            done = erase_lead(session, app.rt, lead.id, ErasureReason.REQUEST, "cli")
    except NurtureError as error:
        fail(str(error))
    if as_json:
        emit_json(done.as_dict())
        return
    click.echo(f"erased lead {done.lead_id} (erasure {done.erasure_id}); it stays as a tombstone")
    _show_summary(done.summary)


def _show_summary(summary: dict[str, dict[str, int]]) -> None:
    """Rows touched per table, by what happened to them."""
    table(
        "",
        ["what", "table", "rows"],
        [(what, name, n) for what, counts in summary.items() for name, n in counts.items() if n],
        wrap=False,
    )


@privacy_group.command("retention")
@click.option("--dry-run", is_flag=True, help="List the idle leads, erase nothing.")
@click.option("--yes", is_flag=True, help="Erase without asking.")
@click.option(
    "--months",
    type=click.IntRange(min=1),
    help="Idle for this many months (default: NURTURE_RETENTION_MONTHS).",
)
@click.pass_context
def retention_command(ctx: click.Context, dry_run: bool, yes: bool, months: int | None) -> None:
    """Erase now the leads idle (no activity) past the retention period, as the scheduler
    does hourly when NURTURE_RETENTION_MONTHS is set."""
    app = open_app(ctx)
    months = months or app.settings.retention_months
    if months is None:
        fail("no retention period: set NURTURE_RETENTION_MONTHS or pass --months", 2)
    before = months_before(app.rt.clock.now(), months)
    with app.sessions() as session:
        ids = idle_leads(session, before, SHOWN + 1)
        leads = [session.get_one(Lead, lead_id) for lead_id in ids[:SHOWN]]
        rows = [(lead.id, lead.key, (lead.last_activity_at or lead.created_at)) for lead in leads]
    idle = f"idle since before {before:%Y-%m-%d}"
    if not ids:
        click.echo(f"no lead {idle}")
        return
    more = " (the first shown)" if len(ids) > SHOWN else ""
    table(f"Leads {idle}{more}", ["id", "lead", "last active"], rows, wrap=False)
    if dry_run:
        return
    if not yes:
        click.confirm(f"Erase the personal data of every lead {idle}?", abort=True)
    erased = 0
    while True:
        with app.sessions.begin() as session:
            batch = erase_idle(session, app.rt, months, "cli")
        erased += len(batch)
        if len(batch) < RETENTION_BATCH:
            break
    click.echo(f"erased {erased} idle lead(s)")


def register(group: click.Group) -> None:
    """Attach `privacy` to the `nurture` group."""
    group.add_command(privacy_group)
