"""The export of one lead on SQLite and PostgreSQL: every kind of row held about it, each with
all its columns, and after an erasure what the tombstone still holds."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, select

from engine.clock import FrozenClock
from engine.funnel.erasure import erase_lead
from engine.models import Enrolment, ErasureReason, VersionMove
from engine.read.export import export_lead
from engine.read.views import find_by_key
from tests.apps import outbox_app
from tests.engine.privacy import (
    COMPANY,
    EMAIL_ADDRESS,
    FIELD_VALUE,
    PHONE,
    PROPERTY_VALUE,
    VISITOR_ID,
    person,
)


def test_the_export_holds_every_kind_of_row_about_the_lead_with_all_its_columns(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = outbox_app(db, clock, tmp_path)
    anastasia = person(app, clock)
    with app.sessions.begin() as session:
        enrolment = session.scalars(select(Enrolment)).first()
        assert enrolment is not None
        session.add(
            VersionMove(
                enrolment_id=enrolment.id,
                from_version="v1",
                to_version="v2",
                from_place="awareness/welcome",
                to_place="awareness/welcome",
                note="moved by apply",
                moved_at=clock.now(),
            )
        )

    with app.sessions() as session:
        document = export_lead(session, find_by_key(session, EMAIL_ADDRESS), clock.now())

    json.dumps(document)  # plain JSON throughout
    lead = document["lead"]
    assert (lead["id"], lead["email"], lead["phone"], lead["company"]) == (
        anastasia.lead_id,
        EMAIL_ADDRESS,
        PHONE,
        COMPANY,
    )
    assert lead["fields"] == {"boat": FIELD_VALUE}
    assert {"stage", "fit", "engagement", "score", "email_consent", "created_at"} <= set(lead)
    assert {"form_submitted", "email_clicked", "demo_requested"} <= {
        e["type"] for e in document["events"]
    }
    form = next(e for e in document["events"] if e["type"] == "form_submitted")
    assert form["properties"]["campaign"] == PROPERTY_VALUE
    assert form["idempotency_key"] == f"form:{EMAIL_ADDRESS}"
    assert document["score_ledger"] and document["stage_changes"]
    exported = next(e for e in document["enrolments"] if e["id"] == enrolment.id)
    assert exported["milestone_visits"] and exported["version_moves"][0]["note"] == "moved by apply"
    sent = next(d for d in document["deliveries"] if d["id"] == anastasia.delivery_id)
    assert sent["status"] == "sent" and sent["subject"]
    assert document["handoffs"][0]["reasons"]["recent_activity"]
    assert [t["topic"] for t in document["topic_opt_outs"]] == ["newsletter"]
    assert {(s["channel"], s["address"]) for s in document["suppressions"]} == {
        ("email", EMAIL_ADDRESS),
        ("sms", PHONE),
    }
    (visitor,) = document["visitors"]
    assert visitor["id"] == VISITOR_ID and visitor["events"][0]["type"] == "page_viewed"
    assert document["erasures"] == []


def test_the_export_of_an_erased_lead_shows_its_tombstone_and_the_erasure(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = outbox_app(db, clock, tmp_path)
    anastasia = person(app, clock)
    with app.sessions.begin() as session:
        erase_lead(session, app.rt, anastasia.lead_id, ErasureReason.REQUEST, "api")

    with app.sessions() as session:
        document = export_lead(session, find_by_key(session, str(anastasia.lead_id)), clock.now())

    assert document["lead"]["email"] is None
    assert document["lead"]["erased_at"] == clock.now().isoformat()
    assert document["visitors"] == [] and document["suppressions"] == []
    (erasure,) = document["erasures"]
    assert (erasure["reason"], erasure["via"]) == ("request", "api")
