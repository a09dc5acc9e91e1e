"""A lead's decision trace, oldest first: events, score changes, stages, milestones, sends and
why each send went, waited or did not, exits and handoffs; and the score over time. One read
for the CLI, the API and the dashboard."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    Event,
    Handoff,
    LedgerKind,
    MilestoneVisit,
    ScoreEntry,
    StageChange,
    VersionMove,
)


class EntryKind(StrEnum):
    """What a trace entry records; at the same moment, entries sort in this order."""

    EVENT = "event"
    SCORE = "score"
    STAGE = "stage"
    MILESTONE = "milestone"
    VERSION = "version"
    EXIT = "exit"
    SENT = "sent"
    SKIPPED = "skipped"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"
    PLANNED = "planned"
    SENDING = "sending"
    HANDOFF = "handoff"


_ORDER = {kind: n for n, kind in enumerate(EntryKind)}
# A delivery's status is the kind of its entry, but for sent and deferred ones (`_delivery`).
_BY_STATUS = {
    DeliveryStatus.PLANNED: EntryKind.PLANNED,
    DeliveryStatus.SENDING: EntryKind.SENDING,
    DeliveryStatus.SENT: EntryKind.SENT,
    DeliveryStatus.FAILED: EntryKind.FAILED,
    DeliveryStatus.SKIPPED: EntryKind.SKIPPED,
    DeliveryStatus.UNKNOWN: EntryKind.UNKNOWN,
}
LATE = timedelta(minutes=1)  # a send this much after its plan went out deferred
ScorePoint = tuple[datetime, float, float, float]  # at, total, fit, engagement


@dataclass(frozen=True)
class Entry:
    """One line of a trace: when, what, and why (`reason`); `ref` names its delivery or handoff."""

    at: datetime
    kind: EntryKind
    text: str
    reason: str | None = None
    ref: str | int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for `--json`, the API and the dashboard."""
        return {
            "at": self.at.isoformat(),
            "kind": str(self.kind),
            "text": self.text,
            "reason": self.reason,
            "ref": self.ref,
        }


def _key(entry: Entry) -> tuple[datetime, int, str]:
    return entry.at, _ORDER[entry.kind], entry.text


def timeline(session: Session, lead_id: int) -> list[Entry]:
    """Every recorded moment and decision about one lead, oldest first."""
    enrolments = {
        e.id: e for e in session.scalars(select(Enrolment).where(Enrolment.lead_id == lead_id))
    }
    entries = [
        *_events(session, lead_id),
        *_scores(session, lead_id),
        *_journey(session, lead_id, enrolments),
        *map(_delivery, session.scalars(select(Delivery).where(Delivery.lead_id == lead_id))),
        *_handoffs(session, lead_id),
    ]
    return sorted(entries, key=_key)


def _events(session: Session, lead_id: int) -> list[Entry]:
    entries = []
    for e in session.scalars(select(Event).where(Event.lead_id == lead_id)):
        detail = ", ".join(
            f"{k}={v}" for k, v in (e.properties or {}).items() if k != "delivery_id"
        )
        text = e.type + (f" ({detail})" if detail else "")
        entries.append(Entry(e.occurred_at, EntryKind.EVENT, text))
    return entries


def _scores(session: Session, lead_id: int) -> list[Entry]:
    """Each ledger row: points, the half of the score it moved, its rule and why."""
    return [
        Entry(r.occurred_at, EntryKind.SCORE, f"{r.points:+g} {r.kind} {r.rule} ({r.reason})")
        for r in session.scalars(select(ScoreEntry).where(ScoreEntry.lead_id == lead_id))
    ]


def _journey(session: Session, lead_id: int, enrolments: dict[int, Enrolment]) -> list[Entry]:
    """Stage changes, milestone visits, version moves and exits."""
    entries = [
        Entry(c.changed_at, EntryKind.STAGE, f"{c.from_stage} -> {c.to_stage}: {c.reason}")
        for c in session.scalars(select(StageChange).where(StageChange.lead_id == lead_id))
    ]
    for v in session.scalars(
        select(MilestoneVisit).where(MilestoneVisit.enrolment_id.in_(enrolments))
    ):
        sequence = enrolments[v.enrolment_id].sequence
        text = f"{sequence}: {v.milestone} ({v.reason})"
        entries.append(Entry(v.entered_at, EntryKind.MILESTONE, text))
    for m in session.scalars(select(VersionMove).where(VersionMove.enrolment_id.in_(enrolments))):
        sequence = enrolments[m.enrolment_id].sequence
        to = f"{m.to_place} (version {m.to_version})" if m.to_version else m.to_place
        note = f"; {m.note}" if m.note else ""
        text = f"{sequence}: {m.from_place} (version {m.from_version}) -> {to}{note}"
        entries.append(Entry(m.moved_at, EntryKind.VERSION, text))
    for enrolment in enrolments.values():
        if enrolment.exited_at is not None:
            text = f"{enrolment.sequence}: {enrolment.exit_reason}"
            entries.append(Entry(enrolment.exited_at, EntryKind.EXIT, text))
    return entries


def _delivery(d: Delivery) -> Entry:
    """A send and why: when a sent one went (and how late), why another waits or was not sent."""
    variant = f" (variant {d.variant})" if d.variant else ""
    label = f"{d.channel} {d.template}{variant}" + (f": {d.subject}" if d.subject else "")
    if d.status == DeliveryStatus.SENT and d.sent_at is not None:
        late = d.sent_at - d.planned_at
        notes = [f"deferred {_hours(late)}"] if late >= LATE else []
        if d.detail:
            notes.append(d.detail)
        return Entry(d.sent_at, EntryKind.SENT, label, "; ".join(notes) or None, d.id)
    if d.status == DeliveryStatus.PLANNED and (d.detail or "").startswith("deferred"):
        # Shown when it was due and put off; the detail says until when and why.
        return Entry(d.planned_at, EntryKind.DEFERRED, label, d.detail, d.id)
    return Entry(d.due_at, _BY_STATUS[d.status], label, d.detail, d.id)


def _hours(delta: timedelta) -> str:
    """A delay as hours and minutes ("7h 0m")."""
    hours, minutes = divmod(int(delta.total_seconds() // 60), 60)
    return f"{hours}h {minutes}m"


def _handoffs(session: Session, lead_id: int) -> list[Entry]:
    entries = []
    for h in session.scalars(select(Handoff).where(Handoff.lead_id == lead_id)):
        total = h.score.get("total") if isinstance(h.score, dict) else None
        text = f"handed to sales at score {total} ({h.status})"
        entries.append(Entry(h.created_at, EntryKind.HANDOFF, text, ref=h.id))
    return entries


def score_series(
    session: Session, lead_id: int, fit_rules: Collection[str] = ()
) -> list[ScorePoint]:
    """(at, total, fit, engagement) after each ledger row, oldest first: the running sums, so
    the last point is the lead's score (every change of it is a ledger row).

    A rescore row moves the fit half when its rule is a fit rule: one of `fit_rules` (those of
    scoring.yml) or a rule the lead's fit rows name."""
    rows = session.execute(
        select(ScoreEntry.occurred_at, ScoreEntry.kind, ScoreEntry.rule, ScoreEntry.points)
        .where(ScoreEntry.lead_id == lead_id)
        .order_by(ScoreEntry.occurred_at, ScoreEntry.id)
    ).all()
    fit = engagement = 0.0
    series: list[ScorePoint] = []
    fit_ids = set(fit_rules)
    for at, kind, rule, points in rows:
        if kind == LedgerKind.FIT:
            fit_ids.add(rule)
        if kind == LedgerKind.FIT or (kind == LedgerKind.RESCORE and rule in fit_ids):
            fit += points
        else:  # engagement rules, decay and the reset after recycling move the other half
            engagement += points
        series.append((at, fit + engagement, fit, engagement))
    return series
