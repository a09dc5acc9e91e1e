"""`nurture plan`, `apply` and `rescore`: move leads in flight to the sequences on disk, and
the ledger of the past to the scoring rules on disk."""

from __future__ import annotations

import math
import sys

import click
from rich.progress import Progress

from engine.app import App
from engine.cli.commands import EXIT_FOUND, open_app
from engine.cli.output import emit_json, errors
from engine.funnel.lifecycle import StageMove
from engine.funnel.rescore import BIN, Rescored, RescorePlan, plan_rescore, rescore
from engine.funnel.rollout import Plan, StrandedError, apply, make_plan

BAR = 24  # characters of the longest histogram bar


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


def show_rescore(plan: RescorePlan) -> None:
    """The rescore plan in words: stage changes, the score histogram, the largest movers."""
    click.echo(
        f"scoring {plan.versions}: {plan.leads} lead(s) replayed, {plan.changed} would change score"
    )
    moves = plan.moves
    click.echo(
        f"  new SQLs: {moves[StageMove.SQL]} (handed to sales only by `rescore --handoff`)"
        f" · new MQLs: {moves[StageMove.MQL]}"
        f" · MQLs that would drop back: {moves[StageMove.SLIPPED]}"
    )
    rows = plan.histogram()
    if plan.changed and rows:
        widest = max(max(before, after) for _, before, after in rows)
        click.echo(f"  {'score':>9}  {'before':<{BAR + 7}}  after")
        for start, before, after in rows:
            click.echo(
                f"  {f'{start}..{start + BIN - 1}':>9}  {_bar(before, widest):<{BAR}} {before:>6}"
                f"  {_bar(after, widest):<{BAR}} {after:>6}"
            )
    if plan.movers:
        click.echo("  largest movers:")
    for mover in plan.movers:
        rules = ", ".join(f"{rule} {points:+g}" for rule, points in mover.rules.items())
        click.echo(
            f"    {mover.key}: {mover.before:g} -> {mover.after:g} ({mover.change:+g}) {rules}"
        )


def _bar(count: int, widest: int) -> str:
    return "#" * math.ceil(BAR * count / widest) if widest else ""


def _plans(app: App, with_rescore: bool) -> tuple[Plan, RescorePlan | None]:
    with app.sessions.begin() as session:
        plan = make_plan(session, app.rt)
    if not with_rescore:
        return plan, None
    with app.sessions() as session:
        return plan, plan_rescore(session, app.rt)


@click.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--rescore/--no-rescore",
    default=True,
    show_default=True,
    help="Also replay every lead under scoring.yml and show what `rescore` would change.",
)
@click.pass_context
def plan_command(ctx: click.Context, as_json: bool, rescore: bool) -> None:
    """Show what `apply` would do to leads in flight and `rescore` to scores; exit 1 when some
    leads would be stranded."""
    plan, rescoring = _plans(open_app(ctx), rescore)
    if as_json:
        data = plan.as_dict()
        if rescoring is not None:
            data["rescore"] = rescoring.as_dict()
        emit_json(data)
    else:
        show_plan(plan)
        if rescoring is not None:
            show_rescore(rescoring)
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
        ctx.invoke(plan_command, as_json=as_json, rescore=False)
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


@click.command("rescore")
@click.option(
    "--handoff",
    is_flag=True,
    help="Hand leads that now qualify for SQL to sales (otherwise they are only listed).",
)
@click.option("--batch", default=500, show_default=True, help="Leads per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the result as JSON.")
@click.pass_context
def rescore_command(ctx: click.Context, handoff: bool, batch: int, as_json: bool) -> None:
    """Bring every lead's score in line with scoring.yml on disk, replaying its past; resumable,
    and a second run changes nothing."""
    app = open_app(ctx)
    with app.sessions() as session:
        plan = plan_rescore(session, app.rt)
    if not as_json:
        show_rescore(plan)
    with Progress(console=errors, disable=as_json, transient=True) as progress:
        task = progress.add_task("rescoring", total=plan.leads)
        done = rescore(
            app.sessions,
            app.rt,
            handoff=handoff,
            batch=batch,
            progress=lambda leads: progress.update(task, completed=leads),
        )
    if as_json:
        emit_json({"plan": plan.as_dict(), "rescored": done.as_dict()})
        return
    show_rescored(done)


def show_rescored(done: Rescored) -> None:
    """What the rescore did, with the leads that qualify for SQL but were not handed off."""
    click.echo(
        f"rescored: {done.changed} of {done.leads} lead(s) changed score;"
        f" {done.moves[StageMove.MQL]} new MQL(s), {done.moves[StageMove.SLIPPED]} dropped back,"
        f" {len(done.handed_off)} handed to sales"
    )
    if done.held:
        click.echo(
            f"{len(done.held)} lead(s) qualify for SQL and were not handed off"
            " (run `nurture rescore --handoff` to hand them to sales):"
        )
        for key in done.held:
            click.echo(f"  {key}")


def register(group: click.Group) -> None:
    """Attach plan, apply and rescore to the `nurture` group."""
    group.add_command(plan_command)
    group.add_command(apply_command)
    group.add_command(rescore_command)
