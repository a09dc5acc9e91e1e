"""Dramatiq actors: thin wrappers that give the engine's plain functions a session and a clock.

Actors are declared per broker (`Tasks(broker, app)`) rather than at import time, so a
process chooses Redis or the in-process stub broker before any actor exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.orm import Session

from engine.app import App
from engine.delivery.confirmation import send_confirmation
from engine.delivery.handoff import claim_due_handoffs, hand_over
from engine.delivery.sending import expire_stuck, send_deliveries, send_delivery
from engine.funnel.erasure import RETENTION_BATCH, erase_idle
from engine.funnel.service import NewEvent, Outcome, record, refresh_leads, reprocess
from engine.models import MergeMode
from engine.read.variants import Place
from engine.runner.merging import merge_listed
from engine.runner.scheduler import (
    DEFAULT_LEASE,
    Horizon,
    advance_enrolment,
    advance_enrolments,
    claim_due_deliveries,
    claim_due_enrolments,
    claim_due_jobs,
    claim_due_leads,
    claim_failed_events,
    horizon,
)
from engine.runner.winners import JUDGE_EVERY, decide_winners

# Ids per message: a worker does one batch in one transaction, and a batch of this size keeps
# a message's work well under a second while paying the transaction once for many rows.
CHUNK = 100
# Sends per message: a batch of sends is marked `sending` in one commit before its first
# provider call, so a worker killed mid-batch leaves at most this many `unknown` per thread.
SEND_CHUNK = 20
_Item = TypeVar("_Item")
_R = TypeVar("_R")

log = logging.getLogger(__name__)

# Longest idle poll of a queue, in ms: Dramatiq's default of 1000 adds up to a second to a
# handoff; 100 costs about ten Redis polls a second per idle queue.
POLL_MS = 100
# Dramatiq runs lower numbers first among the messages a worker holds: a handoff never waits
# behind a batch of paced sends.
# A backtest of a large base runs for minutes: far past Dramatiq's default of 10 minutes.
JOB_TIME_LIMIT_MS = 60 * 60 * 1000
PRIORITIES = {"handoffs": 0, "events": 10, "journeys": 20, "maintenance": 30, "sends": 40}
# Leads idle past NURTURE_RETENTION_MONTHS are looked for this often (sooner while a batch
# came back full, so a backlog drains a batch per pass).
RETAIN_EVERY = timedelta(hours=1)


def make_broker(redis_url: str | None) -> dramatiq.Broker:
    """Redis when a URL is configured, else the in-process stub broker of the embedded default."""
    if redis_url:
        return RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]  # dramatiq is untyped
    return StubBroker()


class Tasks:
    """The actors of one broker, bound to one App."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        app: App,
        lease: timedelta = DEFAULT_LEASE,
        jobs: Callable[[App, str], None] | None = None,
    ) -> None:
        self.broker = broker
        self.app = app
        self.lease = lease
        declare = _declarer(broker)
        self.process_events = declare(self._process_events, "events")
        self.retry_event = declare(self._retry_event, "events")
        self.advance_enrolments = declare(self._advance_enrolments, "journeys")
        self.send_deliveries = declare(self._send_deliveries, "sends")
        self.deliver_handoff = declare(self._deliver_handoff, "handoffs")
        # one-off emails outside sequences go with handoffs: a person is waiting for them
        self.send_confirmation = declare(self._send_confirmation, "handoffs")
        self.refresh_leads = declare(self._refresh_leads, "maintenance")
        # Backtest jobs run simulations, which are built on these actors: the process that
        # runs them (`nurture worker`, `nurture run`) hands their runner in (`runner.jobs`).
        self.jobs = jobs
        self.judge_at: datetime | None = None  # when this scheduler next judges experiments
        self.judged: dict[Place, int] = {}  # looks judged without a winner, per step
        self.retain_at: datetime | None = None  # when this scheduler next erases idle leads
        # one try per message: the job row counts attempts, and the scheduler sends it again
        self.run_backtest = declare(
            self._run_backtest, "maintenance", max_retries=0, time_limit=JOB_TIME_LIMIT_MS
        )

    def _process_events(self, payloads: list[dict[str, Any]]) -> None:
        """Record a batch of events in one pass, then advance what became due and deliver
        the handoffs they made at once.

        A failure of an event's consequences does not raise: the event is stored, marked
        failed, and the scheduler retries it (`retry_event`), so Dramatiq has nothing to
        redeliver but a batch that was not stored at all.
        """
        with self.app.sessions.begin() as session:
            outcomes = record(session, self.app.rt, [_new_event(p) for p in payloads])
        self.follow_up(*outcomes)

    def _retry_event(self, event_id: int) -> None:
        """Run the consequences of a failed event again; a new failure waits for its backoff."""
        with self.app.sessions.begin() as session:
            outcome = reprocess(session, self.app.rt, event_id)
        if outcome is not None:
            self.follow_up(outcome)

    def follow_up(self, *outcomes: Outcome) -> None:
        """Advance the enrolments service calls made due and deliver the handoffs they created."""
        due = sorted({e for outcome in outcomes for e in outcome.due_enrolments})
        for chunk in _chunks(due):
            self.advance_enrolments.send(chunk)
        for outcome in outcomes:
            if outcome.handoff_id is not None:
                self.deliver_handoff.send(outcome.handoff_id)

    def _advance_enrolments(self, enrolment_ids: list[int]) -> None:
        """Run enrolments' due steps and hand the sends they planned to the send queue."""
        rt = self.app.rt
        planned = self._together(
            enrolment_ids,
            lambda s, ids: advance_enrolments(s, rt, ids),
            lambda s, one: advance_enrolment(s, rt, one),
            "advance",
        )
        for chunk in _chunks(planned, SEND_CHUNK):
            self.send_deliveries.send(chunk)

    def _send_deliveries(self, delivery_ids: list[str]) -> None:
        """Send a batch: one transaction marks them all `sending`, one records the answers."""
        try:
            send_deliveries(self.app, delivery_ids)
        except Exception:
            if len(delivery_ids) == 1:
                raise
            log.exception("a batch of %s sends failed: sending each alone", len(delivery_ids))
            for delivery_id in delivery_ids:
                self._alone(partial(send_delivery, self.app, delivery_id), "send", delivery_id)

    def _deliver_handoff(self, handoff_id: int) -> None:
        hand_over(self.app, handoff_id)

    def _send_confirmation(self, consent_id: int) -> None:
        send_confirmation(self.app, consent_id)

    def confirm_later(self, consent_id: int) -> None:
        """Enqueue the double opt-in email of a pending consent (sent at most once)."""
        self.send_confirmation.send(consent_id)

    def start_job(self, job_id: str) -> None:
        """Hand a stored backtest job to a worker (the scheduler does, if this message is lost)."""
        self.run_backtest.send(job_id)

    def _run_backtest(self, job_id: str) -> None:
        """Run a backtest job asked for through the API and store its report."""
        if self.jobs is None:
            raise RuntimeError("this process runs no backtest jobs: build Tasks with jobs=")
        self.jobs(self.app, job_id)

    def _refresh_leads(self, lead_ids: list[int]) -> None:
        """Apply the clock (decay, slipping back, inactivity) to leads, in id order."""
        rt = self.app.rt
        outcomes = self._together(
            lead_ids,
            lambda s, ids: refresh_leads(s, rt, ids),
            lambda s, one: refresh_leads(s, rt, [one]),  # none when merged away
            "refresh",
        )
        self.follow_up(*outcomes)

    def _together(
        self,
        items: list[_Item],
        whole: Callable[[Session, list[_Item]], list[_R]],
        each: Callable[[Session, _Item], list[_R]],
        what: str,
    ) -> list[_R]:
        """`whole` on the batch in one transaction; when that fails, `each` on every item in
        its own, so one failing item holds up no other: it is due again when its lease runs
        out. A batch of one that fails raises, for Dramatiq to retry it with backoff.
        """
        try:
            with self.app.sessions.begin() as session:
                return whole(session, items)
        except Exception:
            if len(items) == 1:
                raise
            log.exception("a batch of %s failed: doing each alone", len(items))
        results: list[_R] = []
        for item in items:

            def one(item: _Item = item) -> list[_R]:
                with self.app.sessions.begin() as session:
                    return each(session, item)

            results.extend(self._alone(one, what, item) or [])
        return results

    @staticmethod
    def _alone(work: Callable[[], _R], what: str, item: object) -> _R | None:
        """Run one item of a failed batch; its failure is logged, not raised."""
        try:
            return work()
        except Exception:
            log.exception("%s of %s failed: it is due again when its lease runs out", what, item)
            return None

    def tick(self, batch: int = 500) -> int:
        """One scheduler pass: claim everything due and enqueue it; returns how much it enqueued."""
        return self.scheduler_pass(batch)[0]

    def scheduler_pass(self, batch: int = 500) -> tuple[int, Horizon]:
        """One scheduler pass: one statement says which kinds of work are due, and only those
        are claimed and enqueued. Returns how much it enqueued and the horizon it saw."""
        app = self.app
        now = app.rt.clock.now()
        with app.sessions.begin() as session:
            seen = horizon(session)
            due = partial(seen.due, now=now)
            events = (
                claim_failed_events(session, now, batch, self.lease) if due(seen.events) else []
            )
            leads = claim_due_leads(session, now, batch) if due(seen.leads) else []
            enrolments = (
                claim_due_enrolments(session, now, batch, self.lease)
                if due(seen.enrolments)
                else []
            )
            deliveries = (
                claim_due_deliveries(session, now, batch, self.lease)
                if due(seen.deliveries)
                else []
            )
            handoffs = (
                claim_due_handoffs(session, now, batch, self.lease) if due(seen.handoffs) else []
            )
            if due(seen.stuck):
                expire_stuck(session, now)
            jobs = claim_due_jobs(session, now, batch) if due(seen.jobs) else []
        for event_id in events:
            self.retry_event.send(event_id)
        for lead_chunk in _chunks(leads):
            self.refresh_leads.send(lead_chunk)
        for enrolment_chunk in _chunks(enrolments):
            self.advance_enrolments.send(enrolment_chunk)
        for delivery_chunk in _chunks(deliveries, SEND_CHUNK):
            self.send_deliveries.send(delivery_chunk)
        for handoff_id in handoffs:
            self.deliver_handoff.send(handoff_id)
        for job_id in jobs:
            self.run_backtest.send(job_id)
        enqueued = len(events) + len(leads) + len(enrolments) + len(deliveries) + len(handoffs)
        enqueued += len(jobs)
        if self.judge_at is None or now >= self.judge_at:
            self.judge_at = now + JUDGE_EVERY
            self._judge(now)
        if app.rt.merge is MergeMode.AUTO:
            self._merge()
        if app.settings.retention_months and (self.retain_at is None or now >= self.retain_at):
            self.retain_at = now + RETAIN_EVERY
            self._retain(now, app.settings.retention_months)
        return enqueued, seen

    def _judge(self, now: datetime) -> None:
        """Decide the winners of experiments whose tests now say so, after the pass has
        committed its claims (so no due work waits on it); a failure waits for the next one."""
        try:
            with self.app.sessions.begin() as session:
                for pick in decide_winners(session, self.app.rt, now, self.judged):
                    log.info("%s/%s/%s: %s", pick.sequence, pick.milestone, pick.step, pick.reason)
        except Exception:
            log.exception("judging experiments failed: tried again in %s", JUDGE_EVERY)

    def _merge(self) -> None:
        """Merge the pairs of leads calls named together (`merge: auto`), after the pass's
        claims; a failure waits for the next pass."""
        try:
            outcomes = merge_listed(self.app.sessions, self.app.rt)
        except Exception:  # reading the pairs failed: each pair is guarded on its own
            log.exception("merging listed leads failed: tried again next pass")
            return
        self.follow_up(*outcomes)

    def _retain(self, now: datetime, months: int) -> None:
        """Erase a batch of leads idle past retention in a transaction of its own, after the
        pass's claims; a full batch brings the next pass back for more."""
        try:
            with self.app.sessions.begin() as session:
                erased = erase_idle(session, self.app.rt, months, "scheduler")
        except Exception:
            log.exception("erasing idle leads failed: tried again in %s", RETAIN_EVERY)
            return
        if erased:
            log.info("retention: erased %s lead(s) idle for %s month(s)", len(erased), months)
        if len(erased) == RETENTION_BATCH:
            self.retain_at = now


def _chunks(items: list[_Item], size: int = CHUNK) -> list[list[_Item]]:
    """`items` in messages of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _new_event(payload: dict[str, Any]) -> NewEvent:
    """An event as a message carries it (JSON: the time as ISO 8601 text)."""
    occurred = payload.get("occurred_at")
    return NewEvent(
        payload["lead"],
        payload["type"],
        payload.get("properties"),
        datetime.fromisoformat(occurred) if occurred else None,
        payload.get("id"),
        payload.get("source", "api"),
    )


def _declarer(broker: dramatiq.Broker) -> Callable[..., dramatiq.Actor]:  # type: ignore[type-arg]
    def declare(fn: Callable[..., None], queue: str, **options: Any) -> dramatiq.Actor:  # type: ignore[type-arg]
        return dramatiq.actor(  # type: ignore[call-overload,no-any-return]
            fn,
            actor_name=fn.__name__.lstrip("_"),
            queue_name=queue,
            priority=PRIORITIES[queue],
            broker=broker,
            **{"max_retries": 10, "min_backoff": 1000, "max_backoff": 300_000} | options,
        )

    return declare
