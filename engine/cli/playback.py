"""CLI commands that play sequences without touching production: preview, simulate, demo."""

from __future__ import annotations

import random
import shlex
import shutil
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.app import App
from engine.cli.commands import EXIT_FOUND, EXIT_USAGE, fail, open_app, print_funnel
from engine.cli.output import console, emit_json, errors, table
from engine.contacts import email_key
from engine.delivery.context import preview_context, recent_activity
from engine.errors import NurtureError, UnknownSequenceError, WorkflowError
from engine.models import Enrolment, Handoff, Lead
from engine.read.experiments import sequence_experiments
from engine.read.sources import website_figures
from engine.read.stats import funnel
from engine.read.timeline import timeline
from engine.read.views import find_by_key
from engine.runner.demo import crowd
from engine.runner.simulation import ScriptedEvent, Simulation
from engine.settings import Settings
from engine.starter import examples
from engine.workflow.spec import Metric, Send, Sequence, walk

DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning
DEMO_DATABASE = "nurture.db"  # under --out: what `nurture run` opens to show the demo
DEMO_URL = "http://127.0.0.1:8000/"


def _simulation(
    settings: Settings,
    start: datetime,
    workdir: Path | None = None,
    database: str = "simulation.db",
) -> Simulation:
    try:
        return Simulation(settings, start, workdir, database=database)
    except WorkflowError as error:
        click.echo(str(error), err=True)
        sys.exit(EXIT_FOUND)
    except NurtureError as error:
        fail(str(error), EXIT_USAGE)
        raise


def _only(sim: Simulation, name: str) -> None:
    """Run one sequence alone, so a marketer sees exactly what it does."""
    try:
        sim.only([name])
    except UnknownSequenceError as error:
        sim.close()
        fail(str(error), EXIT_USAGE)


def read_script(path: Path, start: datetime) -> tuple[dict[str, Any], list[ScriptedEvent]]:
    """Load a behaviour script; problems name the file and the entry."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        fail(f"{path}: not valid YAML: {error}", EXIT_USAGE)
    if not isinstance(data, dict) or not isinstance(data.get("lead"), dict):
        fail(f"{path}: lead: expected a mapping with the lead's email and attributes", EXIT_USAGE)
    lead = data["lead"]
    events = []
    for index, entry in enumerate(data.get("events") or []):
        where = f"{path}: events[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("event"), str):
            fail(f"{where}.event: expected an event type", EXIT_USAGE)
        day = entry.get("day", 0)
        if not isinstance(day, int | float) or day < 0:
            fail(f"{where}.day: expected a number of days from the start, 0 or more", EXIT_USAGE)
        hours, _, minutes = str(entry.get("time", "10:00")).partition(":")
        if not (hours.isdigit() and minutes.isdigit()):
            fail(f"{where}.time: expected HH:MM", EXIT_USAGE)
        at = (
            start
            + timedelta(days=day)
            + timedelta(hours=int(hours) - start.hour, minutes=int(minutes) - start.minute)
        )
        events.append(
            ScriptedEvent(
                at, lead, entry["event"], dict(entry.get("properties") or {}), entry.get("of")
            )
        )
    return lead, events


@click.command("simulate")
@click.argument("sequence")
@click.option(
    "--script",
    "script",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML: the lead and its events by day.",
)
@click.option("--days", default=30, show_default=True, help="Simulated days to run.")
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON.")
@click.pass_context
def simulate_command(
    ctx: click.Context, sequence: str, script: Path, days: int, as_json: bool
) -> None:
    """Play a scripted lead through a sequence on simulated time and print its timeline."""
    lead, events = read_script(script, DEFAULT_START)
    sim = _simulation(ctx.obj, DEFAULT_START)
    try:
        _only(sim, sequence)
        sim.run(events, DEFAULT_START + timedelta(days=days))
        with sim.app.sessions() as s:
            row = s.scalars(
                select(Lead).where(Lead.email_key == email_key(str(lead.get("email", ""))))
            ).first()
            entries = timeline(s, row.id) if row else []
    finally:
        sim.close()
    if as_json:
        emit_json([e.as_dict() for e in entries])
        return
    table(
        f"{sequence}: {lead.get('email')} over {days} simulated days",
        ["when (UTC)", "what", ""],
        [(e.at.strftime("%a %Y-%m-%d %H:%M"), e.kind, e.text) for e in entries],
    )
    console.print(f"outbox: {sim.workdir / 'outbox'}")


@click.command("preview")
@click.argument("sequence")
@click.option("--lead", "lead_key", help="Render for this lead (email) instead of a sample lead.")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("preview"),
    show_default=True,
    help="Where HTML bodies are written.",
)
@click.pass_context
def preview_command(ctx: click.Context, sequence: str, lead_key: str | None, out: Path) -> None:
    """Render every step of a sequence: subjects, text, SMS segments, HTML files to open."""
    app = open_app(ctx, schema=lead_key is not None)
    spec = app.rt.workflows.sequences.get(sequence)
    names = ", ".join(sorted(app.rt.workflows.sequences))
    if spec is None:
        fail(
            f"unknown sequence {sequence!r} (sequences: {names})",
            EXIT_USAGE,
        )
    context = _preview_context(app, spec, lead_key)

    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ...]] = []
    for milestone in spec.milestones:
        for step in (s for s in walk(milestone.steps) if isinstance(s, Send)):
            ctx_m = {**context, "milestone": {"id": milestone.id}}
            prefix = f"{spec.name}-{milestone.id}"
            for variant in step.variants or (None,):  # every variant a lead may get
                template = variant.template if variant else step.template
                name = f"{template} [{variant.id}]" if variant else template
                subject = variant.subject if variant else None
                # a variant with its own subject gets its own file: the same template, renamed
                named = f"{prefix}-{variant.id}" if variant and subject else prefix
                try:
                    message = _preview_one(app, out, named, step.channel, template, subject, ctx_m)
                    rows.append((milestone.id, f"{step.channel} {name}", *message))
                except NurtureError as error:
                    rows.append((milestone.id, name, "ERROR", str(error), ""))
    table(
        f"{spec.name}: {len(rows)} message(s)",
        ["milestone", "step", "subject", "text", "html"],
        rows,
    )
    if any(r[2] == "ERROR" for r in rows):
        sys.exit(EXIT_FOUND)


def _preview_one(
    app: App,
    out: Path,
    prefix: str,
    channel: str,
    template: str,
    subject: str | None,
    context: dict[str, Any],
) -> tuple[str, str, str]:
    """Subject (or SMS segments), the start of the text and the HTML file of one message."""
    if channel == "email":
        email = app.renderer.render_email(template, context, subject)
        path = out / f"{prefix}-{template}.html"
        path.write_text(email.html)
        return email.subject, email.text[:160].replace("\n", " "), str(path)
    sms = app.renderer.render_sms(template, context, first_message=True)
    return f"{sms.segments} {sms.encoding} segment(s)", sms.body, ""


def _preview_context(app: App, spec: Sequence, key: str | None) -> dict[str, Any]:
    """The sample lead, or the lead `key` names, as the sequence's steps would see it."""
    now = app.rt.clock.now()
    if not key:
        return preview_context(app.settings, now, spec)
    try:
        with app.sessions() as s:
            lead = find_by_key(s, key)
            return preview_context(app.settings, now, spec, lead, recent_activity(s, lead))
    except NurtureError as error:
        fail(str(error))
        raise


def _demo_project(settings: Settings, *, quiet: bool) -> Settings:
    """This folder's workflows and templates when it has them, else the bundled examples."""
    if settings.workflows_dir.exists():
        return settings
    bundled = examples()
    if not quiet:
        errors.print(
            f"no {settings.workflows_dir} here: playing the bundled examples "
            "(`nurture init` copies them into a project of your own)"
        )
    return replace(settings, workflows_dir=bundled.workflows, templates_dir=bundled.templates)


@click.command("demo")
@click.option("--leads", "count", default=1000, show_default=True, help="Synthetic leads.")
@click.option("--days", default=60, show_default=True, help="Simulated days.")
@click.option("--seed", default=7, show_default=True, help="Random seed: the same run each time.")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where the database and outbox go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def demo_command(
    ctx: click.Context, count: int, days: int, seed: int, out: Path, as_json: bool
) -> None:
    """Two months of nurture for synthetic leads through the real pipeline, in under a minute."""
    rng = random.Random(seed)
    personas = crowd(rng, count, DEFAULT_START)
    if (out / "outbox").exists():
        shutil.rmtree(out / "outbox")
    settings = replace(
        _demo_project(ctx.obj, quiet=as_json), database_url=f"sqlite:///{out / DEMO_DATABASE}"
    )
    sim = _simulation(settings, DEFAULT_START, out, DEMO_DATABASE)
    until = DEFAULT_START + timedelta(days=days)
    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("day {task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=errors, disable=as_json) as progress:
            task = progress.add_task(f"{count} leads, {days} days", total=days)
            sim.run(
                [e for p in personas for e in p.events],
                until,
                progress=lambda now: progress.update(
                    task, completed=(now - DEFAULT_START).total_seconds() / 86400
                ),
                resolution=timedelta(hours=1),
            )
        with sim.app.sessions() as s:
            data = funnel(s, sim.app.rt)
            data["handoffs"] = int(s.scalar(select(func.count()).select_from(Handoff)) or 0)
            data["re_engaged"] = int(
                s.scalar(
                    select(func.count(func.distinct(Enrolment.lead_id))).where(
                        Enrolment.sequence == "re-engagement"
                    )
                )
                or 0
            )
            data["experiment"] = _one_experiment(s, sim.app)
            data["website"] = website_figures(s)
    finally:
        sim.close()
    outbox = out / "outbox"
    data["outbox"] = {
        "email": len(list((outbox / "email").glob("*.eml"))) if (outbox / "email").exists() else 0,
        "sms": len(list((outbox / "sms").glob("*.txt"))) if (outbox / "sms").exists() else 0,
        "path": str(outbox),
    }
    data["seconds"] = round(time.monotonic() - started, 1)
    data["dashboard"] = {"command": _dashboard_command(ctx.obj, settings, out), "url": DEMO_URL}
    if as_json:
        emit_json(data)
        return
    print_funnel(data)
    console.print(
        f"MQLs: {data['stages']['mql_ever']} · handoffs to sales: {data['handoffs']} · "
        f"re-engaged leads: {data['re_engaged']}"
    )
    site = data["website"]
    console.print(
        f"Website: {site['page_views']:,} page views from {site['visitors']:,} visitors; "
        f"{site['identified']:,} identified, and their {site['joined']:,} earlier page views "
        f"joined their leads; {site['anonymous']:,} still anonymous"
    )
    if data["experiment"] is not None:
        console.print(data["experiment"]["summary"])
    console.print(
        f"{data['outbox']['email']} emails (.eml) and {data['outbox']['sms']} SMS "
        f"written to {outbox} · {data['seconds']} s"
    )
    console.print(
        f"See it in the dashboard: [bold]{data['dashboard']['command']}[/bold], "
        f"then open {data['dashboard']['url']}"
    )


def _one_experiment(session: Session, app: App) -> dict[str, Any] | None:
    """The demo's headline experiment: the first holdout's lift on MQL, else the first step's
    variants; its report as JSON plus a one-line summary."""
    now = app.rt.clock.now()
    held = [s for s in app.rt.sequences if s.holdout > 0]
    tested = [s for s in app.rt.sequences if s.experiments()]
    if not held and not tested:
        return None
    name = (held or tested)[0].name
    found = sequence_experiments(session, app.rt, name, now)
    if found.holdout is not None:
        line = found.holdout.sentence(Metric.MQL)
        summary = f"Holdout of {name} ({found.holdout_share:.0%} sent nothing), MQL: {line}"
    else:
        step = found.experiments[0]
        rates = ", ".join(f"{v.id} {v.successes}/{v.matured}" for v in step.variants)
        where = f"{step.milestone}/{step.step}"
        summary = f"Experiment {name} {where} ({step.metric}): {rates}, {step.status}"
    report = found.as_dict()
    return report | {"summary": summary + f" · nurture experiments report {name}"}


def _dashboard_command(given: Settings, played: Settings, out: Path) -> str:
    """The command that serves the demo's results in the dashboard, with the bundled examples
    named when the demo played them (this folder has no project of its own)."""
    words = ["nurture", "--database-url", f"sqlite:///{out / DEMO_DATABASE}"]
    if played.workflows_dir != given.workflows_dir:
        words += ["--workflows", str(played.workflows_dir)]
        words += ["--templates", str(played.templates_dir)]
    return shlex.join([*words, "run"])


def register(group: click.Group) -> None:
    """Attach these commands to the `nurture` group."""
    for command in (simulate_command, preview_command, demo_command):
        group.add_command(command)
