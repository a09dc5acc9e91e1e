"""Dramatiq actors: thin wrappers that give the engine's plain functions a session and a clock.

Actors are declared per broker (`Tasks(broker, app)`) rather than at import time, so a
process chooses Redis or the in-process stub broker before any actor exists.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from engine.app import App
from engine.delivery.handoff import claim_due_handoffs, hand_over
from engine.delivery.sending import expire_stuck, send_delivery
from engine.funnel.service import Outcome, refresh, reprocess, track
from engine.runner.scheduler import (
    DEFAULT_LEASE,
    advance_enrolment,
    claim_due_deliveries,
    claim_due_enrolments,
    claim_due_leads,
    claim_failed_events,
)

# Longest idle poll of a queue, in ms: Dramatiq's default of 1000 adds up to a second to a
# handoff; 100 costs about ten Redis polls a second per idle queue.
POLL_MS = 100
# Dramatiq runs lower numbers first among the messages a worker holds: a handoff never waits
# behind a batch of paced sends.
PRIORITIES = {"handoffs": 0, "events": 10, "journeys": 20, "maintenance": 30, "sends": 40}


def make_broker(redis_url: str | None) -> dramatiq.Broker:
    """Redis when a URL is configured, else the in-process stub broker of the embedded default."""
    if redis_url:
        return RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]  # dramatiq is untyped
    return StubBroker()


class Tasks:
    """The actors of one broker, bound to one App."""

    def __init__(self, broker: dramatiq.Broker, app: App, lease: timedelta = DEFAULT_LEASE) -> None:
        self.broker = broker
        self.app = app
        self.lease = lease
        declare = _declarer(broker)
        self.process_event = declare(self._process_event, "events")
        self.retry_event = declare(self._retry_event, "events")
        self.advance_enrolment = declare(self._advance_enrolment, "journeys")
        self.send_delivery = declare(self._send_delivery, "sends")
        self.deliver_handoff = declare(self._deliver_handoff, "handoffs")
        self.refresh_lead = declare(self._refresh_lead, "maintenance")

    def _process_event(self, payload: dict[str, Any]) -> None:
        """Record an event, then advance what became due and deliver a handoff at once.

        A failure of its consequences does not raise: the event is stored, marked failed, and
        the scheduler retries it (`retry_event`), so Dramatiq has nothing to redeliver.
        """
        app = self.app
        occurred = payload.get("occurred_at")
        with app.sessions.begin() as session:
            result = track(
                session,
                app.rt,
                payload["lead"],
                payload["type"],
                payload.get("properties"),
                occurred_at=datetime.fromisoformat(occurred) if occurred else None,
                event_id=payload.get("id"),
                source=payload.get("source", "api"),
            )
        self.follow_up(result)

    def _retry_event(self, event_id: int) -> None:
        """Run the consequences of a failed event again; a new failure waits for its backoff."""
        with self.app.sessions.begin() as session:
            outcome = reprocess(session, self.app.rt, event_id)
        if outcome is not None:
            self.follow_up(outcome)

    def follow_up(self, outcome: Outcome) -> None:
        """Advance the enrolments a service call made due and deliver the handoff it created."""
        for enrolment_id in outcome.due_enrolments:
            self.advance_enrolment.send(enrolment_id)
        if outcome.handoff_id is not None:
            self.deliver_handoff.send(outcome.handoff_id)

    def _advance_enrolment(self, enrolment_id: int) -> None:
        """Run an enrolment's due steps and hand the sends they planned to the send queue."""
        with self.app.sessions.begin() as session:
            planned = advance_enrolment(session, self.app.rt, enrolment_id)
        for delivery_id in planned:
            self.send_delivery.send(delivery_id)

    def _send_delivery(self, delivery_id: str) -> None:
        send_delivery(self.app, delivery_id)

    def _deliver_handoff(self, handoff_id: int) -> None:
        hand_over(self.app, handoff_id)

    def _refresh_lead(self, lead_id: int) -> None:
        app = self.app
        with app.sessions.begin() as session:
            outcome = refresh(session, app.rt, lead_id)
        self.follow_up(outcome)

    def tick(self, batch: int = 500) -> int:
        """One scheduler pass: claim everything due and enqueue it; returns how much it enqueued."""
        app = self.app
        now = app.rt.clock.now()
        with app.sessions.begin() as session:
            events = claim_failed_events(session, now, batch, self.lease)
            leads = claim_due_leads(session, now, batch)
            enrolments = claim_due_enrolments(session, now, batch, self.lease)
            deliveries = claim_due_deliveries(session, now, batch, self.lease)
            handoffs = claim_due_handoffs(session, now, batch, self.lease)
            expire_stuck(session, now)
        for event_id in events:
            self.retry_event.send(event_id)
        for lead_id in leads:
            self.refresh_lead.send(lead_id)
        for enrolment_id in enrolments:
            self.advance_enrolment.send(enrolment_id)
        for delivery_id in deliveries:
            self.send_delivery.send(delivery_id)
        for handoff_id in handoffs:
            self.deliver_handoff.send(handoff_id)
        return len(events) + len(leads) + len(enrolments) + len(deliveries) + len(handoffs)


def _declarer(broker: dramatiq.Broker) -> Callable[[Callable[..., None], str], dramatiq.Actor]:  # type: ignore[type-arg]
    def declare(fn: Callable[..., None], queue: str) -> dramatiq.Actor:  # type: ignore[type-arg]
        return dramatiq.actor(  # type: ignore[call-overload,no-any-return]
            fn,
            actor_name=fn.__name__.lstrip("_"),
            queue_name=queue,
            priority=PRIORITIES[queue],
            broker=broker,
            max_retries=10,
            min_backoff=1000,
            max_backoff=300_000,
        )

    return declare
