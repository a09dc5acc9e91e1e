"""`nurture backtest`: what a sequence as it stands would have done for real leads over the
last days, beside what the live run did for them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from engine.cli.commands import EXIT_USAGE, fail, open_app
from engine.cli.output import console, emit_json, errors, table
from engine.errors import UnknownSequenceError
from engine.runner.backtest import BacktestReport, backtest
from engine.runner.simulation import sequences_named
from engine.workflow.durations import parse_duration
from engine.workflow.windows import DAYS

BUSIEST = 3  # hours named per step
DAY = timedelta(days=1)


@click.command("backtest")
@click.argument("sequence")
@click.option("--since", default="30d", show_default=True, help="The period: 30d, 2w, 72h.")
@click.option("--leads", "count", type=int, help="Replay a sample of this many leads.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the sample.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def backtest_command(
    ctx: click.Context, sequence: str, since: str, count: int | None, seed: int, as_json: bool
) -> None:
    """Replay real leads' recorded events of the period through SEQUENCE as it stands, in a
    scratch database with every guard and no message sent, beside what the live run did."""
    try:
        period = parse_duration(since)
    except (ValueError, OverflowError) as error:
        fail(f"--since: {error}", EXIT_USAGE)
    if count is not None and count < 1:
        fail("--leads: a sample needs at least 1 lead", EXIT_USAGE)
    app = open_app(ctx)
    try:
        sequences_named(app.rt.workflows, [sequence])
    except UnknownSequenceError as error:
        fail(str(error), EXIT_USAGE)
    start = app.rt.clock.now() - period
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("day {task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=errors, disable=as_json) as bar:
        task = bar.add_task(f"backtest {sequence}", total=period / DAY)
        report = backtest(
            app,
            sequence,
            period,
            count,
            lambda now: bar.update(task, completed=max((now - start) / DAY, 0)),
            seed,
        )
    if as_json:
        emit_json(report.as_dict())
        return
    _print(report)


def _print(report: BacktestReport) -> None:
    """The report as tables: milestones, steps, reasons, when sends go, MQL and SQL."""
    bt, live = report.backtest, report.live
    sample = (
        f"a sample of {report.leads} (seed {report.seed}) of"
        if report.leads < report.eligible
        else "all"
    )
    console.print(
        f"[bold]{report.sequence}[/bold] (version {report.version[:12]}) from "
        f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC: {sample} "
        f"{report.eligible} leads with events in the period, {report.events} events replayed "
        f"({report.history} before the period set where each lead stood at its start)",
        soft_wrap=True,  # one line, wrapped by the terminal: the same text at any width
    )
    table(
        "Milestones entered",
        ["milestone", "backtest", "live"],
        [
            (mine["id"], mine["entered"], theirs["entered"])
            for mine, theirs in zip(bt["milestones"], live["milestones"], strict=True)
        ],
    )
    steps = _paired(bt["steps"], live["steps"])
    table(
        "Steps: deliveries planned in the period, backtest / live",
        ["step", "sent (would send / did)", "skipped", "deferred"],
        [
            (place, *(f"{mine[kind]} / {theirs[kind]}" for kind in ("sent", "skipped", "deferred")))
            for place, mine, theirs in steps
        ],
    )
    reasons = [
        (
            place,
            reason,
            mine["skipped_because"].get(reason, 0),
            theirs["skipped_because"].get(reason, 0),
        )
        for place, mine, theirs in steps
        for reason in dict.fromkeys([*mine["skipped_because"], *theirs["skipped_because"]])
    ]
    if reasons:
        table("Skipped, and why", ["step", "reason", "backtest", "live"], reasons)
    when = [
        (place, run, *(figures["weekdays"].get(day, "") for day in DAYS), _busiest(figures))
        for place, mine, theirs in steps
        for run, figures in (("backtest", mine), ("live", theirs))
        if figures["sent"]
    ]
    if when:
        table(
            "Sends by weekday, in each lead's time zone",
            ["step", "run", *DAYS, "busiest hours"],
            when,
        )
    table(
        "MQL and SQL reached in the period",
        ["", "backtest", "live"],
        [
            ("MQL", bt["mql"], live["mql"]),
            (
                "median days to MQL (from the period's start)",
                bt["median_days_to_mql"],
                live["median_days_to_mql"],
            ),
            ("SQL", bt["sql"], live["sql"]),
            (
                "median days to SQL (from the period's start)",
                bt["median_days_to_sql"],
                live["median_days_to_sql"],
            ),
        ],
    )
    for note in report.notes:
        console.print(f"[dim]- {note}[/dim]")


def _paired(
    mine: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The steps of both runs by place, in the backtest's order, then the live run's others
    (steps of earlier versions); a step one run did not reach has zeros there."""
    empty = {
        "sent": 0,
        "skipped": 0,
        "deferred": 0,
        "skipped_because": {},
        "weekdays": {},
        "hours": {},
    }
    by_place = {step["step"]: step for step in theirs}
    ours = {step["step"]: step for step in mine}
    places = [*ours, *(place for place in by_place if place not in ours)]
    return [(place, ours.get(place, empty), by_place.get(place, empty)) for place in places]


def _busiest(figures: dict[str, Any]) -> str:
    """The hours most sends of a step went at, as `10:00 (40)`, busiest first."""
    hours = sorted(figures["hours"].items(), key=lambda item: (-item[1], int(item[0])))
    return ", ".join(f"{int(hour):02d}:00 ({n})" for hour, n in hours[:BUSIEST])


def register(group: click.Group) -> None:
    """Attach `backtest` to the `nurture` group."""
    group.add_command(backtest_command)
