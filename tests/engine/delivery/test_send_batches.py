"""Sends in batches: one commit marks a batch `sending` before any provider call, one records
the answers; the guards hold across the batch and a death mid-batch sends nothing twice."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import SendResult
from channels.outbox import OutboxChannel
from engine.clock import FrozenClock
from engine.delivery.pacing import LocalPacer
from engine.delivery.sending import expire_stuck, send_deliveries
from engine.errors import ChannelError
from engine.funnel.service import track
from engine.models import Delivery, DeliveryStatus
from engine.runner.inline import run_due
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Cap, SendPolicy
from tests.engine.delivery.test_sending import LEAD, Sender

LEADS = [{"email": f"lead{n}@umbrella.test", "first_name": f"L{n}"} for n in range(3)]


class DiesOnSecond(OutboxChannel):
    """Writes each message, and the process dies right after handing over the second."""

    def send(self, message: Any) -> SendResult:
        result = super().send(message)
        if len(list((self.directory / "email").glob("*.eml"))) == 2:
            raise KeyboardInterrupt
        return result


class BrokenOnSecond(OutboxChannel):
    """An adapter with a bug that shows on its second message."""

    def send(self, message: Any) -> SendResult:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise ValueError("adapter bug")
        return super().send(message)


@pytest.fixture
def sender(sessions: sessionmaker[Session], rt: Runtime, tmp_path: Path) -> Sender:
    return Sender(sessions, rt, tmp_path / "outbox", SendPolicy())


def _planned(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        query = select(Delivery.id).where(Delivery.status == DeliveryStatus.PLANNED)
        return list(s.scalars(query.order_by(Delivery.lead_id)))


def _statuses(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(Delivery.status).order_by(Delivery.lead_id)))


def _welcome_for_each(sessions: sessionmaker[Session], rt: Runtime) -> list[str]:
    for lead in LEADS:
        with sessions.begin() as s:
            track(s, rt, lead, "form_submitted")
    run_due(sessions, rt)
    return _planned(sessions)


def test_a_batch_that_dies_mid_way_never_sends_any_of_its_messages_again(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    sender.channels = {"email": DiesOnSecond(sender.outbox, "email", rt.clock)}
    ids = _welcome_for_each(sessions, rt)
    with pytest.raises(KeyboardInterrupt):
        send_deliveries(sender, ids)
    assert _statuses(sessions) == ["sending"] * 3  # marked before the first provider call
    clock.advance(timedelta(hours=1))  # past the lease: the sweep calls them unknown
    with sessions.begin() as s:
        assert expire_stuck(s, clock.now()) == 3
    sender.channels = {"email": OutboxChannel(sender.outbox, "email", rt.clock)}
    assert sender.due() == []  # nothing planned: nothing is sent again
    assert send_deliveries(sender, ids) == ["not sent"] * 3  # a redelivered message
    assert _statuses(sessions) == ["unknown"] * 3
    assert len(list((sender.outbox / "email").glob("*.eml"))) == 2


def test_an_adapter_bug_on_one_message_makes_it_unknown_and_sends_the_rest(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    sender.channels = {"email": BrokenOnSecond(sender.outbox, "email", rt.clock)}
    ids = _welcome_for_each(sessions, rt)
    assert send_deliveries(sender, ids) == ["sent", "unknown", "sent"]
    assert _statuses(sessions) == ["sent", "unknown", "sent"]


def test_a_frequency_cap_holds_between_two_sends_to_one_lead_in_one_batch(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    sender = Sender(
        sessions, rt, tmp_path, SendPolicy(caps={"email": Cap(count=1, per=timedelta(days=3))})
    )
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    run_due(sessions, sender.rt)
    (welcome,) = _planned(sessions)
    with sessions.begin() as s:  # a second email due at the same moment, from another step
        first = s.get_one(Delivery, welcome)
        twin = Delivery(
            **{
                c: getattr(first, c)
                for c in ("enrolment_id", "lead_id", "sequence", "milestone", "pass_no")
            },
            id=str(uuid.uuid4()),
            step="twin",
            channel="email",
            template="case_study",
            status=DeliveryStatus.PLANNED,
            planned_at=first.planned_at,
            due_at=first.due_at,
            attempts=0,
        )
        s.add(twin)
        twin_id = twin.id
    assert send_deliveries(sender, [welcome, twin_id]) == ["sent", "not sent"]
    with sessions() as s:
        deferred = s.get_one(Delivery, twin_id)
        assert (deferred.status, deferred.due_at) == ("planned", clock.now() + timedelta(days=3))


def test_a_batch_of_sends_reads_and_writes_the_database_as_often_as_a_batch_of_one(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    ids = _welcome_for_each(sessions, rt)
    engine = sessions.kw["bind"]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert send_deliveries(sender, ids[:1]) == ["sent"]
        alone = list(statements)
        statements.clear()
        assert send_deliveries(sender, ids[1:]) == ["sent", "sent"]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == len(alone), (alone, statements)
    assert _statuses(sessions) == ["sent"] * 3


class CountingPacer(LocalPacer):
    """The in-process pacer, counting the slots it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = 0

    def acquire(self, key: str, rate: float, *, timeout: float) -> float:
        self.slots += 1
        return super().acquire(key, rate, timeout=timeout)


class PerRequest(OutboxChannel):
    """A paced provider whose rate limit counts requests (as SendGrid's does), counting calls."""

    paced = True
    paced_per_request = True
    calls = 0

    def send_many(self, messages: Sequence[Any]) -> list[SendResult | ChannelError]:
        self.calls += 1
        return super().send_many(messages)


class PerMessage(PerRequest):
    """A paced provider whose rate limit counts messages."""

    paced_per_request = False


@pytest.mark.parametrize(("channel", "slots", "calls"), [(PerRequest, 1, 1), (PerMessage, 3, 3)])
def test_a_paced_batch_takes_one_slot_where_the_provider_counts_requests_else_one_a_message(
    sender: Sender,
    sessions: sessionmaker[Session],
    rt: Runtime,
    channel: type[PerRequest],
    slots: int,
    calls: int,
) -> None:
    adapter = channel(sender.outbox, "email", rt.clock)
    sender.channels = {"email": adapter}
    sender.pacer = pacer = CountingPacer()
    ids = _welcome_for_each(sessions, rt)
    assert send_deliveries(sender, ids) == ["sent"] * 3
    assert (pacer.slots, adapter.calls) == (slots, calls)
