"""`nurture leads merge` and `nurture leads conflicts`: make two leads that are one person one,
and list the calls that suggested such pairs (NURTURE_MERGE=ask).

Like `track`, a merge commits and leaves the work it made due (steps of the survivor's
enrolments, a handoff) to the scheduler, which claims it from the database.
"""

from __future__ import annotations

from typing import Any

import click

from engine.cli.commands import fail, open_app
from engine.cli.imports import leads_group
from engine.cli.output import console, emit_json, quiet_engine_logs, table
from engine.errors import NurtureError
from engine.funnel.merge import Folded
from engine.funnel.service import Outcome, merge_leads
from engine.read.conflicts import open_conflicts
from engine.read.views import find_by_key

MERGE_HINT = "merge with: nurture leads merge <lead> <other>"


def merged(folded: Folded, outcome: Outcome) -> dict[str, Any]:
    """What a merge did, as plain data (read inside its transaction): the survivor afterwards,
    the merged lead, the rows moved per table, the aliases left, the enrolments collapsed."""
    lead = outcome.lead
    return {
        "survivor": {
            "id": lead.id,
            "key": lead.key,
            "stage": str(lead.stage),
            "score": {"total": lead.score, "fit": lead.fit, "engagement": lead.engagement},
        },
        "merged": {"id": folded.merged, "key": folded.merged_key},
        "moved": dict(folded.moved),
        "aliases": [{"field": name, "value": value} for name, value in folded.aliases],
        "collapsed": list(folded.collapsed),
        "handoff_id": outcome.handoff_id,
        "due_enrolments": outcome.due_enrolments,
    }


@click.command("merge")
@click.argument("lead")
@click.argument("other")
@click.option("--json", "as_json", is_flag=True, help="Print what the merge did as JSON.")
@click.pass_context
def merge_command(ctx: click.Context, lead: str, other: str, as_json: bool) -> None:
    """Merge lead OTHER into lead LEAD (id, email, phone or external id): LEAD keeps both
    pasts, OTHER's email, phone and external id name it from now on, OTHER is deleted."""
    app = open_app(ctx)
    try:
        with quiet_engine_logs(), app.sessions.begin() as s:
            keep, gone = find_by_key(s, lead).id, find_by_key(s, other).id
            done = merged(*merge_leads(s, app.rt, keep, gone))
    except NurtureError as error:
        fail(str(error))
    if as_json:
        emit_json(done)
        return
    show_merged(done)


def show_merged(done: dict[str, Any]) -> None:
    """A merge in words: who went into whom, the rows moved, aliases, collapsed runs, handoff."""
    lead, gone, score = done["survivor"], done["merged"], done["survivor"]["score"]
    console.print(
        f"merged {gone['key']} (lead {gone['id']}) into {lead['key']} (lead {lead['id']}): "
        f"stage {lead['stage']}, score {score['total']:g} "
        f"(fit {score['fit']:g}, engagement {score['engagement']:g})",
        highlight=False,
    )
    table("Rows moved", ["table", "rows"], sorted(done["moved"].items()), wrap=False)
    aliases = [f"{a['field']} {a['value']}" for a in done["aliases"]]
    console.print(f"aliases left: {', '.join(aliases) or 'none'}", highlight=False)
    collapsed = ", ".join(str(e) for e in done["collapsed"])
    console.print(
        f"enrolments collapsed (duplicate runs ended): {collapsed or 'none'}", highlight=False
    )
    if done["handoff_id"] is not None:
        console.print(f"handed to sales (handoff {done['handoff_id']})", highlight=False)


@click.command("conflicts")
@click.option("--json", "as_json", is_flag=True, help="Print the conflicts as JSON.")
@click.pass_context
def conflicts_command(ctx: click.Context, as_json: bool) -> None:
    """Calls that gave a lead an email, phone or external id another lead holds, last seen
    first: the two may be one person (merge them) or not (leave them)."""
    app = open_app(ctx)
    with app.sessions() as s:
        rows = open_conflicts(s)
    if as_json:
        emit_json(rows)
        return
    table(
        f"{len(rows)} open conflict(s)",
        ["lead", "other", "field", "value", "source", "first seen", "last seen", "times"],
        [
            (
                f"{r['lead']} ({r['lead_id']})",
                f"{r['other']} ({r['other_id']})",
                r["field"],
                r["value"],
                r["source"],
                r["first_seen_at"],
                r["last_seen_at"],
                r["times"],
            )
            for r in rows
        ],
        wrap=False,
    )
    if rows:
        console.print(MERGE_HINT, highlight=False)


def register(group: click.Group) -> None:
    """Attach merge and conflicts to `nurture leads` (engine.cli.imports), and it to `group`."""
    leads_group.add_command(merge_command)
    leads_group.add_command(conflicts_command)
    group.add_command(leads_group)
