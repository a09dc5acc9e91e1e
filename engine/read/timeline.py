"""What happened to a lead, in order: events, stages, milestones, sends, exits and handoffs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    Event,
    Handoff,
    MilestoneVisit,
    StageChange,
    VersionMove,
)


@dataclass(frozen=True, order=True)
class Entry:
    """One line of a timeline."""

    at: datetime
    kind: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for `--json`."""
        return {"at": self.at.isoformat(), "kind": self.kind, "text": self.text}


def timeline(session: Session, lead_id: int) -> list[Entry]:
    """Every recorded moment of one lead, oldest first."""
    entries: list[Entry] = []
    for e in session.scalars(select(Event).where(Event.lead_id == lead_id)):
        detail = ", ".join(
            f"{k}={v}" for k, v in (e.properties or {}).items() if k != "delivery_id"
        )
        entries.append(
            Entry(e.occurred_at, "event", f"{e.type}" + (f" ({detail})" if detail else ""))
        )
    for c in session.scalars(select(StageChange).where(StageChange.lead_id == lead_id)):
        entries.append(Entry(c.changed_at, "stage", f"{c.from_stage} -> {c.to_stage}: {c.reason}"))
    enrolments = {
        e.id: e for e in session.scalars(select(Enrolment).where(Enrolment.lead_id == lead_id))
    }
    for v in session.scalars(
        select(MilestoneVisit).where(MilestoneVisit.enrolment_id.in_(enrolments))
    ):
        sequence = enrolments[v.enrolment_id].sequence
        entries.append(Entry(v.entered_at, "milestone", f"{sequence}: {v.milestone} ({v.reason})"))
    for m in session.scalars(select(VersionMove).where(VersionMove.enrolment_id.in_(enrolments))):
        sequence = enrolments[m.enrolment_id].sequence
        to = f"{m.to_place} (version {m.to_version})" if m.to_version else m.to_place
        note = f"; {m.note}" if m.note else ""
        text = f"{sequence}: {m.from_place} (version {m.from_version}) -> {to}{note}"
        entries.append(Entry(m.moved_at, "version", text))
    for enrolment in enrolments.values():
        if enrolment.exited_at is not None:
            text = f"{enrolment.sequence}: {enrolment.exit_reason}"
            entries.append(Entry(enrolment.exited_at, "exit", text))
    for d in session.scalars(select(Delivery).where(Delivery.lead_id == lead_id)):
        label = f"{d.channel} {d.template}" + (f": {d.subject}" if d.subject else "")
        if d.status == DeliveryStatus.SENT and d.sent_at is not None:
            late = d.sent_at - d.planned_at
            note = f" (deferred {late})" if late.total_seconds() >= 60 else ""
            entries.append(Entry(d.sent_at, "send", label + note))
        else:
            entries.append(
                Entry(d.due_at, d.status, f"{label}" + (f" [{d.detail}]" if d.detail else ""))
            )
    for h in session.scalars(select(Handoff).where(Handoff.lead_id == lead_id)):
        total = h.score.get("total") if isinstance(h.score, dict) else None
        entries.append(
            Entry(h.created_at, "handoff", f"handed to sales at score {total} ({h.status})")
        )
    return sorted(entries)
