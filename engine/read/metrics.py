"""Prometheus metrics of one API process: counters it counts, gauges read at scrape time.

Each API gets its own CollectorRegistry (tests build many APIs in one process, and the global
registry would refuse the second set of names). Gauges about work come from the database, the
source of truth, so every API process reports the same numbers whichever one is scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import Clock
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    EventStatus,
)

log = logging.getLogger(__name__)

NAMESPACE = "nurture"
PROVIDERS = ("sendgrid", "twilio")
UNPROCESSED = (EventStatus.PENDING, EventStatus.FAILED)


def event_backlog(session: Session) -> dict[EventStatus, tuple[int, datetime | None]]:
    """Events not processed, whenever they came, by status: how many and the oldest received."""
    rows = session.execute(
        select(Event.status, func.count(), func.min(Event.received_at))
        .where(Event.status != EventStatus.PROCESSED)  # the partial index
        .group_by(Event.status)
    ).all()
    return {status: (int(n), oldest) for status, n, oldest in rows}


class BrokerProbe:
    """Reachability and queue depth of a Dramatiq Redis broker (`<namespace>:<queue>` lists)."""

    def __init__(self, client: Any, namespace: str, queues: Sequence[str]) -> None:
        self.client = client
        self.namespace = namespace
        self.queues = tuple(queues)

    def ping(self) -> None:
        """Raise when Redis does not answer."""
        self.client.ping()

    def depths(self) -> dict[str, int]:
        """Messages waiting per queue (delayed messages excluded), in one round trip."""
        pipeline = self.client.pipeline(transaction=False)
        for queue in self.queues:
            pipeline.llen(f"{self.namespace}:{queue}")
        return {queue: int(n) for queue, n in zip(self.queues, pipeline.execute(), strict=True)}


class _DatabaseGauges:
    """Deliveries, unprocessed events and scheduler lag, queried when Prometheus scrapes."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        """Names only, so registering does not query the database."""
        return [_deliveries(), _lag(), _unprocessed(), _failed_age()]

    def collect(self) -> Iterable[Metric]:
        """Fresh numbers; none (and a log line) when the database is down: never a failed scrape."""
        now = self.clock.now()
        try:
            with self.sessions() as session:
                counts = session.execute(
                    select(Delivery.channel, Delivery.status, func.count()).group_by(
                        Delivery.channel, Delivery.status
                    )
                ).all()
                enrolment = session.scalar(
                    select(func.min(Enrolment.next_run_at)).where(
                        Enrolment.status == EnrolmentStatus.ACTIVE, Enrolment.next_run_at <= now
                    )
                )
                delivery = session.scalar(
                    select(func.min(Delivery.due_at)).where(
                        Delivery.status == DeliveryStatus.PLANNED, Delivery.due_at <= now
                    )
                )
                by_status = event_backlog(session)
        except SQLAlchemyError as error:
            log.warning("metrics: database gauges unavailable: %s", error)
            return []
        deliveries = _deliveries()
        for channel, status, count in counts:
            deliveries.add_metric([channel, status], int(count))
        oldest = min((t for t in (enrolment, delivery) if t is not None), default=None)
        lag = _lag()
        lag.add_metric([], (now - oldest).total_seconds() if oldest is not None else 0.0)
        unprocessed = _unprocessed()
        for kind in UNPROCESSED:  # zeros too, so an alert sees the series before it rises
            unprocessed.add_metric([kind], by_status.get(kind, (0, None))[0])
        first_failed = by_status.get(EventStatus.FAILED, (0, None))[1]
        failed_age = _failed_age()
        failed_age.add_metric(
            [], (now - first_failed).total_seconds() if first_failed is not None else 0.0
        )
        return [deliveries, lag, unprocessed, failed_age]


def _deliveries() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        f"{NAMESPACE}_deliveries",
        "Deliveries by channel and status.",
        labels=["channel", "status"],
    )


def _lag() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        f"{NAMESPACE}_scheduler_lag_seconds",
        "Age of the oldest due work (active enrolment or planned delivery); 0 when none is due.",
    )


def _unprocessed() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        f"{NAMESPACE}_events_unprocessed",
        "Stored events whose scoring and journey have not run, by status; failed ones are retried.",
        labels=["status"],
    )


def _failed_age() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        f"{NAMESPACE}_oldest_failed_event_age_seconds",
        "Age of the oldest event whose processing failed (since it was received); 0 when none.",
    )


class _QueueGauges:
    """Dramatiq queue depth in Redis; nothing when Redis does not answer."""

    def __init__(self, probe: BrokerProbe) -> None:
        self.probe = probe

    def describe(self) -> Iterable[Metric]:
        """Names only, so registering does not call Redis."""
        return [_depth()]

    def collect(self) -> Iterable[Metric]:
        """Current list lengths."""
        try:
            depths = self.probe.depths()
        except Exception as error:  # noqa: BLE001 - any Redis failure means "no numbers now"
            log.warning("metrics: queue depth unavailable: %s", error)
            return []
        family = _depth()
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        return [family]


def _depth() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        f"{NAMESPACE}_queue_depth", "Messages waiting in a Dramatiq queue.", labels=["queue"]
    )


class Metrics:
    """The counters an API process increments and the registry `/metrics` renders."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, broker: BrokerProbe | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.events_ingested = Counter(
            "events_ingested",
            "Events recorded through the API (duplicates excluded).",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.webhooks = Counter(
            "webhooks",
            "Provider webhook requests whose signature was accepted.",
            ["provider"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        for provider in PROVIDERS:
            self.webhooks.labels(provider)
        self.handoffs_created = Counter(
            "handoffs_created",
            "SQL handoffs created by API requests and webhooks.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.registry.register(_DatabaseGauges(sessions, clock))
        if broker is not None:
            self.registry.register(_QueueGauges(broker))

    def render(self) -> bytes:
        """The Prometheus text exposition of everything registered."""
        return generate_latest(self.registry)
