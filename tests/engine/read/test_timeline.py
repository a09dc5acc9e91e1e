"""A lead's decision trace: score changes from the ledger, why each send went, waited or did not,
and the score over time replayed from the ledger."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import SendResult
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import SendAttempt, record_sent, send_delivery
from engine.funnel.service import track
from engine.models import (
    Delivery,
    DeliveryStatus,
    Handoff,
    Lead,
    ScoreEntry,
    Stage,
)
from engine.read.timeline import Entry, EntryKind, score_series, timeline
from engine.runner.inline import run_due
from engine.workflow.runtime import Runtime
from tests.apps import FIXTURES, outbox_app
from tests.conftest import START
from tests.engine import rows

NIGHT_OWL = {"email": "lee@initech.test", "first_name": "Lee", "timezone": "America/Los_Angeles"}
QUIET = (
    "deferred to 2026-03-02T16:00:00+00:00 (Mon 08:00 America/Los_Angeles): quiet hours 21:00-08:00"
)


@pytest.fixture
def app(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """The test workflows with email quiet hours from 21:00 to 08:00 in each lead's zone."""
    folder = tmp_path / "workflows"
    shutil.copytree(FIXTURES, folder)
    (folder / "sending.yml").write_text('quiet_hours: {email: "21:00-08:00"}\n')
    return outbox_app(db, clock, tmp_path, folder)


def _send_due(app: App) -> list[SendAttempt]:
    """What the scheduler and a worker do: plan the due steps, send the due deliveries."""
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        planned = list(s.scalars(select(Delivery.id).where(Delivery.status == "planned")))
    return [send_delivery(app, delivery_id) for delivery_id in planned]


def _trace(app: App, email: str) -> tuple[Lead, list[Entry]]:
    with app.sessions() as s:
        lead = s.scalars(select(Lead).where(Lead.email == email)).one()
        return lead, timeline(s, lead.id)


def _sends(entries: list[Entry]) -> list[tuple[datetime, EntryKind, str, str | None]]:
    return [
        (e.at, e.kind, e.text, e.reason)
        for e in entries
        if e.kind in (EntryKind.SENT, EntryKind.DEFERRED, EntryKind.PLANNED)
    ]


def test_a_send_deferred_by_quiet_hours_says_why_before_and_after_it_goes_out(
    app: App, clock: FrozenClock
) -> None:
    with app.sessions.begin() as s:  # Monday 09:00 UTC: 01:00 in Los Angeles
        track(s, app.rt, NIGHT_OWL, "form_submitted")
    assert _send_due(app) == [SendAttempt.NOT_SENT]
    _, entries = _trace(app, NIGHT_OWL["email"])
    assert _sends(entries) == [(START, EntryKind.DEFERRED, "email welcome", QUIET)]

    clock.set(datetime(2026, 3, 2, 16, 0, tzinfo=UTC))  # 08:00 in Los Angeles
    assert _send_due(app) == [SendAttempt.SENT]
    _, entries = _trace(app, NIGHT_OWL["email"])
    ((at, kind, text, reason),) = _sends(entries)
    assert (at, kind, reason) == (clock.now(), EntryKind.SENT, f"deferred 7h 0m; {QUIET}")
    assert text.startswith("email welcome: ")  # and the subject it went out with
    with app.sessions() as s:
        delivery = s.scalars(select(Delivery)).one()
    assert (delivery.status, delivery.detail) == (DeliveryStatus.SENT, QUIET)
    (sent,) = [e for e in entries if e.kind == EntryKind.SENT]
    assert sent.ref == delivery.id
    assert sent.as_dict() == {
        "at": "2026-03-02T16:00:00+00:00",
        "kind": "sent",
        "text": text,
        "reason": f"deferred 7h 0m; {QUIET}",
        "ref": delivery.id,
    }


def test_a_send_on_time_has_no_reason(db: Engine, clock: FrozenClock, tmp_path: Path) -> None:
    app = outbox_app(db, clock, tmp_path)  # no quiet hours
    with app.sessions.begin() as s:
        track(s, app.rt, NIGHT_OWL, "form_submitted")
    assert _send_due(app) == [SendAttempt.SENT]
    _, entries = _trace(app, NIGHT_OWL["email"])
    ((at, kind, _, reason),) = _sends(entries)
    assert (at, kind, reason) == (START, EntryKind.SENT, None)


def test_score_changes_are_in_the_trace_with_their_rule_and_reason(
    app: App, clock: FrozenClock
) -> None:
    lead = {**NIGHT_OWL, "title": "VP Engineering"}
    with app.sessions.begin() as s:
        track(s, app.rt, lead, "form_submitted")
    clock.advance(timedelta(hours=1))
    with app.sessions.begin() as s:
        track(s, app.rt, lead, "content_downloaded")
        why = {e.rule: e.reason for e in s.scalars(select(ScoreEntry))}
    _, entries = _trace(app, lead["email"])
    scores = [(e.at, e.text) for e in entries if e.kind == EntryKind.SCORE]
    assert sorted(scores) == [
        (START, f"+10 engagement form ({why['form']})"),
        (START, f"+10 fit senior ({why['senior']})"),
        (START + timedelta(hours=1), f"+8 engagement download ({why['download']})"),
    ]
    kinds = [e.kind for e in entries]
    # at one moment: the event, then what it scored, then the stage it earned
    first = [kinds.index(kind) for kind in (EntryKind.EVENT, EntryKind.SCORE, EntryKind.STAGE)]
    assert first == sorted(first)
    assert [e.at for e in entries] == sorted(e.at for e in entries)


def test_the_score_series_replays_the_ledger_and_ends_at_the_leads_score(
    app: App, clock: FrozenClock
) -> None:
    lead = {**NIGHT_OWL, "title": "Director of IT"}
    with app.sessions.begin() as s:
        track(s, app.rt, lead, "form_submitted")
    clock.advance(timedelta(hours=2))
    with app.sessions.begin() as s:
        track(s, app.rt, lead, "content_downloaded")
    clock.advance(timedelta(days=8))  # a week idle: decay takes 5 points
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        row = s.scalars(select(Lead).where(Lead.email == lead["email"])).one()
        series = score_series(s, row.id)
        rows = s.scalars(select(ScoreEntry).where(ScoreEntry.lead_id == row.id)).all()
    assert len(series) == len(rows) == 4  # senior, form, download, decay
    assert [at for at, *_ in series] == sorted(at for at, *_ in series)
    assert series[-1][1:] == (row.score, row.fit, row.engagement) == (23.0, 10.0, 13.0)
    assert series[-1][0] == START + timedelta(hours=2, days=7)  # decay falls due a week idle
    assert all(total == fit + engagement for _, total, fit, engagement in series)
    assert [total for _, total, _, _ in series][-2:] == [28.0, 23.0]


def test_a_lead_with_no_ledger_has_an_empty_score_series(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        s.add(Lead(email="quiet@x.test", created_at=START, updated_at=START))
    with sessions() as s:
        assert score_series(s, 1) == []
        assert timeline(s, 1) == []


def test_each_delivery_says_what_became_of_it_and_why(sessions: sessionmaker[Session]) -> None:
    outcomes = [
        (DeliveryStatus.SKIPPED, "suppressed: kim@x.test", None),
        (DeliveryStatus.FAILED, "permanent: 550 mailbox unavailable", None),
        (DeliveryStatus.UNKNOWN, "unknown: timed out; not resent", None),
        (DeliveryStatus.PLANNED, "retry 1: transient: 503", None),
        (DeliveryStatus.PLANNED, None, None),
        (DeliveryStatus.SENDING, None, None),
        (DeliveryStatus.SENT, "settled as sent by sendgrid feedback (delivered)", START),
    ]
    with sessions.begin() as s:
        lead = rows.lead(s, "kim@x.test", stage=Stage.SQL)
        enrolment = rows.enrolment(s, lead, sequence="drip", at=START)
        for n, (status, detail, sent_at) in enumerate(outcomes):
            s.add(
                Delivery(
                    id=f"d{n}",
                    enrolment_id=enrolment.id,
                    lead_id=lead.id,
                    sequence="drip",
                    milestone="awareness",
                    step=f"s{n}",
                    pass_no=1,
                    channel="email",
                    template=f"t{n}",
                    status=status,
                    planned_at=START,
                    due_at=START + timedelta(hours=n),
                    sent_at=sent_at,
                    detail=detail,
                )
            )
        s.add(
            Handoff(
                lead_id=lead.id,
                crossing=1,
                created_at=START,
                score={"total": 55},
                reasons={},
            )
        )
    with sessions() as s:
        entries = timeline(s, 1)
    assert [(e.at, e.kind, e.text, e.reason, e.ref) for e in entries] == [
        (START, EntryKind.SENT, "email t6", outcomes[6][1], "d6"),
        (START, EntryKind.SKIPPED, "email t0", outcomes[0][1], "d0"),
        (START, EntryKind.HANDOFF, "handed to sales at score 55 (pending)", None, 1),
        (START + timedelta(hours=1), EntryKind.FAILED, "email t1", outcomes[1][1], "d1"),
        (START + timedelta(hours=2), EntryKind.UNKNOWN, "email t2", outcomes[2][1], "d2"),
        (START + timedelta(hours=3), EntryKind.PLANNED, "email t3", outcomes[3][1], "d3"),
        (START + timedelta(hours=4), EntryKind.PLANNED, "email t4", None, "d4"),
        (START + timedelta(hours=5), EntryKind.SENDING, "email t5", None, "d5"),
    ]


def test_a_send_the_sweep_called_unknown_loses_that_note_once_the_provider_answer_lands(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, NIGHT_OWL, "form_submitted")
    run_due(sessions, rt)
    with sessions.begin() as s:  # the worker died mid-send and the sweep settled it so
        delivery = s.scalars(select(Delivery)).one()
        delivery.status = DeliveryStatus.UNKNOWN
        delivery.detail = "worker lost during send; not resent"
        delivery_id = delivery.id
    with sessions.begin() as s:  # then the provider's answer came after all
        record_sent(s, rt, [(delivery_id, SendResult("outbox", "m1", "queued"))])
    with sessions() as s:
        settled = s.get_one(Delivery, delivery_id)
        assert (settled.status, settled.detail) == (DeliveryStatus.SENT, None)
        assert [e.reason for e in timeline(s, settled.lead_id) if e.kind == "sent"] == [None]
