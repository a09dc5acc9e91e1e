"""`nurture backtest`: the recorded history of real leads replayed through a sequence as it
stands in the workflows folder, on simulated time in a scratch database, beside what the live
run did for the same leads over the same days. The live database is only read.

How a lead is replayed: its whole recorded history, in order, through the real pipeline
(scheduler, worker, guards, rendering) of a `Simulation` whose channels drop every message.
Before the period no sequence runs, so the events only score the lead and move its stage and
consent: at the period's start it stands where the scoring rules on disk put it. From the
start the one sequence runs and enrols leads on the triggers they fire in the period. What
the live database holds that no event replays is applied at its moment: a lead created
before its first event (an import), a suppressed address, a sale or a recycle by sales.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels.base import EMAIL, SMS
from channels.null import NullChannel
from engine.app import App
from engine.delivery.feedback import RULES
from engine.delivery.sending import suppress
from engine.errors import InvalidLeadError
from engine.funnel.erasure import address_forms
from engine.funnel.leads import Identity, find_lead
from engine.funnel.service import CONSENT_EVENTS, recycle_lead, upsert_leads, win_lead
from engine.models import STANDARD_FIELDS, Event, Lead, Stage, StageChange, Suppression
from engine.read.outcomes import sequence_outcome
from engine.read.stats import Scope
from engine.runner.simulation import ScriptedEvent, Simulation, sequences_named
from engine.workflow.runtime import Runtime

RESOLUTION = timedelta(hours=1)  # the clock's step, as in `nurture demo`
BATCH = 1000  # leads read from the live database per query
# What an event did to consent when it was recorded: the service's consent events, and the
# provider feedback that withdraws an address (bounce, spam report) or restores it.
CONSENT_CHANGES: dict[str, tuple[str, bool]] = {
    **{
        rule.event_type: (f"{channel}_consent", rule.action == "opted_in")
        for (channel, _), rule in RULES.items()
        if rule.action in ("suppressed", "opted_out", "opted_in")
    },
    **CONSENT_EVENTS,
}
# Properties that tie a recorded event to a live send: dropped, so that no scratch send is
# counted as opened or clicked for what a lead did with another message.
LIVE_TIES = ("delivery_id", "provider_message_id")
NOTES = (
    "The sequence starts at the period's start: leads enrol on the triggers they fire in the "
    "period; the live figures count what happened in the period, also for enrolments begun "
    "before it.",
    "Before the period the leads' events are replayed through the scoring rules on disk "
    "alone, so each starts the period with the score, stage and consent they give it.",
    "Recorded opens, clicks and replies are replayed as they happened (they score and answer "
    "'opened/clicked within'), tied to no backtest send: how a lead would have reacted to "
    "another message cannot be known.",
    "Frequency caps count this sequence's sends only: it runs alone.",
    "Variants and the holdout are drawn per lead as live; a winner is decided by the replay's "
    "own sends, which no recorded click is tied to, so click and open winners are not found.",
    "Lead attributes are today's: their history is not recorded.",
    "Sends run at the clock's one-hour step, up to an hour later than the live scheduler would.",
)


@dataclass(frozen=True)
class BacktestReport:
    """What a backtest measured: the sequence's figures in the scratch run and in the live
    database for the same leads and period (`engine.read.outcomes.sequence_outcome`)."""

    sequence: str
    version: str
    since: datetime
    until: datetime
    eligible: int  # leads with an event in the period
    leads: int  # of those, the ones replayed (all, or a sample)
    seed: int
    events: int  # events replayed in the period
    history: int  # events before it, replayed to set where each lead stands at its start
    backtest: dict[str, Any]
    live: dict[str, Any]
    notes: tuple[str, ...] = NOTES

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: times in ISO 8601."""
        data = asdict(self)
        data.update(
            since=self.since.isoformat(), until=self.until.isoformat(), notes=list(self.notes)
        )
        return data


@dataclass(frozen=True)
class _Action:
    """Something of a lead's history that no event replays, applied at its moment."""

    at: datetime
    rank: int  # at one moment: creations (0) before suppressions (1) before sales (2)
    apply: Callable[[Session, Runtime], Any]


@dataclass
class _History:
    """The chosen leads' events and actions up to the period's end, read from the live database."""

    events: list[ScriptedEvent]
    actions: list[_Action]

    def first(self, default: datetime) -> datetime:
        """The moment the replay starts: the earliest event or action, at the latest `default`."""
        moments = [default, *(e.at for e in self.events[:1]), *(a.at for a in self.actions[:1])]
        return min(moments)


def backtest(
    app: App,
    sequence: str,
    since: timedelta,
    leads: int | None = None,
    progress: Callable[[datetime], None] | None = None,
    seed: int = 0,
) -> BacktestReport:
    """Replay the leads with an event in the last `since` (all, or a sample of `leads` drawn
    with `seed`) through `sequence` in a scratch database deleted afterwards, and measure it
    beside the live run. `progress` hears the simulated time as the period is played.

    UnknownSequenceError when the workflows folder holds no such sequence.
    """
    spec = sequences_named(app.rt.workflows, [sequence])[sequence]
    until = app.rt.clock.now()
    start = until - since
    with app.sessions() as live:
        eligible = _eligible(live, start, until)
        chosen = _sample(eligible, leads, seed)
        history = _read_history(live, chosen, until)
        live_figures = sequence_outcome(live, app.rt, sequence, Scope(chosen, start, until))
    before = [e for e in history.events if e.at < start]
    during = history.events[len(before) :]
    workdir = Path(tempfile.mkdtemp(prefix="nurture-backtest-"))
    channels = {EMAIL: NullChannel(EMAIL), SMS: NullChannel(SMS)}
    try:
        sim = Simulation(app.settings, history.first(start), workdir, channels=channels)
        try:
            sim.only(())
            _play(sim, before, [a for a in history.actions if a.at < start], start)
            sim.only([sequence])
            _play(sim, during, [a for a in history.actions if a.at >= start], until, progress)
            with sim.app.sessions() as scratch:
                figures = sequence_outcome(scratch, sim.app.rt, sequence, Scope(None, start, until))
        finally:
            sim.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return BacktestReport(
        sequence=sequence,
        version=spec.version,
        since=start,
        until=until,
        eligible=len(eligible),
        leads=len(chosen),
        seed=seed,
        events=len(during),
        history=len(before),
        backtest=figures,
        live=live_figures,
    )


def _eligible(session: Session, start: datetime, until: datetime) -> list[int]:
    """The ids of the leads with at least one event in the period, in order; an erased lead
    has no identity left to replay its history under."""
    query = (
        select(Event.lead_id)
        .join(Lead, Lead.id == Event.lead_id)
        .where(Event.occurred_at >= start, Event.occurred_at <= until, Lead.erased_at.is_(None))
        .distinct()
        .order_by(Event.lead_id)
    )
    return list(session.scalars(query))


def _sample(ids: list[int], size: int | None, seed: int) -> list[int]:
    """All the ids, or `size` of them drawn with `seed`: the same leads for the same data."""
    if size is None or size >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, size))


def _play(
    sim: Simulation,
    events: list[ScriptedEvent],
    actions: list[_Action],
    until: datetime,
    progress: Callable[[datetime], None] | None = None,
) -> None:
    """Run the replay to `until`, stopping at each action's moment to apply it there."""
    events = sorted(events)
    done = 0
    for at, group in groupby(sorted(actions, key=lambda a: (a.at, a.rank)), key=lambda a: a.at):
        upto = bisect_right(events, at, key=lambda e: e.at)
        sim.run(events[done:upto], at, progress, RESOLUTION)
        done = upto
        with sim.app.sessions.begin() as session:
            for action in group:
                action.apply(session, sim.app.rt)
    sim.run(events[done:], until, progress, RESOLUTION)


def _read_history(session: Session, chosen: list[int], until: datetime) -> _History:
    """The chosen leads' histories, a batch of leads per query."""
    history = _History([], [])
    for offset in range(0, len(chosen), BATCH):
        batch = chosen[offset : offset + BATCH]
        leads = session.scalars(select(Lead).where(Lead.id.in_(batch))).all()
        events = _by_lead(
            session.execute(
                select(Event.lead_id, Event.type, Event.properties, Event.occurred_at)
                .where(Event.lead_id.in_(batch), Event.occurred_at <= until)
                .order_by(Event.lead_id, Event.occurred_at, Event.id)
            )
        )
        changes = _by_lead(
            session.execute(
                select(
                    StageChange.lead_id,
                    StageChange.from_stage,
                    StageChange.to_stage,
                    StageChange.reason,
                    StageChange.changed_at,
                )
                .where(StageChange.lead_id.in_(batch), StageChange.changed_at <= until)
                .order_by(StageChange.lead_id, StageChange.changed_at, StageChange.id)
            )
        )
        for lead in leads:
            _replay_lead(history, lead, events.get(lead.id, []), changes.get(lead.id, []))
        history.actions.extend(_suppressions(session, leads, until))
    history.events.sort()
    history.actions.sort(key=lambda a: (a.at, a.rank))
    return history


def _by_lead(rows: Any) -> dict[int, list[tuple[Any, ...]]]:
    """Rows whose first column is a lead id, grouped by it, the rest of each row in order."""
    grouped: dict[int, list[tuple[Any, ...]]] = {}
    for lead_id, *rest in rows:
        grouped.setdefault(lead_id, []).append(tuple(rest))
    return grouped


def _replay_lead(
    history: _History, lead: Lead, events: list[tuple[Any, ...]], changes: list[tuple[Any, ...]]
) -> None:
    """Add one lead's events and actions. A lead its first event created (the event came
    before or as the row did) is created by that event again, carrying the lead's attributes;
    an imported one is created at its creation time. Sales decisions follow at theirs."""
    column, value = Identity.of(lead).key()
    key = {column: value}
    known = _attributes(lead, [kind for kind, _, _ in events])
    by_event = bool(events) and events[0][2] <= lead.created_at
    if not by_event:
        first = Stage(changes[0][0]) if changes else lead.stage
        stage = first if first in (Stage.SUBSCRIBER, Stage.LEAD) else Stage.LEAD
        row = known | {"stage": stage}
        history.actions.append(_Action(lead.created_at, 0, _upsert(row)))
    for n, (kind, properties, occurred_at) in enumerate(events):
        tied = {k: v for k, v in (properties or {}).items() if k not in LIVE_TIES}
        who = known if by_event and n == 0 else key
        history.events.append(ScriptedEvent(occurred_at, who, kind, tied))
    for _, to_stage, reason, changed_at in changes:
        if to_stage in (Stage.CUSTOMER, Stage.RECYCLED):
            history.actions.append(_Action(changed_at, 2, _sales(key, Stage(to_stage), reason)))


def _attributes(lead: Lead, kinds: list[str]) -> dict[str, Any]:
    """The lead as a record to create it from: identity, attributes, and its consent before
    the first event that changed it (the replay of that event changes it again)."""
    record: dict[str, Any] = {
        name: getattr(lead, name)
        for name in ("email", "external_id", "phone", *STANDARD_FIELDS)
        if getattr(lead, name) is not None
    }
    record.update(lead.fields or {})
    for column in ("email_consent", "sms_consent"):
        changed = next((CONSENT_CHANGES[k][1] for k in kinds if _changes(k, column)), None)
        record[column] = getattr(lead, column) if changed is None else not changed
    return record


def _changes(kind: str, column: str) -> bool:
    """True when an event of `kind` sets the consent `column`."""
    return kind in CONSENT_CHANGES and CONSENT_CHANGES[kind][0] == column


def _suppressions(session: Session, leads: Any, until: datetime) -> Iterator[_Action]:
    """The suppressions of the leads' addresses (written out or hashed), each applied when it
    was made, in the form it is stored in."""
    addresses = sorted(
        {f for lead in leads for a in (lead.email, lead.phone) if a for f in address_forms(a)}
    )
    if not addresses:
        return
    rows = session.execute(
        select(Suppression.channel, Suppression.address, Suppression.reason, Suppression.created_at)
        .where(Suppression.address.in_(addresses), Suppression.created_at <= until)
        .order_by(Suppression.created_at, Suppression.id)
    )
    for channel, address, reason, created_at in rows:
        yield _Action(created_at, 1, _suppress(channel, address, reason))


def _upsert(row: dict[str, Any]) -> Callable[[Session, Runtime], Any]:
    """Creating an imported lead, as the import did."""
    return lambda session, rt: upsert_leads(session, rt, [row])


def _suppress(channel: str, address: str, reason: str) -> Callable[[Session, Runtime], Any]:
    """Suppressing an address, as a bounce, complaint or failed send did."""
    return lambda session, rt: suppress(session, channel, address, reason, rt.clock.now())


def _sales(key: dict[str, Any], stage: Stage, reason: str) -> Callable[[Session, Runtime], Any]:
    """Sales winning or recycling the lead; a recycle of a lead that is no MQL or SQL in this
    run is left out, as sales would not have had it."""

    def apply(session: Session, rt: Runtime) -> None:
        lead = find_lead(session, Identity.parse(key))
        if lead is None:
            return
        if stage == Stage.CUSTOMER:
            win_lead(session, rt, lead.id, reason)
            return
        with contextlib.suppress(InvalidLeadError):
            recycle_lead(session, rt, lead.id, reason)

    return apply
