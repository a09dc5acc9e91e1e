"""Provider feedback: clicks and opens score once, bounces, complaints and STOP suppress."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from twilio.request_validator import RequestValidator

from channels.base import EMAIL, SMS, DeliveryEvent
from channels.webhooks import parse_sendgrid_events, parse_twilio_status, sms_keyword_kind
from engine.clock import FrozenClock
from engine.db import make_engine, make_sessionmaker
from engine.delivery.feedback import FeedbackResult, record_delivery_event, record_delivery_events
from engine.funnel.service import track
from engine.models import Base, Delivery, Enrolment, Event, Lead, ScoreEntry, Suppression
from engine.runner.inline import run_due
from engine.workflow.runtime import Runtime
from tests.channels.servers import SendGridSigner
from tests.conftest import START

ANA = {"email": "ana@northwind.test", "phone": "+15005550001", "sms_consent": True}


def _enrol(sessions: sessionmaker[Session], rt: Runtime) -> None:
    """Ana fills in the form (10 points) and the drip plans the welcome email at once."""
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
    run_due(sessions, rt)


def _enrol_to_the_sms_step(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    """Five days into the drip: welcome, case_study and the quick_question SMS are planned."""
    _enrol(sessions, rt)
    for days in (2, 3):
        clock.advance(timedelta(days=days))
        run_due(sessions, rt)


def _delivery(session: Session, template: str) -> Delivery:
    return session.scalars(select(Delivery).where(Delivery.template == template)).one()


def _mark_sent(sessions: sessionmaker[Session], template: str, message_id: str) -> str:
    """Pretend the provider accepted the send, as `record_success` would have recorded it."""
    with sessions.begin() as s:
        delivery = _delivery(s, template)
        delivery.status, delivery.provider_message_id = "sent", message_id
        delivery.provider = "sendgrid"
        return delivery.id


def _event(kind: str, at: datetime, **fields: Any) -> DeliveryEvent:
    values: dict[str, Any] = {
        "channel": EMAIL,
        "provider": "sendgrid",
        "provider_event_id": "evt-1",
        "delivery_id": None,
        "provider_message_id": None,
        "recipient": ANA["email"],
    }
    return DeliveryEvent(kind=kind, occurred_at=at, **(values | fields))


def _inbound(body: str, at: datetime, sid: str) -> DeliveryEvent:
    """An inbound SMS from Ana's phone as Twilio formats it, its kind decided by the parser."""
    return DeliveryEvent(
        kind=sms_keyword_kind(body),
        channel=SMS,
        provider="twilio",
        provider_event_id=sid,
        occurred_at=at,
        delivery_id=None,
        provider_message_id=None,
        recipient="+1 (500) 555-0001",
        body=body,
    )


def _record(sessions: sessionmaker[Session], rt: Runtime, event: DeliveryEvent) -> FeedbackResult:
    with sessions.begin() as s:
        return record_delivery_event(s, rt, event)


def _lead(session: Session) -> Lead:
    return session.scalars(select(Lead)).one()


def _events(session: Session, event_type: str) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.type == event_type)))


def _suppressions(session: Session) -> list[tuple[str, str]]:
    return [(r.channel, r.address) for r in session.scalars(select(Suppression))]


def _statuses(session: Session) -> dict[str, tuple[str, str | None]]:
    return {d.template: (d.status, d.detail) for d in session.scalars(select(Delivery))}


def test_a_click_maps_by_delivery_id_and_scores_once_when_the_provider_sends_it_twice(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    click = _event("clicked", clock.now(), delivery_id=delivery_id, url="https://acme.test/a")
    first = _record(sessions, rt, click)
    again = _record(sessions, rt, click)
    assert (first.action, first.delivery_id, first.duplicate) == ("scored", delivery_id, False)
    assert first.track is not None and first.track.points == 6
    assert (again.action, again.duplicate) == ("ignored", True)
    with sessions.begin() as s:
        assert _lead(s).engagement == 16
        assert s.scalar(select(func.count()).where(ScoreEntry.rule == "click")) == 1
        (event,) = _events(s, "email_clicked")
        assert event.properties == {
            "provider": "sendgrid",
            "delivery_id": delivery_id,
            "sequence": "drip",
            "template": "welcome",
            "url": "https://acme.test/a",
        }


def test_an_open_maps_by_the_provider_message_id(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    result = _record(sessions, rt, _event("opened", clock.now(), provider_message_id="msg-1"))
    assert (result.action, result.delivery_id) == ("scored", delivery_id)
    with sessions.begin() as s:
        (event,) = _events(s, "email_opened")
        assert event.properties["template"] == "welcome"
        assert event.source == "sendgrid"


def test_a_sendgrid_message_id_with_its_filter_suffix_maps_to_the_delivery(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    body = json.dumps(
        [
            {
                "email": ANA["email"],
                "timestamp": int(clock.now().timestamp()),
                "event": "open",
                "sg_event_id": "evt-9",
                "sg_message_id": "msg-1.filter0001.123.0",
            }
        ]
    ).encode()
    (event,) = parse_sendgrid_events(body, signature=None, timestamp=None, public_key=None)
    assert _record(sessions, rt, event).delivery_id == delivery_id


@pytest.mark.parametrize(
    ("kind", "event_type"), [("bounced", "bounced"), ("complained", "spam_reported")]
)
def test_a_bounce_or_spam_report_suppresses_the_address_and_skips_the_planned_email(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, kind: str, event_type: str
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    clock.advance(timedelta(days=2))
    run_due(sessions, rt)  # case_study planned
    result = _record(sessions, rt, _event(kind, clock.now(), delivery_id=delivery_id, reason="550"))
    assert result.action == "suppressed"
    with sessions.begin() as s:
        assert not _lead(s).email_consent
        assert _suppressions(s) == [("email", "ana@northwind.test")]
        assert len(_events(s, event_type)) == 1
        assert _statuses(s) == {
            "welcome": ("sent", None),
            "case_study": ("skipped", f"suppressed: {kind}"),
        }


def test_a_blocked_bounce_is_a_failed_send_and_suppresses_nothing(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    blocked = _event(
        "bounced",
        clock.now(),
        delivery_id=delivery_id,
        reason="IP listed",
        detail={"type": "blocked"},
    )
    assert _record(sessions, rt, blocked).action == "failed"
    with sessions.begin() as s:
        assert _lead(s).email_consent and not _suppressions(s)
        assert len(_events(s, "email_failed")) == 1
        assert _statuses(s)["welcome"] == ("sent", "bounced after sending: IP listed")


def test_an_sms_the_carrier_dropped_stays_sent_with_the_reason(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol_to_the_sms_step(sessions, rt, clock)
    _mark_sent(sessions, "quick_question", "SM123")
    failed = _event(
        "failed",
        clock.now(),
        channel=SMS,
        provider="twilio",
        provider_event_id="SM123:undelivered",
        provider_message_id="SM123",
        recipient=ANA["phone"],
        reason="30003: unreachable",
    )
    assert _record(sessions, rt, failed).action == "failed"
    with sessions.begin() as s:
        assert _statuses(s)["quick_question"] == (
            "sent",
            "failed after sending: 30003: unreachable",
        )
        assert _events(s, "sms_failed")[0].properties["reason"] == "30003: unreachable"


def test_stop_withdraws_sms_consent_suppresses_the_phone_and_skips_planned_sms(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol_to_the_sms_step(sessions, rt, clock)
    result = _record(sessions, rt, _inbound("STOP", clock.now(), "SM-stop"))
    assert (result.action, result.delivery_id) == ("opted_out", None)
    with sessions.begin() as s:
        lead = _lead(s)
        assert not lead.sms_consent and lead.email_consent
        assert _suppressions(s) == [("sms", "+15005550001")]
        assert _statuses(s) == {
            "welcome": ("planned", None),
            "case_study": ("planned", None),
            "quick_question": ("skipped", "suppressed: opted_out"),
        }


def test_start_lifts_the_sms_suppression_and_restores_consent(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    _record(sessions, rt, _inbound("STOP", clock.now(), "SM-stop"))
    clock.advance(timedelta(hours=1))
    assert _record(sessions, rt, _inbound("start", clock.now(), "SM-start")).action == "opted_in"
    with sessions.begin() as s:
        assert _lead(s).sms_consent
        assert _suppressions(s) == []
        assert [e.type for e in s.scalars(select(Event).order_by(Event.id))] == [
            "form_submitted",
            "sms_opted_out",
            "sms_opted_in",
        ]


def test_a_sentence_with_stop_in_it_is_a_reply_and_changes_no_consent(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    result = _record(sessions, rt, _inbound("stop please", clock.now(), "SM-reply"))
    assert result.action == "replied"
    with sessions.begin() as s:
        assert _lead(s).sms_consent and not _suppressions(s)
        (event,) = _events(s, "sms_replied")
        assert event.properties == {"provider": "twilio", "body": "stop please"}


@pytest.mark.parametrize(
    ("channel", "kind", "recipient"),
    [(EMAIL, "opened", "nobody@northwind.test"), (SMS, "replied", "+15005559999")],
)
def test_an_event_for_an_unknown_address_changes_nothing(
    sessions: sessionmaker[Session],
    rt: Runtime,
    clock: FrozenClock,
    channel: str,
    kind: str,
    recipient: str,
) -> None:
    _enrol(sessions, rt)
    event = _event(kind, clock.now(), channel=channel, recipient=recipient, delivery_id="no-such")
    result = _record(sessions, rt, event)
    assert result == FeedbackResult(False, None, None, "unknown_recipient")
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Lead)) == 1
        assert s.scalar(select(func.count()).select_from(Event)) == 1  # the form only
        assert not _suppressions(s)
        assert _statuses(s) == {"welcome": ("planned", None)}


@pytest.mark.parametrize(
    ("channel", "kind", "recipient"),
    [(EMAIL, "bounced", "nobody@northwind.test"), (SMS, "opted_out", "+15005559999")],
)
def test_a_refusal_from_an_unknown_address_suppresses_it_once_and_creates_no_lead(
    sessions: sessionmaker[Session],
    rt: Runtime,
    clock: FrozenClock,
    channel: str,
    kind: str,
    recipient: str,
) -> None:
    _enrol(sessions, rt)
    event = _event(kind, clock.now(), channel=channel, recipient=recipient, delivery_id="no-such")
    assert _record(sessions, rt, event) == FeedbackResult(False, None, None, "suppressed")
    assert _record(sessions, rt, event) == FeedbackResult(True, None, None, "suppressed")
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Lead)) == 1
        assert s.scalar(select(func.count()).select_from(Event)) == 1  # the form only
        assert _suppressions(s) == [(channel, recipient)]
        assert _statuses(s) == {"welcome": ("planned", None)}


def test_a_late_click_is_scored_at_the_time_it_happened(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    clock.advance(timedelta(days=3))
    clicked_at = clock.now() - timedelta(days=2)
    _record(sessions, rt, _event("clicked", clicked_at, delivery_id=delivery_id))
    with sessions.begin() as s:
        entry = s.scalars(select(ScoreEntry).where(ScoreEntry.rule == "click")).one()
        assert (entry.occurred_at, entry.recorded_at) == (clicked_at, clock.now())
        assert _lead(s).last_activity_at == clicked_at


def _signed_sendgrid(clock: FrozenClock, **item: Any) -> DeliveryEvent:
    """One event as SendGrid's signed Event Webhook posts it, parsed with its signature checked."""
    signer = SendGridSigner()
    stamp = int(clock.now().timestamp())
    fields = {"email": ANA["email"], "timestamp": stamp, "sg_event_id": "evt-1"} | item
    body = json.dumps([fields]).encode()
    signature = signer.sign(str(stamp), body)
    (event,) = parse_sendgrid_events(
        body, signature=signature, timestamp=str(stamp), public_key=signer.public_key
    )
    return event


@pytest.mark.parametrize(
    ("reason", "event_type"),
    [
        ("Bounced Address", "bounced"),
        ("Invalid", "bounced"),
        ("Spam Reporting Address", "spam_reported"),
        ("Unsubscribed Address", "unsubscribed"),
    ],
)
def test_a_drop_because_of_the_address_suppresses_it_and_skips_the_planned_email(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, reason: str, event_type: str
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    clock.advance(timedelta(days=2))
    run_due(sessions, rt)  # case_study planned
    dropped = _signed_sendgrid(clock, event="dropped", reason=reason, delivery_id=delivery_id)
    assert _record(sessions, rt, dropped).action in ("suppressed", "opted_out")
    with sessions.begin() as s:
        assert not _lead(s).email_consent
        assert _suppressions(s) == [("email", "ana@northwind.test")]
        assert [e.properties["reason"] for e in _events(s, event_type)] == [reason]
        assert _statuses(s)["case_study"][0] == "skipped"


@pytest.mark.parametrize(
    "reason",
    [
        "Invalid SMTPAPI header",
        "Spam Content (if spam checker app enabled)",
        "Recipient List over Package Quota",
    ],
)
def test_a_drop_because_of_the_message_suppresses_nothing(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, reason: str
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_sent(sessions, "welcome", "msg-1")
    clock.advance(timedelta(days=2))
    run_due(sessions, rt)  # case_study planned
    dropped = _signed_sendgrid(clock, event="dropped", reason=reason, delivery_id=delivery_id)
    assert _record(sessions, rt, dropped).action == "failed"
    with sessions.begin() as s:
        assert _lead(s).email_consent and not _suppressions(s)
        assert _statuses(s) == {
            "welcome": ("sent", f"failed after sending: {reason}"),
            "case_study": ("planned", None),
        }


def _mark_unknown(sessions: sessionmaker[Session], template: str) -> str:
    """The send went out and its answer was lost, as `record_failure` records an UNKNOWN error."""
    with sessions.begin() as s:
        delivery = _delivery(s, template)
        delivery.status, delivery.attempts = "unknown", 1
        delivery.detail = "unknown: outcome unknown: TimeoutError; not resent"
        return delivery.id


@pytest.mark.parametrize("event", ["processed", "delivered", "open", "bounce"])
def test_sendgrid_feedback_on_an_unknown_send_settles_it_as_sent_with_the_message_id(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, event: str
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_unknown(sessions, "welcome")
    clock.advance(timedelta(minutes=5))
    feedback = _signed_sendgrid(
        clock, event=event, sg_message_id="msg-7.filter0001.1.0", delivery_id=delivery_id
    )
    assert _record(sessions, rt, feedback).delivery_id == delivery_id
    with sessions.begin() as s:
        delivery = s.get_one(Delivery, delivery_id)
        assert (delivery.status, delivery.provider, delivery.provider_message_id) == (
            "sent",
            "sendgrid",
            "msg-7",
        )
        assert delivery.sent_at == clock.now()


@pytest.mark.parametrize("status", ["queued", "sent", "delivered"])
def test_a_twilio_status_callback_settles_an_unknown_sms_by_the_delivery_id_in_its_url(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, status: str
) -> None:
    _enrol_to_the_sms_step(sessions, rt, clock)
    delivery_id = _mark_unknown(sessions, "quick_question")
    url = f"https://nurture.acme.test/webhooks/twilio/status?delivery_id={delivery_id}"
    params = {"MessageSid": "SM" + "5" * 32, "MessageStatus": status, "To": ANA["phone"]}
    signature = RequestValidator("token").compute_signature(url, params)
    event = parse_twilio_status(url, params, signature, "token", received_at=clock.now())
    assert event is not None
    _record(sessions, rt, event)
    with sessions.begin() as s:
        delivery = s.get_one(Delivery, delivery_id)
        assert (delivery.status, delivery.provider, delivery.provider_message_id) == (
            "sent",
            "twilio",
            "SM" + "5" * 32,
        )


def test_an_accepted_report_settles_a_send_and_records_nothing_for_the_lead(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    delivery_id = _mark_unknown(sessions, "welcome")
    processed = _signed_sendgrid(clock, event="processed", delivery_id=delivery_id)
    assert _record(sessions, rt, processed).action == "settled"
    assert _record(sessions, rt, processed).action == "ignored"  # settled already
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1  # the form only
        assert _statuses(s)["welcome"][0] == "sent"


def test_feedback_never_turns_a_failed_or_skipped_delivery_into_a_sent_one(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt)
    with sessions.begin() as s:
        delivery = _delivery(s, "welcome")
        delivery.status, delivery.detail = "failed", "permanent: sendgrid 400"
        delivery_id = delivery.id
    _record(sessions, rt, _signed_sendgrid(clock, event="delivered", delivery_id=delivery_id))
    with sessions.begin() as s:
        assert _statuses(s)["welcome"] == ("failed", "permanent: sendgrid 400")


# -- a webhook's events together: the same answers and changes as one by one --------------

BEN = {"email": "ben@contoso.test", "phone": "+15005550002", "sms_consent": True}
CY = {"email": "cy@initech.test"}


def _sent_and_planned(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> dict[tuple[str, str], str]:
    """Ana, Ben and Cy fill in the form; two days on, each has the welcome email out (Ana's
    and Cy's sent, Ben's answer lost) and the case study planned. Their delivery ids."""
    with sessions.begin() as s:
        for lead in (ANA, BEN, CY):
            track(s, rt, lead, "form_submitted")
    run_due(sessions, rt)
    clock.advance(timedelta(days=2))
    run_due(sessions, rt)
    with sessions.begin() as s:
        ids = {}
        for delivery in s.scalars(select(Delivery)):
            email = s.get_one(Lead, delivery.lead_id).email
            assert email is not None
            ids[(email, delivery.template)] = delivery.id
            if delivery.template == "welcome":
                delivery.status = "unknown" if email == BEN["email"] else "sent"
                if email != BEN["email"]:
                    delivery.provider, delivery.provider_message_id = "sendgrid", f"msg-{email}"
    return ids


def _sms(kind: str, sid: str, phone: str, at: datetime) -> DeliveryEvent:
    return _event(kind, at, channel=SMS, provider="twilio", provider_event_id=sid, recipient=phone)


def _webhook_batch(ids: dict[tuple[str, str], str], at: datetime) -> list[DeliveryEvent]:
    """A provider's post: opens, clicks, a bounce, duplicates, strangers, an `accepted`."""
    ana, ben, cy = (ids[(lead["email"], "welcome")] for lead in (ANA, BEN, CY))
    stranger = {"recipient": "nobody@northwind.test", "delivery_id": "no-such"}
    return [
        _event("opened", at, provider_event_id="open-a", delivery_id=ana),
        # Ana's address bounces: the case study is skipped as suppressed ...
        _event("bounced", at, provider_event_id="bounce-a", delivery_id=ana, reason="550"),
        # ... before this click moves her to `consideration`, which would skip it otherwise
        _event("clicked", at, provider_event_id="click-a", delivery_id=ana, url="https://a.test"),
        _event("clicked", at, provider_event_id="click-a", delivery_id=ana),  # in this batch
        _event("clicked", at, provider_event_id="click-0", delivery_id=ana),  # an earlier one
        _event(
            "accepted",
            at,
            provider_event_id="processed-b",
            delivery_id=ben,
            provider_message_id="msg-b",
            recipient=BEN["email"],
        ),
        # no delivery id: found by the message id that the `accepted` before it settled
        _event(
            "opened",
            at,
            provider_event_id="open-b",
            provider_message_id="msg-b",
            recipient=BEN["email"],
        ),
        _event("accepted", at, provider_event_id="processed-c", delivery_id=cy),  # sent already
        _event(
            "bounced",
            at,
            provider_event_id="blocked-c",
            delivery_id=cy,
            reason="IP listed",
            detail={"type": "blocked"},
        ),
        *(_event("opened", at, provider_event_id=f"open-c{n}", delivery_id=cy) for n in range(3)),
        _event("opened", at, provider_event_id="open-x", **stranger),
        _event("bounced", at, provider_event_id="bounce-x", **stranger),
        _event("bounced", at, provider_event_id="bounce-x2", **stranger),  # suppressed already
        _sms("opted_out", "SM-stop-b", BEN["phone"], at),
        _sms("replied", "SM-reply-b", BEN["phone"], at),
        _sms("opted_in", "SM-start-b", BEN["phone"], at),
        _event("replied", at, provider_event_id="replied-a", delivery_id=ana),  # not on email
    ]


def _answers(
    results: list[FeedbackResult], ids: dict[tuple[str, str], str]
) -> list[tuple[Any, ...]]:
    """The results with each delivery named by lead and template, not by its random id."""
    names = {delivery_id: key for key, delivery_id in ids.items()}
    return [
        (
            r.duplicate,
            r.lead_id,
            names.get(r.delivery_id or ""),
            r.action,
            r.track and (r.track.duplicate, r.track.points, r.track.stage, r.track.failed),
        )
        for r in results
    ]


def _feedback_state(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """What the feedback changed: leads, events, ledger, suppressions, deliveries, enrolments."""
    with sessions() as s:
        emails = dict(s.execute(select(Lead.id, Lead.email)).all())
        templates = {d.id: (emails[d.lead_id], d.template) for d in s.scalars(select(Delivery))}

        def props(event: Event) -> tuple[tuple[str, Any], ...]:
            named = templates.get(event.properties.get("delivery_id", ""))
            return tuple(sorted((event.properties | {"delivery_id": named}).items()))

        return {
            "leads": {
                lead.email: (lead.stage, lead.engagement, lead.email_consent, lead.sms_consent)
                for lead in s.scalars(select(Lead))
            },
            "events": Counter(
                (emails[e.lead_id], e.type, e.idempotency_key, e.status, props(e))
                for e in s.scalars(select(Event))
            ),
            "ledger": Counter(
                (emails[e.lead_id], e.rule, e.points, e.reason)
                for e in s.scalars(select(ScoreEntry))
            ),
            "suppressions": {
                (r.channel, r.address, r.reason) for r in s.scalars(select(Suppression))
            },
            "deliveries": {
                templates[d.id]: (d.status, d.detail, d.provider, d.provider_message_id, d.sent_at)
                for d in s.scalars(select(Delivery))
            },
            "enrolments": Counter(
                (emails[e.lead_id], e.sequence, e.milestone, e.status)
                for e in s.scalars(select(Enrolment))
            ),
        }


@pytest.fixture
def second_database(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A fresh SQLite database beside the test database, for the same events one by one."""
    engine = make_engine(f"sqlite:///{tmp_path / 'one_by_one.db'}")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_a_webhooks_events_recorded_together_answer_and_change_what_they_would_one_by_one(
    sessions: sessionmaker[Session],
    second_database: sessionmaker[Session],
    rt: Runtime,
) -> None:
    answers = []
    for path, database in (("together", sessions), ("one by one", second_database)):
        clock = FrozenClock(START)  # the same moments on both databases
        rt = Runtime(rt.workflows, clock)
        ids = _sent_and_planned(database, rt, clock)
        at = clock.now()
        welcome = ids[(ANA["email"], "welcome")]
        earlier = _event("clicked", at, provider_event_id="click-0", delivery_id=welcome)
        with database.begin() as s:
            record_delivery_events(s, rt, [earlier])
        batch = _webhook_batch(ids, at)
        if path == "together":
            with database.begin() as s:
                results = record_delivery_events(s, rt, batch)
        else:
            results = [_record(database, rt, event) for event in batch]
        answers.append(_answers(results, ids))
    together, one_by_one = answers
    assert together == one_by_one
    assert [action for _, _, _, action, _ in together] == (
        ["scored", "suppressed", "scored", "ignored", "ignored", "settled", "scored", "ignored"]
        + ["failed", "scored", "scored", "scored", "unknown_recipient", "suppressed"]
        + ["suppressed", "opted_out", "replied", "opted_in", "ignored"]
    )
    assert [duplicate for duplicate, *_ in together].count(True) == 3
    state = _feedback_state(sessions)
    assert state == _feedback_state(second_database)
    assert state["deliveries"][(ANA["email"], "case_study")][:2] == (
        "skipped",
        "suppressed: bounced",
    )
    assert state["deliveries"][(BEN["email"], "welcome")][3] == "msg-b"
    assert state["leads"][ANA["email"]][:3] == ("mql", 22.0, False)


def test_a_bounce_reported_in_another_letter_case_or_in_idna_finds_the_lead(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, {"email": "Jens.Hansen@blåbær.dk"}, "form_submitted")
    bounce = DeliveryEvent(
        kind="bounced",
        channel=EMAIL,
        provider="sendgrid",
        provider_event_id="sg-bounce-1",
        occurred_at=clock.now(),
        delivery_id=None,
        provider_message_id=None,
        recipient="JENS.HANSEN@XN--BLBR-ROAH.DK",
    )
    assert _record(sessions, rt, bounce).action != "unknown_recipient"
    with sessions.begin() as s:
        assert not _lead(s).email_consent
        assert _suppressions(s) == [("email", "jens.hansen@blåbær.dk")]
