"""What one sequence did for some leads over a period: entries per milestone, sends per step
with when they went (weekday and hour in each lead's zone), skips and deferrals with their
reasons, and the leads that reached MQL and SQL. One function for any database, so a
backtest's scratch run and the live one are counted the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.contacts import local_zone
from engine.models import Delivery, DeliveryStatus, Lead
from engine.read.journeys import step_reasons
from engine.read.stats import Scope, reached, send_places, sequence_funnel
from engine.workflow.runtime import Runtime
from engine.workflow.windows import DAYS, zone

STEP_COUNTS = ("planned", "sent", "skipped", "failed")


def sequence_outcome(session: Session, rt: Runtime, name: str, scope: Scope) -> dict[str, Any]:
    """The figures of sequence `name` within `scope`, every milestone and send step listed
    (in the order the sequence runs them, zeros included), as plain data for JSON."""
    funnel = sequence_funnel(session, rt, name, scope)
    deferred, skipped = step_reasons(session, name, scope)
    when = _send_times(session, rt, name, scope)
    counted = {step["step"]: step for step in funnel["steps"]}
    places = send_places(rt.workflows.sequences[name])
    places += [place for place in counted if place not in places]  # steps of older versions
    mql, mql_days = reached(session, Lead.mql_at, scope)
    sql, sql_days = reached(session, Lead.sql_at, scope)
    return {
        "enrolled": funnel["enrolled"],
        "exited": funnel["exited"],
        "milestones": [
            {"id": m["id"], "entered": m["entered"], "now_in": m["now_in"]}
            for m in funnel["milestones"]
        ],
        "steps": [
            {
                "step": place,
                **{kind: int(counted.get(place, {}).get(kind, 0)) for kind in STEP_COUNTS},
                "deferred": sum(deferred.get(place, Counter()).values()),
                "skipped_because": dict(skipped.get(place, Counter()).most_common()),
                "deferred_because": dict(deferred.get(place, Counter()).most_common()),
                "weekdays": _ordered(when.get(place, {}).get("weekdays", Counter()), DAYS),
                "hours": _ordered(when.get(place, {}).get("hours", Counter()), range(24)),
            }
            for place in places
        ],
        "mql": mql,
        "median_days_to_mql": mql_days,
        "sql": sql,
        "median_days_to_sql": sql_days,
    }


def _send_times(
    session: Session, rt: Runtime, name: str, scope: Scope
) -> dict[str, dict[str, Counter[Any]]]:
    """Per step place: its sends counted by weekday and by hour, in each lead's own zone (its
    phone number's, else the sending rules' default, as the send window reads it)."""
    rows = session.execute(
        select(Delivery.milestone, Delivery.step, Delivery.sent_at, Lead.timezone, Lead.phone)
        .join(Lead, Lead.id == Delivery.lead_id)
        .where(
            Delivery.sequence == name,
            Delivery.status == DeliveryStatus.SENT,
            *scope.where(session, Delivery.lead_id, Delivery.planned_at),
        )
    )
    found: dict[str, dict[str, Counter[Any]]] = {}
    default = rt.send.default_timezone
    for milestone, step, sent_at, timezone, phone in rows:
        if sent_at is None:  # never for a sent row, but the column allows it
            continue
        local = sent_at.astimezone(zone(local_zone(timezone, phone), default))
        counts = found.setdefault(
            f"{milestone}/{step}", {"weekdays": Counter(), "hours": Counter()}
        )
        counts["weekdays"][DAYS[local.weekday()]] += 1
        counts["hours"][local.hour] += 1
    return found


def _ordered(counts: Counter[Any], keys: Iterable[object]) -> dict[str, int]:
    """The counts under every key in order, zeros left out, keys as text (JSON's keys)."""
    return {str(key): counts[key] for key in keys if counts[key]}
