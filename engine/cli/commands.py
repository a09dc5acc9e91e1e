"""CLI commands about leads and results: track, lead show and why, stats, handoffs, recycle, won."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from sqlalchemy import inspect, select

from engine.app import App
from engine.cli.output import console, emit_json, quiet_engine_logs, table
from engine.errors import NurtureError, WorkflowError
from engine.funnel.service import recycle_lead, track, win_lead
from engine.models import Handoff, Lead
from engine.read.stats import funnel
from engine.read.timeline import timeline
from engine.read.views import find_by_key, lead_detail
from engine.settings import Settings

EXIT_FOUND, EXIT_USAGE = 1, 2


def open_app(ctx: click.Context, *, schema: bool = True) -> App:
    """The App for a command; exits 1 on invalid workflows, 2 on configuration problems."""
    settings: Settings = ctx.obj
    try:
        app = App.create(settings)
    except WorkflowError as error:
        click.echo(str(error), err=True)
        sys.exit(EXIT_FOUND)
    except NurtureError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    if schema and not inspect(app.engine).has_table("leads"):
        click.echo("error: the database has no nurture tables: run `nurture init` first", err=True)
        sys.exit(EXIT_USAGE)
    return app


def fail(message: str, code: int = EXIT_FOUND) -> NoReturn:
    """Print an error and exit with a code scripts can trust."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def parse_time(value: str | None) -> datetime | None:
    """ISO 8601 with a zone (naive means UTC) for --at."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--at {value!r} is not an ISO 8601 time, e.g. 2026-03-02T10:00:00Z", EXIT_USAGE)
        raise
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.command()
@click.argument("email")
@click.argument("event")
@click.option("--prop", "props", multiple=True, metavar="KEY=VALUE", help="Event property.")
@click.option("--at", "at", help="When it happened (ISO 8601); default now.")
@click.option("--id", "event_id", help="Idempotency id: the same id twice counts once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def track_command(
    ctx: click.Context,
    email: str,
    event: str,
    props: tuple[str, ...],
    at: str | None,
    event_id: str | None,
    as_json: bool,
) -> None:
    """Record one event for a lead (created when unknown)."""
    properties = {}
    for prop in props:
        key, sep, value = prop.partition("=")
        if not sep or not key:
            fail(f"--prop {prop!r}: use KEY=VALUE", EXIT_USAGE)
        properties[key] = value
    app = open_app(ctx)
    try:
        with quiet_engine_logs(), app.sessions.begin() as s:
            result = track(
                s,
                app.rt,
                {"email": email},
                event,
                properties,
                occurred_at=parse_time(at),
                event_id=event_id,
                source="cli",
            )
    except NurtureError as error:
        fail(str(error), EXIT_USAGE)
    if as_json:
        emit_json(result.summary())
        return
    if result.duplicate:
        console.print(f"duplicate: event id {event_id} was already recorded")
    elif result.failed is None:
        handoff = f", handed to sales (handoff {result.handoff_id})" if result.handoff_id else ""
        console.print(f"{event} recorded: {result.points:+g} points, stage {result.stage}{handoff}")
    if result.failed is not None:
        click.echo(
            f"warning: {event} recorded as event {result.event_id}, but processing failed "
            f"({result.failed}); the scheduler retries it, see `nurture lead show {email}`",
            err=True,
        )


@click.group("lead")
def lead_group() -> None:
    """Look at one lead."""


@lead_group.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the lead as JSON.")
@click.pass_context
def lead_show(ctx: click.Context, key: str, as_json: bool) -> None:
    """Stage, scores and why, enrolments, deliveries, handoffs and unprocessed events of a lead."""
    app = open_app(ctx)
    try:
        with app.sessions() as s:
            detail = lead_detail(s, find_by_key(s, key))
    except NurtureError as error:
        fail(str(error))
    if as_json:
        emit_json(detail)
        return
    lead, score = detail["lead"], detail["score"]
    key = lead["email"] or lead["phone"] or lead["external_id"] or f"lead {lead['id']}"
    console.print(
        f"[bold]{key}[/] "
        f"{lead['first_name'] or ''} {lead['last_name'] or ''} · {lead['company'] or ''}"
    )
    if lead.get("erased_at"):
        console.print(f"[bold]erased[/] {lead['erased_at']}: personal data removed (a tombstone)")
    console.print(
        f"stage [bold]{lead['stage']}[/] · score {score['total']:g} "
        f"(fit {score['fit']:g}, engagement {score['engagement']:g}) · owner {lead['owner']}"
    )
    console.print(
        f"email consent {'yes' if lead['email_consent'] else 'no'} · "
        f"SMS opt-in {'yes' if lead['sms_consent'] else 'no'}"
    )
    if lead["phone"]:
        console.print(
            f"phone {lead['phone']} ({lead['phone_kind']}, {lead['phone_region'] or 'no region'})"
        )
    zone = lead["send_zone"] or "the sending rules' default zone"
    by_phone = " (from the phone number)" if lead["send_zone_from"] == "phone" else ""
    console.print(f"sends timed in {zone}{by_phone}")
    table(
        "Why (score ledger, newest first)",
        ["when", "rule", "points", "reason"],
        [(e["occurred_at"], e["rule"], f"{e['points']:+g}", e["reason"]) for e in detail["ledger"]],
    )
    table(
        "Enrolments",
        ["sequence", "milestone", "status", "next step", "exit"],
        [
            (
                e["sequence"],
                e["milestone"],
                f"{e['status']} (held out)" if e["holdout"] else e["status"],
                e["next_run_at"],
                e["exit_reason"],
            )
            for e in detail["enrolments"]
        ],
    )
    table(
        "Deliveries",
        ["template", "variant", "channel", "status", "due", "sent", "detail"],
        [
            (
                d["template"],
                d["variant"] or "",
                d["channel"],
                d["status"],
                d["due_at"],
                d["sent_at"],
                d["detail"],
            )
            for d in detail["deliveries"]
        ],
    )
    table(
        "Handoffs",
        ["crossing", "created", "owner", "status"],
        [(h["crossing"], h["created_at"], h["owner"], h["status"]) for h in detail["handoffs"]],
    )
    if detail["suppressions"]:
        table(
            "Suppressed addresses",
            ["channel", "address", "since", "reason"],
            [
                (s["channel"], s["address"], s["created_at"], s["reason"])
                for s in detail["suppressions"]
            ],
        )
    if detail["unsubscribed_topics"]:
        table(
            "Unsubscribed topics (their emails are skipped)",
            ["topic", "since", "via"],
            [(t["topic"], t["created_at"], t["source"]) for t in detail["unsubscribed_topics"]],
        )
    if detail["consents"]:
        table(
            "Consents given on forms (the text shown, where, when)",
            ["form", "topic", "status", "asked", "confirmed", "page", "IP", "text"],
            [
                (c["form"], c["topic"], c["status"], c["requested_at"], c["confirmed_at"] or "-",
                 c["page_url"] or "-", c["ip"] or "-", c["text"])
                for c in detail["consents"]
            ],
        )
    unprocessed = detail["unprocessed_events"]
    if unprocessed:
        table(
            "Unprocessed events (retried by the scheduler)",
            ["event", "type", "received", "status", "attempts", "next retry", "error"],
            [
                (
                    e["id"],
                    e["type"],
                    e["received_at"],
                    e["status"],
                    e["attempts"],
                    e["retry_at"],
                    e["error"],
                )
                for e in unprocessed
            ],
        )


@lead_group.command("why")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
@click.pass_context
def lead_why(ctx: click.Context, key: str, as_json: bool) -> None:
    """The decision trace of a lead: every event, score change, stage, step and send, and why."""
    app = open_app(ctx)
    try:
        with app.sessions() as s:
            lead = find_by_key(s, key)
            summary = {
                "id": lead.id,
                "email": lead.email,
                "stage": str(lead.stage),
                "score": lead.score,
            }
            entries = timeline(s, lead.id)
    except NurtureError as error:
        fail(str(error))
    if as_json:
        emit_json({"lead": summary, "trace": [e.as_dict() for e in entries]})
        return
    who = lead.email or lead.phone or lead.external_id or f"lead {lead.id}"
    table(
        f"{who}: stage {summary['stage']}, score {lead.score:g}",
        ["time (UTC)", "kind", "what", "reason"],
        [(e.at.strftime("%a %Y-%m-%d %H:%M"), e.kind, e.text, e.reason) for e in entries],
    )


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the funnel as JSON.")
@click.pass_context
def stats_command(ctx: click.Context, as_json: bool) -> None:
    """The funnel per sequence, milestone and step, MQL and SQL counts, time to SQL."""
    app = open_app(ctx)
    with app.sessions() as s:
        data = funnel(s, app.rt)
    if as_json:
        emit_json(data)
        return
    print_funnel(data)


def print_funnel(data: dict[str, Any]) -> None:
    """The funnel as tables (shared by `stats` and `demo`)."""
    stages = data["stages"]
    table("Stages", list(stages), [list(stages.values())])
    for name, sequence in data["sequences"].items():
        exits = ", ".join(f"{r}: {n}" for r, n in sorted(sequence["exited"].items())) or "-"
        table(
            f"{name}: {sequence['enrolled']} enrolled, {sequence['active']} active; exits {exits}",
            ["milestone", "entered", "now in"],
            [(m["id"], m["entered"], m["now_in"]) for m in sequence["milestones"]],
        )
        table(
            f"{name}: steps",
            [
                "step",
                "template",
                "planned",
                "sent",
                "skipped",
                "failed",
                "delivered",
                "opened",
                "clicked",
                "bounced",
            ],
            [
                (
                    s["step"],
                    f"{s['channel']} {s['template']}",
                    s["planned"],
                    s["sent"],
                    s["skipped"],
                    s["failed"],
                    s["delivered"],
                    s["opened"],
                    s["clicked"],
                    s["bounced"],
                )
                for s in sequence["steps"]
            ],
        )
    console.print(f"median days to SQL: {data['median_days_to_sql']}")


@click.command("handoffs")
@click.option("--json", "as_json", is_flag=True, help="Print handoffs as JSON.")
@click.pass_context
def handoffs_command(ctx: click.Context, as_json: bool) -> None:
    """Leads handed to sales, newest first, with score and delivery status."""
    app = open_app(ctx)
    with app.sessions() as s:
        rows = s.execute(
            select(Handoff, Lead)
            .join(Lead, Lead.id == Handoff.lead_id)
            .order_by(Handoff.created_at.desc())
        ).all()
        data = [
            {
                "id": h.id,
                "email": lead.email,
                "company": lead.company,
                "owner": h.owner,
                "score": h.score.get("total"),
                "status": h.status,
                "attempts": h.attempts,
                "created_at": h.created_at.isoformat(),
            }
            for h, lead in rows
        ]
    if as_json:
        emit_json(data)
        return
    table(
        f"{len(data)} handoff(s)",
        ["id", "lead", "company", "score", "owner", "status", "created"],
        [
            (
                d["id"],
                d["email"],
                d["company"],
                d["score"],
                d["owner"],
                d["status"],
                d["created_at"],
            )
            for d in data
        ],
    )


def _sales_action(ctx: click.Context, key: str, action: str, reason: str) -> None:
    app = open_app(ctx)
    try:
        with app.sessions.begin() as s:
            lead = find_by_key(s, key)
            act = recycle_lead if action == "recycle" else win_lead
            stage = act(s, app.rt, lead.id, reason).stage
    except NurtureError as error:
        fail(str(error))
    console.print(f"{key}: stage {stage}")


@click.command("recycle")
@click.argument("key")
@click.option("--reason", default="recycled by sales", show_default=True)
@click.pass_context
def recycle_command(ctx: click.Context, key: str, reason: str) -> None:
    """Sales sends a lead back to nurture: engagement restarts, re-engagement may enrol it."""
    _sales_action(ctx, key, "recycle", reason)


@click.command("won")
@click.argument("key")
@click.option("--reason", default="won by sales", show_default=True)
@click.pass_context
def won_command(ctx: click.Context, key: str, reason: str) -> None:
    """Mark a lead a customer: it leaves every sequence."""
    _sales_action(ctx, key, "won", reason)


def register(group: click.Group) -> None:
    """Attach these commands to the `nurture` group."""
    for command, name in (
        (track_command, "track"),
        (lead_group, "lead"),
        (stats_command, "stats"),
        (handoffs_command, "handoffs"),
        (recycle_command, "recycle"),
        (won_command, "won"),
    ):
        group.add_command(command, name)
