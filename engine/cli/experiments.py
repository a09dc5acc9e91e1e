"""`nurture experiments`: each step's variants and how they do, a sequence's holdout lift, and
picking a step's winner by hand."""

from __future__ import annotations

from datetime import datetime

import click

from engine.cli.commands import fail, open_app
from engine.cli.output import emit_json, table
from engine.errors import NurtureError
from engine.read.experiments import (
    Experiment,
    VariantResult,
    experiments_overview,
    sequence_experiments,
)
from engine.read.holdouts import HoldoutReport, percent
from engine.runner.winners import pick_variant
from engine.workflow.spec import Metric


@click.group("experiments")
def experiments_group() -> None:
    """A/B tests of steps with variants, and holdouts of whole sequences."""


@experiments_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the experiments as JSON.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every step with variants: its metric, status and each variant's rate; every holdout."""
    app = open_app(ctx)
    with app.sessions() as session:
        found = experiments_overview(session, app.rt, app.rt.clock.now())
    if as_json:
        emit_json(found.as_dict())
        return
    if not found.experiments and not found.holdouts:
        click.echo("no experiments: no step has variants and no sequence a holdout")
        return
    table(
        f"{len(found.experiments)} experiment(s)",
        ["sequence", "step", "metric", "status", "variant", "sent", "matured", "rate"],
        [
            (e.sequence, f"{e.milestone}/{e.step}", _measure(e), _status(e), *_variant_cells(v))
            for e in found.experiments
            for v in e.variants
        ],
        wrap=False,
    )
    for holdout in found.holdouts:
        click.echo(
            f"{holdout.sequence}: {holdout.share:.1%} of new leads held out"
            f" (`nurture experiments report {holdout.sequence}` shows the lift)"
        )


@experiments_group.command("report")
@click.argument("sequence")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def report_command(ctx: click.Context, sequence: str, as_json: bool) -> None:
    """One sequence: each step's variants with the decision and its figures, and what the
    sequence adds over its held-out leads."""
    app = open_app(ctx)
    try:
        with app.sessions() as session:
            found = sequence_experiments(session, app.rt, sequence, app.rt.clock.now())
    except NurtureError as error:
        fail(str(error))
    if as_json:
        emit_json(found.as_dict())
        return
    click.echo(f"{found.sequence}: {len(found.experiments)} step(s) with variants")
    for experiment in found.experiments:
        _show_experiment(experiment)
    if found.holdout is not None:
        click.echo(
            f"\nHoldout: {found.holdout_share:.1%} of new leads are enrolled but sent nothing"
        )
        _show_holdout(found.holdout)
    else:
        click.echo(f"{sequence}: no holdout (add `holdout: 5%` to measure what it adds)")


@experiments_group.command("pick")
@click.argument("sequence")
@click.argument("step")
@click.argument("variant")
@click.pass_context
def pick_command(ctx: click.Context, sequence: str, step: str, variant: str) -> None:
    """Give VARIANT of STEP (`step` or `milestone/step`) to every later lead of SEQUENCE,
    overriding its winner rule."""
    app = open_app(ctx)
    try:
        with app.sessions.begin() as session:
            row = pick_variant(session, app.rt, sequence, step, variant, app.rt.clock.now())
            place, reason = f"{row.sequence} {row.milestone}/{row.step}", row.reason
    except NurtureError as error:
        fail(str(error))
    click.echo(f"{place}: every later lead gets {variant} ({reason})")


def _show_experiment(experiment: Experiment) -> None:
    """A step: what success means, its variants' figures, and the decision with what it saw."""
    click.echo(
        f"\n{experiment.milestone}/{experiment.step} ({experiment.channel}):"
        f" {_measure(experiment)}, {_rule(experiment)} · {_status(experiment)}"
    )
    table(
        "",
        ["variant", "template", "subject", "weight", "sent", "matured", "successes", "rate"],
        [
            (
                v.id,
                v.template,
                v.subject,
                f"{v.weight:g}",
                v.sends,
                v.matured,
                v.successes,
                percent(v.rate),
            )
            for v in experiment.variants
        ],
        wrap=False,
    )
    pick = experiment.pick
    if pick is None:
        return
    when = datetime.fromisoformat(pick.picked_at).strftime("%Y-%m-%d %H:%M UTC")
    click.echo(f"  decision: {pick.variant} ({pick.kind}, {when}): {pick.reason}")
    figures = pick.figures.get("variants", {})
    if figures:
        click.echo(f"  at look {pick.figures.get('look')}, the test saw:")
    for name, seen in figures.items():
        against = "" if seen.get("p_value") is None else f", p = {seen['p_value']:.2g} against it"
        click.echo(
            f"    {name}: {seen['successes']} of {seen['sends']} ({percent(seen['rate'])}){against}"
        )


def _show_holdout(report: HoldoutReport) -> None:
    """The sent and held-out leads side by side, and the lift in a marketer's words."""
    sent, held = report.sent, report.held_out
    click.echo(f"  leads: {sent.leads} sent, {held.leads} held out")
    for stage in (Metric.MQL, Metric.SQL):
        click.echo(f"  {stage.upper()}: {report.sentence(stage)}")
    click.echo(
        f"  median days from enrolment to SQL: {_days(sent.median_days_to_sql)} sent,"
        f" {_days(held.median_days_to_sql)} held out"
    )


def _measure(experiment: Experiment) -> str:
    return f"{experiment.metric} within {experiment.within}"


def _rule(experiment: Experiment) -> str:
    if experiment.after is None or experiment.confidence is None:
        return "no winner rule: pick one by hand"
    return f"winner after {experiment.after} sends each at {experiment.confidence:.0%} confidence"


def _status(experiment: Experiment) -> str:
    pick = experiment.pick
    return str(experiment.status) if pick is None else f"{experiment.status}: {pick.variant}"


def _variant_cells(v: VariantResult) -> tuple[str, int, int, str]:
    return v.id, v.sends, v.matured, percent(v.rate)


def _days(days: float | None) -> str:
    return "-" if days is None else f"{days:g}"


def register(group: click.Group) -> None:
    """Attach `experiments` to the `nurture` group."""
    group.add_command(experiments_group)
