"""`nurture plan` and `nurture apply`: move leads in flight to the sequences on disk."""

from __future__ import annotations

import sys

import click

from engine.app import App
from engine.cli.commands import EXIT_FOUND, open_app
from engine.cli.output import emit_json
from engine.funnel.rollout import Plan, StrandedError, apply, make_plan


def show_plan(plan: Plan) -> None:
    """The plan in words: per sequence what changed, and where each group of leads goes."""
    if not plan.sequences and not plan.notes:
        click.echo("nothing to apply: every lead in flight runs the sequences on disk")
    for entry in plan.sequences:
        target = entry.to_version or "removed"
        click.echo(f"sequence {entry.name}: {entry.from_version} -> {target}")
        for change in entry.changes:
            click.echo(f"  ~ {change}")
        for group in entry.groups:
            arrow = group.to if group.to is not None else "STRANDED"
            note = f"  ({group.note})" if group.note else ""
            click.echo(f"  {group.leads:>6} lead(s) at {group.place} -> {arrow}{note}")
    for note in plan.notes:
        click.echo(f"note: {note}")
    if plan.sequences:
        stranded = sum(n for _, _, n in plan.stranded)
        click.echo(f"{plan.moves} lead(s) to move, {stranded} stranded")


def _plan(app: App) -> Plan:
    with app.sessions.begin() as session:
        return make_plan(session, app.rt)


@click.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan_command(ctx: click.Context, as_json: bool) -> None:
    """Show what `apply` would do to leads in flight; exit 1 when some would be stranded."""
    plan = _plan(open_app(ctx))
    if as_json:
        emit_json(plan.as_dict())
    else:
        show_plan(plan)
    if plan.stranded:
        for name, place, leads in plan.stranded:
            click.echo(f"error: {name}: {leads} lead(s) stranded at {place}", err=True)
        sys.exit(EXIT_FOUND)


@click.command("apply")
@click.option("--dry-run", is_flag=True, help="Only show the plan (the same as `nurture plan`).")
@click.option(
    "--exit-stranded",
    is_flag=True,
    help="Let leads whose milestone is gone exit (reason: sequence changed).",
)
@click.option("--batch", default=500, show_default=True, help="Enrolments per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the result as JSON.")
@click.pass_context
def apply_command(
    ctx: click.Context, dry_run: bool, exit_stranded: bool, batch: int, as_json: bool
) -> None:
    """Move leads in flight to the sequences on disk, exactly as `plan` says; resumable."""
    app = open_app(ctx)
    if dry_run:
        ctx.invoke(plan_command, as_json=as_json)
        return
    try:
        done = apply(app.sessions, app.rt, exit_stranded=exit_stranded, batch=batch)
    except StrandedError as error:
        if as_json:
            emit_json({"plan": error.plan.as_dict(), "error": str(error)})
        else:
            show_plan(error.plan)
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_FOUND)
    if as_json:
        emit_json({"plan": done.plan.as_dict(), "moved": done.moved, "exited": done.exited})
    else:
        show_plan(done.plan)
        click.echo(f"applied: {done.moved} lead(s) moved, {done.exited} exited")


def apply_at_start(app: App) -> None:
    """`nurture run`: apply what can be applied, print the plan; stranded leads stay pinned."""
    try:
        done = apply(app.sessions, app.rt)  # also stores this start's workflow versions
    except StrandedError as error:
        show_plan(error.plan)
        click.echo(
            "not applied: stranded leads keep running the version they are on;"
            " fix the YAML or run `nurture apply --exit-stranded`",
            err=True,
        )
        return
    if done.plan.sequences:
        show_plan(done.plan)
        click.echo(f"applied: {done.moved} lead(s) moved, {done.exited} exited")


def register(group: click.Group) -> None:
    """Attach plan and apply to the `nurture` group."""
    group.add_command(plan_command)
    group.add_command(apply_command)
