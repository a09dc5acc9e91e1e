"""The scheduler claims due work in leased batches; two schedulers never claim the same row."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.funnel.service import track
from engine.models import Enrolment
from engine.runner.scheduler import claim_due_enrolments
from engine.workflow.runtime import Runtime


def _enrol(sessions: sessionmaker[Session], rt: Runtime, count: int) -> None:
    with sessions.begin() as s:
        for i in range(count):
            track(s, rt, {"email": f"lead{i}@example.test"}, "form_submitted")


def test_a_claimed_enrolment_is_leased_and_due_again_when_the_lease_runs_out(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt, 3)
    with sessions.begin() as s:
        first = claim_due_enrolments(s, clock.now(), 2, lease=timedelta(minutes=5))
        rest = claim_due_enrolments(s, clock.now(), 10, lease=timedelta(minutes=5))
    assert len(first) == 2 and len(rest) == 1 and not set(first) & set(rest)
    with sessions.begin() as s:
        assert claim_due_enrolments(s, clock.now(), 10) == []
    clock.advance(timedelta(minutes=5))
    with sessions.begin() as s:  # the worker never reported back: the rows are due again
        assert sorted(claim_due_enrolments(s, clock.now(), 10)) == sorted(first + rest)


def test_enrolments_not_yet_due_are_not_claimed(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt, 1)
    with sessions.begin() as s:
        s.scalars(select(Enrolment)).one().next_run_at = clock.now() + timedelta(hours=1)
    with sessions.begin() as s:
        assert claim_due_enrolments(s, clock.now(), 10) == []


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_two_schedulers_claiming_at_once_split_the_due_rows_between_them(
    db: Engine, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _enrol(sessions, rt, 40)
    barrier = threading.Barrier(2)
    claims: list[list[int]] = []

    def scheduler() -> None:
        with sessions.begin() as s:
            barrier.wait()
            ids = claim_due_enrolments(s, clock.now(), 25)
            barrier.wait()  # both hold their row locks at the same moment
            claims.append(ids)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    a, b = claims
    assert not set(a) & set(b)
    assert len(a) + len(b) == 40
