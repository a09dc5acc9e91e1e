"""Merging two leads that are one person: the survivor keeps every row, the ledger still sums
to the score, duplicate runs of one sequence collapse, SQL hands off once, aliases resolve."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.db import make_sessionmaker
from engine.errors import InvalidLeadError
from engine.funnel.leads import Identity, find_lead, lead_by_id
from engine.funnel.service import NewEvent, merge_leads, record, track, upsert_lead
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    Handoff,
    Lead,
    LeadAlias,
    LeadConflict,
    MergeMode,
    ScoreEntry,
    Stage,
)
from engine.runner.inline import run_due
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from tests.conftest import START, _truncate
from tests.engine.conftest import FIXTURES
from tests.shipped import EMAIL_TEMPLATES, SMS_TEMPLATES

ANA = {"email": "Ana@Northwind.test"}
ANA_PHONE = {"phone": "+15005550001"}


def _lead(s: Session, identity: dict[str, str]) -> Lead:
    lead = find_lead(s, Identity.parse(identity))
    assert lead is not None
    return lead


def _ledger(s: Session, lead: Lead) -> float:
    return float(s.scalar(select(func.sum(ScoreEntry.points)).where(ScoreEntry.lead_id == lead.id)))


def test_the_survivor_keeps_both_pasts_and_its_ledger_sums_to_the_joined_score(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**ANA, "first_name": "Ana"}, "form_submitted", event_id="a1")
        track(s, rt, {**ANA_PHONE, "company": "Northwind", "fit_extra": 1}, "content_downloaded")
        track(s, rt, ANA_PHONE, "email_clicked")
    with sessions.begin() as s:
        keep, other = _lead(s, ANA).id, _lead(s, ANA_PHONE).id
        folded, outcome = merge_leads(s, rt, keep, other)

    assert folded.moved["events"] == 2 and folded.aliases == []  # the survivor had no phone
    with sessions() as s:
        (lead,) = s.scalars(select(Lead)).all()
        assert (lead.id, lead.email, lead.phone) == (keep, "Ana@northwind.test", "+15005550001")
        assert (lead.first_name, lead.company) == ("Ana", "Northwind")
        assert s.scalar(select(func.count()).select_from(Event).where(Event.lead_id == keep)) == 3
        assert lead.engagement == pytest.approx(10 + 8 + 6)
        assert _ledger(s, lead) == pytest.approx(lead.score)
        assert lead.stage is Stage.MQL  # 24 points: past the MQL threshold of 20 together
    assert outcome.stage is Stage.MQL


def test_the_merged_leads_identities_still_find_the_survivor_and_its_events_land_there(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**ANA, "phone": "+15005550009"}, "form_submitted")
        track(s, rt, {"email": "ana.private@mail.test", **ANA_PHONE}, "page_viewed")
    with sessions.begin() as s:
        merge_leads(s, rt, _lead(s, ANA).id, _lead(s, ANA_PHONE).id)

    with sessions.begin() as s:
        track(s, rt, {"email": "ANA.PRIVATE@mail.test"}, "email_clicked")
        track(s, rt, ANA_PHONE, "email_clicked")
    with sessions() as s:
        (lead,) = s.scalars(select(Lead)).all()
        assert _lead(s, {"email": "ana.private@mail.test"}).id == lead.id
        assert lead.phone == "+15005550009"  # its own number stays; the other's is an alias
        aliases = {tuple(row) for row in s.execute(select(LeadAlias.field, LeadAlias.value))}
        assert aliases == {
            ("email", "ana.private@mail.test"),
            ("phone", "+15005550001"),
            ("id", "2"),  # links and tokens made for the merged lead
        }
        assert lead_by_id(s, 2) is lead
        assert s.scalar(select(func.count()).select_from(Event)) == 4
        assert _ledger(s, lead) == pytest.approx(lead.score)


def test_the_stricter_consent_wins_where_both_leads_have_an_address_on_the_channel(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        upsert_lead(s, rt, {**ANA, "phone": "+15005550009", "sms_consent": True})
        upsert_lead(s, rt, {**ANA_PHONE, "email": "ana@home.test", "email_consent": False})
    with sessions.begin() as s:
        merge_leads(s, rt, _lead(s, ANA).id, _lead(s, ANA_PHONE).id)
    with sessions() as s:
        lead = _lead(s, ANA)
        assert (lead.email_consent, lead.sms_consent) == (False, False)


def test_an_opt_in_on_a_channel_only_one_lead_has_an_address_on_is_kept(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        upsert_lead(s, rt, ANA)  # no phone: its sms consent is only the default (off)
        upsert_lead(s, rt, {**ANA_PHONE, "sms_consent": True})
    with sessions.begin() as s:
        merge_leads(s, rt, _lead(s, ANA).id, _lead(s, ANA_PHONE).id)
    with sessions() as s:
        lead = _lead(s, ANA)
        assert (lead.phone, lead.email_consent, lead.sms_consent) == ("+15005550001", True, True)


def test_a_stage_taken_from_the_merged_lead_ends_the_survivors_runs(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**ANA, "title": "VP"}, "demo_requested")
        track(s, rt, ANA, "form_submitted")  # 50 and fit 10: handed off
        track(s, rt, ANA_PHONE, "form_submitted")  # enrolled in drip
    with sessions.begin() as s:
        merge_leads(s, rt, _lead(s, ANA_PHONE).id, _lead(s, ANA).id)
    with sessions() as s:
        lead = _lead(s, ANA_PHONE)
        statuses = s.scalars(select(Enrolment.status)).all()
        assert lead.stage is Stage.SQL and set(statuses) == {EnrolmentStatus.EXITED}


def test_two_runs_of_one_sequence_collapse_to_the_one_furthest_along(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")  # enrolled in drip, awareness
        track(s, rt, ANA_PHONE, "form_submitted")
        track(s, rt, ANA_PHONE, "content_downloaded")
        track(s, rt, ANA_PHONE, "email_clicked")  # 24 points: drip's consideration milestone
    with sessions.begin() as s:
        folded, _ = merge_leads(s, rt, _lead(s, ANA).id, _lead(s, ANA_PHONE).id)

    with sessions() as s:
        runs = s.scalars(select(Enrolment).order_by(Enrolment.id)).all()
        assert [(e.milestone, e.status) for e in runs] == [
            ("awareness", EnrolmentStatus.EXITED),
            ("consideration", EnrolmentStatus.ACTIVE),
        ]
        assert runs[0].exit_reason == f"merged: runs on in enrolment {runs[1].id}"
        assert folded.collapsed == [runs[0].id]
        assert {e.lead_id for e in runs} == {folded.survivor}


def test_a_merge_that_crosses_sql_hands_off_once(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**ANA, "title": "VP Sales"}, "demo_requested")  # fit 10 + 30
        track(s, rt, ANA_PHONE, "form_submitted")
        track(s, rt, ANA_PHONE, "content_downloaded")  # 18: neither lead is an SQL alone
    with sessions.begin() as s:
        _, outcome = merge_leads(s, rt, _lead(s, ANA_PHONE).id, _lead(s, ANA).id)

    assert outcome.handoff_id is not None
    with sessions() as s:
        lead = _lead(s, ANA)  # the email is the survivor's now: it had none
        (handoff,) = s.scalars(select(Handoff)).all()
        assert (handoff.lead_id, handoff.crossing, lead.sql_crossings) == (lead.id, 1, 1)
        assert lead.stage is Stage.SQL and _ledger(s, lead) == pytest.approx(58)


def test_two_leads_already_handed_off_keep_both_handoffs_and_make_no_new_one(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        for identity in (ANA, ANA_PHONE):
            track(s, rt, {**identity, "title": "Director"}, "demo_requested")
            track(s, rt, identity, "form_submitted")  # 50 each: handed off
    with sessions.begin() as s:
        _, outcome = merge_leads(s, rt, _lead(s, ANA).id, _lead(s, ANA_PHONE).id)

    assert outcome.handoff_id is None
    with sessions() as s:
        lead = _lead(s, ANA)
        crossings = s.scalars(select(Handoff.crossing).order_by(Handoff.crossing)).all()
        assert (crossings, lead.sql_crossings, lead.stage) == ([1, 2], 2, Stage.SQL)


def test_a_lead_cannot_be_merged_with_itself(sessions: sessionmaker[Session], rt: Runtime) -> None:
    with sessions.begin() as s:
        lead_id = track(s, rt, ANA, "page_viewed").lead_id
    with pytest.raises(InvalidLeadError, match="itself"), sessions.begin() as s:
        merge_leads(s, rt, lead_id, lead_id)


def test_with_merge_auto_the_scheduler_merges_the_younger_lead_into_the_older(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    auto = dataclasses.replace(rt, merge=MergeMode.AUTO)
    with sessions.begin() as s:
        track(s, auto, ANA_PHONE, "content_downloaded")  # the older lead
        track(s, auto, ANA, "form_submitted")
    with sessions.begin() as s:
        outcome = track(s, auto, {**ANA, **ANA_PHONE}, "email_clicked")
    assert outcome.lead_id == 2  # the event is kept on the lead its email names

    run_due(sessions, auto)

    with sessions() as s:
        (lead,) = s.scalars(select(Lead)).all()
        assert (lead.id, lead.email, lead.phone) == (1, "Ana@northwind.test", "+15005550001")
        assert lead.engagement == pytest.approx(24) and _ledger(s, lead) == pytest.approx(24)
        assert s.scalars(select(LeadConflict)).all() == []


def test_a_batch_naming_one_leads_identity_for_several_leads_keeps_every_event(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    auto = dataclasses.replace(rt, merge=MergeMode.AUTO)
    with sessions.begin() as s:
        track(s, auto, {"email": "a@x.test", "phone": "+15005550001"}, "page_viewed")
        track(s, auto, {"email": "b@x.test"}, "page_viewed")
    batch = [
        NewEvent({"email": "a@x.test"}, "email_clicked"),
        NewEvent({"email": "c@x.test", "phone": "+15005550001"}, "form_submitted"),
        NewEvent({"email": "b@x.test", "phone": "+15005550002"}, "form_submitted"),
        NewEvent({"email": "c@x.test", "phone": "+15005550002"}, "content_downloaded"),
    ]
    with sessions.begin() as s:
        record(s, auto, batch)
    run_due(sessions, auto)

    with sessions() as s:
        (lead,) = s.scalars(select(Lead)).all()  # a, b and c were one person
        assert s.scalar(select(func.count()).select_from(Event)) == 6
        assert _ledger(s, lead) == pytest.approx(lead.score)
        assert s.scalars(select(LeadConflict)).all() == []


# --- Concurrency (PostgreSQL) -------------------------------------------------------------------

KINDS = ("form_submitted", "content_downloaded", "email_clicked", "page_viewed", "demo_requested")


def _threads(*work: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(phone_survives=False, ana=["form_submitted"], phone=["content_downloaded"])
@given(
    phone_survives=st.booleans(),
    ana=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
    phone=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
)
def test_merging_while_events_arrive_for_both_leads_loses_nothing_and_hands_off_at_most_once(
    postgres_engine: Engine, phone_survives: bool, ana: list[str], phone: list[str]
) -> None:
    _truncate(postgres_engine)
    sessions = make_sessionmaker(postgres_engine)
    clock = FrozenClock(START)
    rt = Runtime(load_workflows(FIXTURES, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
    with sessions.begin() as s:
        track(s, rt, {**ANA, "title": "VP"}, "page_viewed")
        track(s, rt, ANA_PHONE, "page_viewed")
        ids = [_lead(s, ANA).id, _lead(s, ANA_PHONE).id]
    keep, other = reversed(ids) if phone_survives else ids

    def send(identity: dict[str, str], kinds: list[str]) -> Callable[[], None]:
        def job() -> None:
            for kind in kinds:
                with sessions.begin() as s:
                    track(s, rt, identity, kind)

        return job

    def merge() -> None:
        with sessions.begin() as s:
            merge_leads(s, rt, keep, other)

    clock.advance(timedelta(minutes=1))  # what is planned from here on is the merged lead's
    _threads(send(ANA, ana), send(ANA_PHONE, phone), merge)
    for _ in range(4):  # the steps of the days after: each planned once
        run_due(sessions, rt)
        clock.advance(timedelta(days=1))

    with sessions() as s:
        (lead,) = s.scalars(select(Lead)).all()
        assert lead.id == keep
        assert s.scalar(select(func.count()).select_from(Event)) == 2 + len(ana) + len(phone)
        assert _ledger(s, lead) == pytest.approx(lead.score)
        crossings = s.scalars(select(Handoff.crossing).order_by(Handoff.crossing)).all()
        assert crossings == list(range(1, lead.sql_crossings + 1)) and len(crossings) <= 2
        assert (lead.stage is Stage.SQL) == bool(crossings)
        running = s.scalars(
            select(Enrolment.sequence).where(Enrolment.status == EnrolmentStatus.ACTIVE)
        ).all()
        assert len(running) == len(set(running))  # one run per sequence: no step sent twice
        planned = s.execute(
            select(Delivery.sequence, Delivery.milestone, Delivery.step).where(
                Delivery.planned_at > START, Delivery.status != DeliveryStatus.SKIPPED
            )
        ).all()
        assert len(planned) == len(set(planned)), planned


def test_an_event_naming_an_alias_whose_lead_is_merged_on_meanwhile_lands_on_the_survivor(
    postgres_engine: Engine, clock: FrozenClock
) -> None:
    _truncate(postgres_engine)
    sessions = make_sessionmaker(postgres_engine)
    rt = Runtime(load_workflows(FIXTURES, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
    with sessions.begin() as s:
        for email in ("y@x.test", "x@x.test", "old@x.test"):
            upsert_lead(s, rt, {"email": email})
    with sessions.begin() as s:
        merge_leads(s, rt, 2, 3)  # old@ is an alias of x@ (lead 2)
    merging = sessions()
    merging.begin()
    merge_leads(merging, rt, 1, 2)  # holds both locks, the alias moved to lead 1, uncommitted

    def event() -> None:
        with sessions.begin() as s:
            track(s, rt, {"email": "old@x.test"}, "page_viewed")

    waiting = threading.Thread(target=event)
    waiting.start()
    waiting.join(timeout=1.0)  # it read the alias naming lead 2 and waits for its lock
    merging.commit()
    merging.close()
    waiting.join(timeout=30)

    with sessions() as s:
        assert s.scalars(select(Lead.id)).all() == [1]  # no second lead for old@
        assert s.scalars(select(Event.lead_id)).all() == [1]
