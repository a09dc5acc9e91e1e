"""A person with a row in every table that can hold something about them, built through the
engine (events, a sent email, provider feedback, a handoff, a topic left, suppressions) plus
the visitor rows the tracking snippet and the consent a form would write; and a scan of every
column of every table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, select

from channels.base import EMAIL, DeliveryEvent
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.feedback import record_delivery_event
from engine.delivery.sending import send_delivery, suppress
from engine.funnel.service import track
from engine.funnel.topics import TOPIC_EVENT
from engine.models import (
    Base,
    Consent,
    ConsentStatus,
    Delivery,
    Lead,
    Visitor,
    VisitorEvent,
)
from engine.runner.inline import run_due

EMAIL_ADDRESS = "anastasia.quill@northwind-privacy.test"
PHONE = "+15005550987"
EXTERNAL_ID = "crm-7f3a9-anastasia"
FIRST_NAME = "Anastasia"
LAST_NAME = "Quill-Ormsby"
COMPANY = "Zanzibar Lighthouse Works"
FIELD_VALUE = "sails-a-yawl-named-petrichor"
PROPERTY_VALUE = "campaign-ref-99417-quill"
VISITOR_ID = "anon-visitor-5e1d"
IP = "203.0.113.77"
USER_AGENT = "Mozilla/5.0 (QuillOS 9; Lighthouse) Gecko/2026"
# What must not survive an erasure anywhere in the database.
PERSONAL = (
    EMAIL_ADDRESS,
    PHONE,
    EXTERNAL_ID,
    FIRST_NAME,
    LAST_NAME,
    COMPANY,
    FIELD_VALUE,
    PROPERTY_VALUE,
    VISITOR_ID,
    IP,
    USER_AGENT,
)


@dataclass(frozen=True)
class Person:
    """The ids of what `person` built."""

    lead_id: int
    delivery_id: str


def person(app: App, clock: FrozenClock) -> Person:
    """Anastasia: fills in a form, gets an email, clicks it, asks for a demo (SQL:
    a handoff, her enrolment ends), leaves a topic; her phone is STOPped and her email
    suppressed with the provider's words quoting her address; her browser was seen before."""
    who = {
        "email": EMAIL_ADDRESS,
        "phone": PHONE,
        "external_id": EXTERNAL_ID,
        "first_name": FIRST_NAME,
        "last_name": LAST_NAME,
        "company": COMPANY,
        "title": "VP Operations",
        "timezone": "Europe/Berlin",
        "boat": FIELD_VALUE,
    }
    with app.sessions.begin() as session:
        outcome = track(
            session,
            app.rt,
            who,
            "form_submitted",
            {"campaign": PROPERTY_VALUE, "message": f"Hi, {FIRST_NAME} from {COMPANY} here"},
            event_id=f"form:{EMAIL_ADDRESS}",
        )
        lead_id = outcome.lead.id
        session.add(
            Visitor(
                id=VISITOR_ID,
                lead_id=lead_id,
                first_seen_at=clock.now() - timedelta(days=3),
                last_seen_at=clock.now(),
                identified_at=clock.now(),
            )
        )
        session.flush()
        session.add(
            VisitorEvent(
                visitor_id=VISITOR_ID,
                type="page_viewed",
                properties={"url": f"https://acme.test/pricing?ref={PROPERTY_VALUE}"},
                occurred_at=clock.now() - timedelta(days=2),
                received_at=clock.now() - timedelta(days=2),
                idempotency_key=f"snippet:{VISITOR_ID}:1",
                source="snippet",
            )
        )
    run_due(app.sessions, app.rt)
    with app.sessions() as session:
        delivery_id = session.scalars(
            select(Delivery.id)
            .where(Delivery.lead_id == lead_id, Delivery.channel == EMAIL)
            .order_by(Delivery.due_at)
            .limit(1)
        ).one()
    assert send_delivery(app, delivery_id) == "sent"
    clock.advance(timedelta(hours=1))
    with app.sessions.begin() as session:
        clicked = DeliveryEvent(
            kind="clicked",
            channel=EMAIL,
            provider="sendgrid",
            provider_event_id=f"click-{EXTERNAL_ID}",
            occurred_at=clock.now(),
            delivery_id=delivery_id,
            provider_message_id=f"msg-{EXTERNAL_ID}",
            recipient=EMAIL_ADDRESS,
            url=f"https://acme.test/guide?who={EMAIL_ADDRESS}",
        )
        assert record_delivery_event(session, app.rt, clicked).action == "scored"
        track(session, app.rt, {"email": EMAIL_ADDRESS}, TOPIC_EVENT, {"topic": "newsletter"})
        sql = track(
            session, app.rt, {"email": EMAIL_ADDRESS}, "demo_requested", {"note": LAST_NAME}
        )
        assert sql.handoff_id is not None
        now = clock.now()
        suppress(session, "sms", PHONE, f"twilio opted_out: {PHONE} replied STOP", now)
        suppress(session, EMAIL, EMAIL_ADDRESS, f"sendgrid bounced: 550 <{EMAIL_ADDRESS}>", now)
        session.add(
            Consent(
                lead_id=lead_id,
                channel=EMAIL,
                topic="newsletter",
                form="newsletter",
                text="Yes, email me the newsletter.",
                status=ConsentStatus.CONFIRMED,
                ip=IP,
                user_agent=USER_AGENT,
                page_url=f"https://acme.test/subscribe?ref={PROPERTY_VALUE}",
                requested_at=now - timedelta(days=1),
                confirmed_at=now,
                confirm_ip=IP,
                confirm_user_agent=USER_AGENT,
            )
        )
        lead = session.get_one(Lead, lead_id)
        assert lead.fields == {"boat": FIELD_VALUE}
    run_due(app.sessions, app.rt)
    return Person(lead_id, delivery_id)


def personal_data_left(engine: Engine) -> list[tuple[str, str]]:
    """(table, value) for every personal value still found in any column of any row."""
    found = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            text = " ".join(str(tuple(r)) for r in connection.execute(select(table))).lower()
            found.extend((table.name, value) for value in PERSONAL if value.lower() in text)
    return found
