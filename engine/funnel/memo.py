"""What a batch of events knows about its leads, read once per batch instead of once per event.

`record()` in `service.py` loads a `Memo` for the leads of a batch and keeps it current while it
scores the batch's events in order, so each event sees exactly what it would see alone: the
event types its lead did before it (for conditions) and the ledger times of limited rules
(for caps). Code that reads these asks `memo_of(session)` first and the database otherwise.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.models import Delivery, Enrolment, Event, LedgerKind, ScoreEntry

_KEY = "nurture.memo"


class Part(StrEnum):
    """A part of the memo that may be read on first use."""

    LATEST = "latest"
    ENROLMENTS = "enrolments"


_LATEST = (
    select(Event.lead_id, Event.type, func.max(Event.occurred_at))
    .where(
        Event.lead_id.in_(bindparam("leads", expanding=True)),
        Event.occurred_at <= bindparam("now"),
    )
    .group_by(Event.lead_id, Event.type)
)
_ENROLMENTS = (
    select(Enrolment)
    .where(Enrolment.lead_id.in_(bindparam("leads", expanding=True)))
    .order_by(Enrolment.id)
)
_PLANNED = select(Delivery.enrolment_id, Delivery.step, Delivery.pass_no).where(
    Delivery.enrolment_id.in_(bindparam("enrolments", expanding=True))
)
_SCORED = select(ScoreEntry.lead_id, ScoreEntry.rule, ScoreEntry.occurred_at).where(
    ScoreEntry.lead_id.in_(bindparam("leads", expanding=True)),
    ScoreEntry.rule.in_(bindparam("rules", expanding=True)),
    ScoreEntry.kind == LedgerKind.ENGAGEMENT,  # the times a limit counts (scoring._SCORED)
)


@dataclass
class Memo:
    """Per lead of a batch: the latest time of each event type, and the ledger times of rules
    with limits, and its enrolments; as of the batch's `now`. And the sequence versions the
    batch stored."""

    now: datetime
    leads: set[int]
    latest: dict[int, dict[str, datetime]] = field(default_factory=dict)
    scored: dict[tuple[int, str], list[datetime]] = field(default_factory=dict)
    pinned: dict[str, set[str]] = field(default_factory=dict)  # versions stored, by sequence
    enrolments: dict[int, list[Enrolment]] = field(default_factory=dict)  # all, by id
    # (enrolment, step, pass) of every delivery of the enrolments a batch advances
    planned: set[tuple[int, str, int]] | None = None
    # Parts read on first use, from this session (a batch that stores no events of its own)
    unread: set[Part] = field(default_factory=set)
    session: Session | None = None

    @classmethod
    def load(
        cls,
        session: Session,
        leads: Collection[int],
        rules: Collection[str],
        now: datetime,
        advancing: Collection[int] = (),
        lazy: bool = False,
    ) -> Memo:
        """Read what the batch needs of these leads, one statement each; with the deliveries
        planned so far for the enrolments it is `advancing`.

        `lazy` leaves the events and enrolments to be read on first use, for batches that
        store no events (advancing, refreshing): most of those never ask. A batch of events
        reads them now, before its own events are stored, and tells the memo of each in turn.
        """
        memo = cls(now, set(leads))
        if advancing:
            rows = session.execute(_PLANNED, {"enrolments": sorted(advancing)})
            memo.planned = {(e, step, pass_no) for e, step, pass_no in rows}
        memo.session, memo.unread = session, {Part.LATEST, Part.ENROLMENTS}
        if not lazy:
            memo._read(Part.LATEST)
            memo._read(Part.ENROLMENTS)
        if rules:
            ids = sorted(memo.leads)
            for lead_id, rule, moment in session.execute(
                _SCORED, {"leads": ids, "rules": sorted(rules)}
            ):
                memo.scored.setdefault((lead_id, rule), []).append(as_utc(moment))
        return memo

    def _read(self, part: Part) -> None:
        """Read one part for every lead of the batch, unless it was read already."""
        if part not in self.unread:
            return
        self.unread.discard(part)
        assert self.session is not None
        ids = sorted(self.leads)
        if part is Part.LATEST:
            rows = self.session.execute(_LATEST, {"leads": ids, "now": self.now})
            for lead_id, kind, moment in rows:
                self.latest.setdefault(lead_id, {})[kind] = as_utc(moment)
        else:
            for enrolment in self.session.scalars(_ENROLMENTS, {"leads": ids}):
                self.enrolments.setdefault(enrolment.lead_id, []).append(enrolment)

    def copy(self) -> Memo:
        """A copy to go back to when a savepoint rolls back what was remembered since."""
        return Memo(
            self.now,
            set(self.leads),
            {lead: dict(kinds) for lead, kinds in self.latest.items()},
            {key: list(times) for key, times in self.scored.items()},
            {name: set(versions) for name, versions in self.pinned.items()},
            {lead: list(rows) for lead, rows in self.enrolments.items()},
            set(self.planned) if self.planned is not None else None,
            set(self.unread),
            self.session,
        )

    def restore(self, saved: Memo) -> None:
        """Go back to a copy taken before a savepoint that rolled back."""
        again = saved.copy()
        self.latest, self.scored, self.pinned = again.latest, again.scored, again.pinned
        self.enrolments, self.planned, self.unread = again.enrolments, again.planned, again.unread

    def saw(self, lead_id: int, kind: str, occurred_at: datetime) -> None:
        """An event of the lead is stored: conditions see it from now on."""
        self._read(Part.LATEST)
        kinds = self.latest.setdefault(lead_id, {})
        if occurred_at <= self.now and (kind not in kinds or kinds[kind] < occurred_at):
            kinds[kind] = occurred_at

    def latest_of(self, lead_id: int) -> dict[str, datetime] | None:
        """The latest time of each event type of the lead, or None when it is not remembered."""
        self._read(Part.LATEST)
        return self.latest.setdefault(lead_id, {}) if lead_id in self.leads else None

    def enrolments_of(self, lead_id: int) -> list[Enrolment] | None:
        """Every enrolment of the lead, oldest first (new ones appended), or None when the lead
        is not remembered. Their state is the session's own objects': always current."""
        self._read(Part.ENROLMENTS)
        return self.enrolments.setdefault(lead_id, []) if lead_id in self.leads else None

    def scored_times(self, lead_id: int, rule: str) -> list[datetime] | None:
        """The ledger times of a limited rule for the lead, or None when it is not remembered."""
        return self.scored.setdefault((lead_id, rule), []) if lead_id in self.leads else None


def memo_of(session: Session) -> Memo | None:
    """The memo of the batch this session is recording, if any."""
    memo = session.info.get(_KEY)
    return memo if isinstance(memo, Memo) else None


@contextmanager
def remembering(session: Session, memo: Memo) -> Iterator[None]:
    """Make `memo` the session's memo for the duration of a batch."""
    session.info[_KEY] = memo
    try:
        yield
    finally:
        session.info.pop(_KEY, None)
