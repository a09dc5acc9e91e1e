"""What a merge leaves behind, on SQLite and PostgreSQL: links, tokens and provider feedback
naming the merged lead act on the survivor; an erasure of the survivor takes the merged lead's
identities and its conflicts along; an access export shows them."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import EMAIL, SMS, DeliveryEvent
from engine.app import App
from engine.clock import FrozenClock
from engine.db import make_sessionmaker
from engine.delivery.feedback import FeedbackResult, record_delivery_events
from engine.delivery.sending import suppress
from engine.delivery.unsubscribe import make_token
from engine.funnel.erasure import erase_lead, hashed_address
from engine.funnel.leads import Identity, find_lead
from engine.funnel.service import merge_leads, track, upsert_lead
from engine.http.api import create_api
from engine.models import (
    Delivery,
    ErasureReason,
    Event,
    Lead,
    LeadAlias,
    LeadConflict,
    Suppression,
    TopicOptOut,
    Visitor,
)
from engine.read.export import export_lead
from engine.read.views import find_by_key
from engine.runner.inline import run_due
from engine.signing import lead_token
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from tests.apps import outbox_app
from tests.conftest import _truncate
from tests.engine.conftest import FIXTURES
from tests.shipped import EMAIL_TEMPLATES, SMS_TEMPLATES

SURVIVOR = {"email": "ana@northwind.test", "phone": "+15005550001", "external_id": "crm-ana"}
MERGED = {"email": "Ana.Private@Mail.test", "phone": "+15005550002", "external_id": "crm-old"}
THIRD = {"email": "bo@northwind.test", "phone": "+15005550003", "external_id": "crm-bo"}
MERGED_EMAIL = "ana.private@mail.test"  # the alias: the lower-cased key
SECRET = "merge-followups-secret-0123456789abcdef"
KEY = "merge-followups-key-0123456789abcdef-0123"
SITE = "https://www.acme.test"
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""}


def _id(s: Session, identity: dict[str, str]) -> int:
    lead = find_lead(s, Identity.parse(identity))
    assert lead is not None
    return lead.id


def _merged(sessions: sessionmaker[Session], rt: Runtime, **extra: object) -> tuple[int, int]:
    """The survivor and the merged lead (gone now) of two leads with an address each on
    both channels, so the merged lead's email, phone and external id are left as aliases."""
    with sessions.begin() as s:
        upsert_lead(s, rt, {**SURVIVOR, **extra})
        upsert_lead(s, rt, {**MERGED, **extra})
    with sessions.begin() as s:
        keep, other = _id(s, SURVIVOR), _id(s, MERGED)
        merge_leads(s, rt, keep, other)
    return keep, other


def _count(s: Session, model: type[object]) -> int:
    return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _events_of(s: Session, lead_id: int) -> list[int]:
    return list(s.scalars(select(Event.id).where(Event.lead_id == lead_id).order_by(Event.id)))


# --- Erasure -------------------------------------------------------------------------------------


def _conflicted(sessions: sessionmaker[Session], rt: Runtime) -> tuple[int, int, int]:
    """The merged pair plus a third lead named together with the survivor both ways, and a
    bounce of the merged lead's address quoting it."""
    with sessions.begin() as s:
        upsert_lead(s, rt, THIRD)
    keep, other = _merged(sessions, rt)
    with sessions.begin() as s:
        track(s, rt, {"email": SURVIVOR["email"], "phone": THIRD["phone"]}, "page_viewed")
        track(s, rt, {"email": THIRD["email"], "external_id": MERGED["external_id"]}, "page_viewed")
        reason = f"sendgrid bounced: {MERGED_EMAIL} does not exist"
        suppress(s, EMAIL, MERGED_EMAIL, reason, rt.clock.now())
        third = _id(s, THIRD)
        assert _count(s, LeadConflict) == 2
    return keep, other, third


def test_erasing_the_survivor_removes_the_merged_leads_identities_and_its_conflicts(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    keep, _, third = _conflicted(sessions, rt)

    with sessions.begin() as s:
        done = erase_lead(s, rt, keep, ErasureReason.REQUEST, "cli")

    removed = done.summary["removed"]  # aliases: email, phone, external id and id
    assert (removed["lead_aliases"], removed["lead_conflicts"]) == (4, 2)
    with sessions() as s:
        assert _count(s, LeadAlias) == 0 and _count(s, LeadConflict) == 0
        (suppression,) = s.scalars(select(Suppression)).all()
        assert (suppression.address, suppression.reason) == (
            hashed_address(MERGED_EMAIL),
            "sendgrid bounced",
        )
        assert s.get_one(Lead, third).email == THIRD["email"]  # the other side is untouched


def test_after_erasing_the_survivor_the_merged_leads_old_email_makes_a_new_lead(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    keep, _, _ = _conflicted(sessions, rt)
    with sessions.begin() as s:
        erase_lead(s, rt, keep, ErasureReason.REQUEST, "cli")
        erased_with = _events_of(s, keep)

    with sessions.begin() as s:
        back = track(s, rt, {"email": MERGED_EMAIL}, "form_submitted").lead_id
        by_phone = track(s, rt, {"phone": MERGED["phone"]}, "page_viewed").lead_id

    assert keep not in (back, by_phone) and back != by_phone
    with sessions() as s:
        tombstone = s.get_one(Lead, keep)
        assert tombstone.erased_at is not None and tombstone.email is None
        fresh = s.get_one(Lead, back)
        assert (fresh.email_key, fresh.erased_at) == (MERGED_EMAIL, None)
        assert s.get_one(Lead, by_phone).phone == MERGED["phone"]
        assert _events_of(s, keep) == erased_with  # nothing more landed on the tombstone


# --- Provider feedback ---------------------------------------------------------------------------


def _inbound(kind: str, sid: str, body: str, rt: Runtime) -> DeliveryEvent:
    """An inbound SMS from the merged lead's number, written as a person dials it."""
    return DeliveryEvent(
        kind=kind,
        channel=SMS,
        provider="twilio",
        provider_event_id=sid,
        occurred_at=rt.clock.now(),
        delivery_id=None,
        provider_message_id=None,
        recipient="+1 (500) 555-0002",
        body=body,
    )


def test_an_inbound_reply_and_stop_from_the_merged_leads_number_land_on_the_survivor(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    keep, _ = _merged(sessions, rt, sms_consent=True)
    events = [
        _inbound("replied", "SM-reply", "who is this?", rt),
        _inbound("opted_out", "SM-stop", "STOP", rt),
    ]

    with sessions.begin() as s:
        answers = record_delivery_events(s, rt, events)

    assert [(a.action, a.lead_id) for a in answers] == [("replied", keep), ("opted_out", keep)]
    with sessions() as s:
        survivor = s.get_one(Lead, keep)
        assert (survivor.sms_consent, survivor.email_consent) == (False, True)
        suppressed = [
            tuple(row) for row in s.execute(select(Suppression.channel, Suppression.address))
        ]
        assert suppressed == [("sms", MERGED["phone"])]
        kinds = s.scalars(select(Event.type).where(Event.lead_id == keep, Event.source == "twilio"))
        assert sorted(kinds) == ["sms_opted_out", "sms_replied"]
        assert _count(s, Lead) == 1


def test_a_bounce_of_the_merged_leads_address_suppresses_it_alone(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    keep, _ = _merged(sessions, rt)
    bounce = DeliveryEvent(
        kind="bounced",
        channel=EMAIL,
        provider="sendgrid",
        provider_event_id="evt-bounce",
        occurred_at=rt.clock.now(),
        delivery_id=None,
        provider_message_id=None,
        recipient=MERGED["email"],
    )

    with sessions.begin() as s:
        (answer,) = record_delivery_events(s, rt, [bounce])

    assert (answer.action, answer.lead_id) == ("suppressed", keep)
    with sessions() as s:  # the survivor's own address still takes mail
        assert s.get_one(Lead, keep).email_consent is True
        assert s.scalars(select(Suppression.address)).all() == [MERGED_EMAIL]


def test_a_provider_event_for_an_address_whose_lead_is_merged_on_twice_meanwhile_is_kept(
    postgres_engine: Engine, clock: FrozenClock
) -> None:
    _truncate(postgres_engine)
    sessions = make_sessionmaker(postgres_engine)
    rt = Runtime(load_workflows(FIXTURES, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
    with sessions.begin() as s:
        for email in ("z@x.test", "y@x.test", "x@x.test", "old@x.test"):
            upsert_lead(s, rt, {"email": email})
    with sessions.begin() as s:
        merge_leads(s, rt, 3, 4)  # old@ names lead 3
    first = sessions()
    first.begin()
    merge_leads(first, rt, 2, 3)  # holds leads 2 and 3; old@ names 2 once it commits
    answers: list[FeedbackResult] = []
    second_may_commit = threading.Event()

    def opened() -> None:
        event = DeliveryEvent(
            kind="opened",
            channel=EMAIL,
            provider="sendgrid",
            provider_event_id="evt-open",
            occurred_at=rt.clock.now(),
            delivery_id=None,
            provider_message_id=None,
            recipient="old@x.test",
        )
        with sessions.begin() as s:
            answers.extend(record_delivery_events(s, rt, [event]))

    def second() -> None:
        with sessions.begin() as s:
            merge_leads(s, rt, 1, 2)  # waits for the first, then holds leads 1 and 2
            second_may_commit.wait(30)

    feedback, merging = threading.Thread(target=opened), threading.Thread(target=second)
    feedback.start()
    feedback.join(timeout=0.5)  # waiting for lead 3
    merging.start()
    merging.join(timeout=0.5)  # waiting for lead 2
    first.commit()
    first.close()
    feedback.join(timeout=1.0)  # read old@ as lead 2's again, and waits for it
    second_may_commit.set()
    merging.join(timeout=30)
    feedback.join(timeout=30)

    assert [answer.lead_id for answer in answers] == [1]
    with sessions() as s:
        assert s.scalars(select(Event.lead_id).where(Event.type == "email_opened")).all() == [1]


# --- Access export -------------------------------------------------------------------------------


def test_the_export_shows_the_merged_leads_identities_conflicts_and_their_suppressions(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    keep, other, third = _conflicted(sessions, rt)

    with sessions() as s:
        document = export_lead(s, s.get_one(Lead, keep), rt.clock.now())

    json.dumps(document)
    aliases = {(a["field"], a["value"], a["merged_lead"]) for a in document["aliases"]}
    assert aliases == {
        ("email", MERGED_EMAIL, other),
        ("phone", MERGED["phone"], other),
        ("external_id", MERGED["external_id"], other),
        ("id", str(other), other),
    }
    assert all(a["merged_at"] == rt.clock.now().isoformat() for a in document["aliases"])
    conflicts = {(c["lead_id"], c["other_id"], c["field"]) for c in document["conflicts"]}
    assert conflicts == {(keep, third, "phone"), (third, keep, "external_id")}
    assert [(s["channel"], s["address"]) for s in document["suppressions"]] == [
        ("email", MERGED_EMAIL)
    ]


# --- Links and tokens over HTTP ------------------------------------------------------------------


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(
        db,
        clock,
        tmp_path,
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_PUBLIC_URL="https://nurture.acme.test",
        NURTURE_SITE_ORIGINS=SITE,
    )


@pytest.fixture
def client(nurture: App) -> TestClient:
    api = create_api(nurture, None, api_keys=[KEY], environ={})
    return TestClient(api, follow_redirects=False)


@pytest.mark.parametrize("choice", ["all", "topic"])
def test_an_unsubscribe_link_made_for_the_merged_lead_unsubscribes_the_survivor(
    nurture: App, client: TestClient, choice: str
) -> None:
    keep, other = _merged(nurture.sessions, nurture.rt)
    token = make_token(SECRET, other, "product-news")

    answer = client.post(f"/u/{token}", content=f"choice={choice}".encode(), headers=FORM)

    assert answer.status_code == 200, answer.text
    with nurture.sessions() as s:
        survivor = s.get_one(Lead, keep)
        kinds = s.scalars(
            select(Event.type).where(Event.lead_id == keep, Event.source == "unsubscribe")
        ).all()
        addresses = s.scalars(select(Suppression.address)).all()
        topics = [tuple(row) for row in s.execute(select(TopicOptOut.lead_id, TopicOptOut.topic))]
    if choice == "all":
        assert survivor.email_consent is False and addresses == [SURVIVOR["email"]]
        assert kinds == ["unsubscribed"]
    else:
        assert survivor.email_consent is True and addresses == []
        assert kinds == ["topic_unsubscribed"] and topics == [(keep, "product-news")]


def test_a_tracked_links_lead_token_for_the_merged_lead_identifies_the_survivor(
    nurture: App, client: TestClient
) -> None:
    keep, other = _merged(nurture.sessions, nurture.rt)
    beacon = {
        "visitor": "3f0c6a53-1b9e-4f7e-9a55-7d2f0c1e9b21",
        "sent": 1_000_000,
        "events": [],
        "lead_token": lead_token(SECRET, other, nurture.rt.clock.now()),
    }
    headers = {"Origin": SITE, "Content-Type": "text/plain;charset=UTF-8"}

    assert client.post("/t/collect", content=json.dumps(beacon), headers=headers).status_code == 204

    with nurture.sessions() as s:
        assert s.scalars(select(Visitor.lead_id)).all() == [keep]


def _sign_in(client: TestClient) -> None:
    form = client.get("/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found
    answer = client.post("/login", data={"csrf": found.group(1), "key": KEY, "next": "/"})
    assert answer.status_code == 303


def test_the_dashboard_and_lookups_by_the_merged_leads_id_lead_to_the_survivor(
    nurture: App, client: TestClient
) -> None:
    with nurture.sessions.begin() as s:
        track(s, nurture.rt, MERGED, "form_submitted")  # the drip plans its welcome
    run_due(nurture.sessions, nurture.rt)
    keep, other = _merged(nurture.sessions, nurture.rt)
    with nurture.sessions() as s:
        delivery = s.scalars(select(Delivery.id)).first()
        assert find_by_key(s, str(other)).id == keep
    _sign_in(client)

    page = client.get(f"/leads/{other}")
    sent = client.get(f"/leads/{other}/deliveries/{delivery}")

    assert (page.status_code, page.headers["location"]) == (303, f"/leads/{keep}")
    assert (sent.status_code, sent.headers["location"]) == (
        303,
        f"/leads/{keep}/deliveries/{delivery}",
    )
    assert client.get(f"/leads/{keep}/deliveries/{delivery}").status_code == 200
    assert client.get(f"/leads/{other + 1000}").status_code == 404
