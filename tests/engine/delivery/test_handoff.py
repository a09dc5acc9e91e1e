"""Handoff delivery to the CRM: signed, idempotent, retried with backoff until acknowledged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.delivery.handoff import HandoffAttempt, claim_due_handoffs, deliver_handoff
from engine.delivery.process import CrmTarget
from engine.funnel.lifecycle import HANDOFF_GRACE
from engine.funnel.service import track
from engine.models import Handoff
from engine.workflow.runtime import Runtime
from tests.channels.servers import Reply
from tests.crm import CrmReceiver

VP = {"email": "vp@northwind.test", "title": "VP Engineering", "first_name": "Vera"}


@pytest.fixture
def crm() -> Iterator[CrmReceiver]:
    with CrmReceiver() as receiver:
        yield receiver


def _deliver(
    sessions: sessionmaker[Session], rt: Runtime, url: str, secret: str, handoff_id: int
) -> HandoffAttempt:
    return deliver_handoff(sessions, rt, CrmTarget(url, secret), handoff_id)


def _cross(sessions: sessionmaker[Session], rt: Runtime) -> int:
    with sessions.begin() as s:
        track(s, rt, VP, "demo_requested")
        result = track(s, rt, VP, "form_submitted")
        assert result.handoff_id is not None
        return result.handoff_id


def test_a_handoff_is_posted_signed_with_the_lead_score_and_reasons(
    sessions: sessionmaker[Session], rt: Runtime, crm: CrmReceiver
) -> None:
    handoff_id = _cross(sessions, rt)
    assert _deliver(sessions, rt, crm.endpoint, "crm-secret", handoff_id) == "delivered"
    (document,) = crm.received
    assert document["lead"]["email"] == "vp@northwind.test"
    assert document["lead"]["first_name"] == "Vera"
    assert document["score"]["total"] == 50
    assert document["reasons"]["threshold"] == "score >= 50 and fit >= 10"
    assert crm.keys == [f"handoff-{handoff_id}"]
    assert _deliver(sessions, rt, crm.endpoint, "crm-secret", handoff_id) == "delivered"
    assert len(crm.received) == 1  # delivered handoffs are never posted again


def test_the_scheduler_leaves_a_fresh_handoff_to_the_worker_that_made_it(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    handoff_id = _cross(sessions, rt)
    with sessions.begin() as s:
        assert claim_due_handoffs(s, clock.now(), 10) == []  # its creator is delivering it
    clock.advance(HANDOFF_GRACE)
    with sessions.begin() as s:
        assert claim_due_handoffs(s, clock.now(), 10) == [handoff_id]  # that message was lost


def test_a_failing_crm_is_retried_with_growing_backoff_until_it_acknowledges(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, crm: CrmReceiver
) -> None:
    handoff_id = _cross(sessions, rt)
    crm.then(Reply.json(500, {}), Reply.json(503, {}))
    assert _deliver(sessions, rt, crm.endpoint, "crm-secret", handoff_id) == "retry"
    with sessions.begin() as s:
        assert claim_due_handoffs(s, clock.now(), 10) == []  # backing off
        first_wait = s.get_one(Handoff, handoff_id).next_attempt_at - clock.now()
    clock.advance(first_wait)
    with sessions.begin() as s:
        assert claim_due_handoffs(s, clock.now(), 10) == [handoff_id]
    assert _deliver(sessions, rt, crm.endpoint, "crm-secret", handoff_id) == "retry"
    with sessions.begin() as s:
        assert s.get_one(Handoff, handoff_id).next_attempt_at - clock.now() == first_wait * 2
    clock.advance(first_wait * 2)
    assert _deliver(sessions, rt, crm.endpoint, "crm-secret", handoff_id) == "delivered"
    with sessions.begin() as s:
        handoff = s.scalars(select(Handoff)).one()
        assert (handoff.status, handoff.attempts) == ("delivered", 3)
    assert len(crm.received) == 1


def test_a_wrong_secret_is_refused_by_the_receiver_and_retried(
    sessions: sessionmaker[Session], rt: Runtime, crm: CrmReceiver
) -> None:
    handoff_id = _cross(sessions, rt)
    assert _deliver(sessions, rt, crm.endpoint, "wrong", handoff_id) == "retry"
    assert crm.received == []


def test_an_unreachable_crm_is_retried(sessions: sessionmaker[Session], rt: Runtime) -> None:
    handoff_id = _cross(sessions, rt)
    assert _deliver(sessions, rt, "http://127.0.0.1:9/handoffs", "s", handoff_id) == "retry"


def test_owners_are_assigned_by_rule_first_then_in_rotation(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    from engine.workflow.conditions import parse
    from engine.workflow.spec import Assignment, OwnerRule

    routed = Runtime(
        rt.workflows,
        rt.clock,
        Assignment(
            owners=("ann@acme.test", "bob@acme.test"),
            rules=(OwnerRule(parse("company == 'Globex'"), "enterprise@acme.test"),),
        ),
    )
    owners = []
    for index, company in enumerate(["Initech", "Globex", "Hooli", "Umbrella"]):
        lead = {"email": f"vp{index}@x{index}.test", "title": "VP Sales", "company": company}
        with sessions.begin() as s:
            track(s, routed, lead, "demo_requested")
            handoff_id = track(s, routed, lead, "form_submitted").handoff_id
            owners.append(s.get_one(Handoff, handoff_id).owner)
    assert owners == ["ann@acme.test", "enterprise@acme.test", "ann@acme.test", "bob@acme.test"]


def test_the_assigned_owner_is_emailed_once_with_who_and_why(
    sessions: sessionmaker[Session], rt: Runtime, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import email
    import email.policy

    from channels.outbox import OutboxChannel
    from engine.delivery.handoff import notify_owner
    from engine.workflow.spec import Assignment

    routed = Runtime(
        rt.workflows, rt.clock, Assignment(owners=("ann@acme.test",), notify_owner=True)
    )
    with sessions.begin() as s:
        track(s, routed, VP, "demo_requested")
        handoff_id = track(s, routed, VP, "form_submitted").handoff_id
    outbox = OutboxChannel(tmp_path, "email", rt.clock)
    assert notify_owner(sessions, routed, outbox, "nurture@acme.test", handoff_id) is True
    assert notify_owner(sessions, routed, outbox, "nurture@acme.test", handoff_id) is False
    (path,) = (tmp_path / "email").glob("*.eml")
    note = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert note["To"] == "ann@acme.test"
    assert note["Subject"] == "New sales-qualified lead: Vera"
    text = note.get_body(("plain",)).get_content()
    assert "score 50 (fit 10, engagement 40)" in text and "demo: +30" in text
