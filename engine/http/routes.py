"""The routes: leads and the sales actions, events, the funnel and metrics, and health.

Every route runs its engine function in one transaction and only then hands the work it made
due to `FollowUps`; a failed enqueue is logged and left to the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.orm import Session

from engine.app import App
from engine.errors import InvalidLeadError, UnknownLeadError
from engine.funnel.lead_fields import shown
from engine.funnel.service import (
    NewEvent,
    Outcome,
    merge_leads,
    record,
    recycle_lead,
    upsert_lead,
    win_lead,
)
from engine.http.schemas import (
    EVENTS_PATH,
    LEAD_LINKS,
    ConflictOut,
    EventBatch,
    EventBatchOut,
    EventIn,
    EventOut,
    EventsIn,
    HealthOut,
    LeadDetailOut,
    LeadIn,
    LeadOut,
    MergeIn,
    MergeOut,
    RecycleIn,
    StatsOut,
    WonIn,
    error_responses,
    lead_out,
    merge_out,
)
from engine.http.validators import LeadKey
from engine.models import Lead
from engine.read.conflicts import open_conflicts
from engine.read.metrics import BrokerProbe, Metrics
from engine.read.stats import funnel
from engine.read.views import find_by_key, lead_detail
from engine.settings import QUEUES

log = logging.getLogger(__name__)

MAX_FUTURE = timedelta(days=1)  # clock skew we tolerate on occurred_at


# --- Follow-up work ---------------------------------------------------------------------------


class Workers(Protocol):
    """Where the API hands the work a request made due: `engine.runner.actors.Tasks`."""

    @property
    def broker(self) -> dramatiq.Broker:
        """The broker the work goes through, probed by /healthz and /metrics."""

    def follow_up(self, outcome: Outcome) -> None:
        """Enqueue the enrolments an outcome made due and the handoff it created."""

    def start_job(self, job_id: str) -> None:
        """Enqueue a stored backtest job for a worker."""


class FollowUps:
    """Work a committed request made due, handed to the workers; new handoffs are counted."""

    def __init__(self, tasks: Workers | None, metrics: Metrics) -> None:
        self.tasks = tasks
        self.metrics = metrics

    def after(self, outcome: Outcome) -> None:
        """Best effort: what is not enqueued now, the scheduler finds in the database."""
        if outcome.handoff_id is not None:
            self.metrics.handoffs_created.inc()
        if self.tasks is None:
            return
        try:
            self.tasks.follow_up(outcome)
        except Exception as error:  # noqa: BLE001 - the committed work is safe in the database
            log.warning("could not enqueue follow-up work (the scheduler will): %s", error)


def broker_probe(app: App, tasks: Workers | None) -> BrokerProbe | None:
    """The Redis behind the task broker, or behind NURTURE_REDIS_URL; None for the stub."""
    broker = tasks.broker if tasks is not None else None
    if isinstance(broker, RedisBroker):
        return BrokerProbe(broker.client, broker.namespace, QUEUES)
    if broker is None and app.settings.redis_url:
        client = redis.Redis.from_url(
            app.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        return BrokerProbe(client, "dramatiq", QUEUES)
    return None


# --- Engine glue -----------------------------------------------------------------------------


def lookup(session: Session, key: str) -> Lead:
    """The lead a path key names; 404 when nobody has it, also when it cannot name anyone
    (`+12` is no phone number), as the OpenAPI document lets any key through."""
    try:
        return find_by_key(session, key)
    except InvalidLeadError as error:
        raise UnknownLeadError(f"no lead with key {shown(key)}: {error}") from error


def _check_times(events: Sequence[EventIn], batch: bool, now: datetime) -> None:
    """409 for any event dated more than MAX_FUTURE ahead, before any is recorded; then the
    times in UTC (safe now: 9999-12-31T23:00-05:00 would overflow)."""
    for index, event in enumerate(events):
        if event.occurred_at is not None and event.occurred_at > now + MAX_FUTURE:
            where = f"events[{index}].occurred_at" if batch else "occurred_at"
            raise HTTPException(
                409, f"{where}: more than a day ahead of the server's clock ({now.isoformat()})"
            )
    for event in events:
        if event.occurred_at is not None:
            event.occurred_at = event.occurred_at.astimezone(UTC)


# --- Routes ----------------------------------------------------------------------------------


def lead_routes(router: APIRouter, app: App, follow: FollowUps) -> None:
    """Upsert and show leads; the sales actions recycle and won; merge two leads."""

    @router.post(
        "/v1/leads",
        response_model=LeadOut,
        responses=LEAD_LINKS | error_responses(400, 409, 413),
        tags=["leads"],
    )
    def upsert(body: LeadIn) -> LeadOut:
        """Create or update a lead; fit is recomputed and stages follow."""
        data = body.engine_data()
        with app.sessions.begin() as session:
            outcome = upsert_lead(session, app.rt, data)
            out = lead_out(outcome.lead)
        follow.after(outcome)
        return out

    @router.get(
        "/v1/leads/{key}",
        response_model=LeadDetailOut,
        responses=error_responses(404),
        tags=["leads"],
    )
    def show(key: LeadKey) -> dict[str, Any]:
        """Stage, scores and why, enrolments, deliveries, handoffs and unprocessed events."""
        with app.sessions() as session:
            return lead_detail(session, lookup(session, key))

    @router.post(
        "/v1/leads/{key}/recycle",
        response_model=LeadOut,
        responses=LEAD_LINKS | error_responses(400, 404, 409, 413),
        tags=["leads"],
    )
    def recycle(key: LeadKey, body: RecycleIn) -> LeadOut:
        """Sales sends an mql, sql or customer back to nurture; 409 for any other stage."""
        with app.sessions.begin() as session:
            lead = lookup(session, key)
            try:
                outcome = recycle_lead(session, app.rt, lead.id, body.reason)
            except InvalidLeadError as error:
                raise HTTPException(409, str(error)) from error
            out = lead_out(outcome.lead)
        follow.after(outcome)
        return out

    @router.post(
        "/v1/leads/{key}/won",
        response_model=LeadOut,
        responses=LEAD_LINKS | error_responses(400, 404, 413),
        tags=["leads"],
    )
    def won(key: LeadKey, body: WonIn | None = None) -> LeadOut:
        """Sales closed the lead: it becomes a customer and leaves every sequence."""
        reason = (body or WonIn()).reason
        with app.sessions.begin() as session:
            outcome = win_lead(session, app.rt, lookup(session, key).id, reason)
            return lead_out(outcome.lead)


def merge_routes(router: APIRouter, app: App, follow: FollowUps) -> None:
    """Merge two leads that are one person; the conflicts that suggest such pairs."""

    @router.post(
        "/v1/leads/{key}/merge",
        response_model=MergeOut,
        responses=LEAD_LINKS | error_responses(400, 404, 409, 413),
        tags=["leads"],
    )
    def merge(key: LeadKey, body: MergeIn) -> MergeOut:
        """Merge lead `other` into this one, which keeps both pasts and is rescored over them;
        `other`'s identities name it from now on. 409 for one lead twice or an erased one."""
        with app.sessions.begin() as session:
            keep, other = lookup(session, key).id, lookup(session, body.other).id
            try:
                folded, outcome = merge_leads(session, app.rt, keep, other)
            except InvalidLeadError as error:
                raise HTTPException(409, str(error)) from error
            out = merge_out(outcome.lead, folded, outcome.handoff_id)
        follow.after(outcome)
        return out

    @router.get("/v1/conflicts", response_model=list[ConflictOut], tags=["leads"])
    def conflicts() -> list[dict[str, Any]]:
        """Calls that gave a lead an email, phone or external id another lead holds (with
        NURTURE_MERGE=ask), last seen first: merge the two, or leave them."""
        with app.sessions() as session:
            return open_conflicts(session)


def event_routes(router: APIRouter, app: App, follow: FollowUps) -> None:
    """Record events, one or a batch."""

    def record_all(events: Sequence[EventIn]) -> list[EventOut]:
        """Record the events in one transaction and one pass (`record`), answer each."""
        new = [
            NewEvent(
                event.lead.engine_data(),
                event.type,
                event.properties,
                event.occurred_at,
                event.id,
                "api",
            )
            for event in events
        ]
        with app.sessions.begin() as session:
            outcomes = record(session, app.rt, new)
        answers = []
        for event, result in zip(events, outcomes, strict=True):
            if not result.duplicate:
                follow.metrics.events_ingested.inc()
            follow.after(result)
            answers.append(
                EventOut(
                    id=event.id,
                    event_id=result.event_id,
                    duplicate=result.duplicate,
                    processing="failed" if result.failed else "processed",
                    error=result.failed,
                    lead_id=result.lead_id,
                    stage=result.stage,
                    points=result.points,
                    handoff_id=result.handoff_id,
                )
            )
        return answers

    @router.post(
        EVENTS_PATH,
        response_model=EventOut | EventBatchOut,
        responses=error_responses(400, 409, 413),
        tags=["events"],
    )
    def events(body: EventsIn) -> EventOut | EventBatchOut:
        """Record one event, or a batch: all validated first, then stored together in one
        transaction (all or none), each answered on its own.

        A stored event is answered 200 even when its scoring or journey failed (`processing`
        is `failed`, with the `error`): the scheduler retries it. A 5xx means none was stored.
        """
        if isinstance(body, EventBatch):
            _check_times(body.events, True, app.rt.clock.now())
            return EventBatchOut(events=record_all(body.events))
        _check_times([body], False, app.rt.clock.now())
        return record_all([body])[0]


def report_routes(router: APIRouter, app: App, metrics: Metrics) -> None:
    """The funnel for marketers, Prometheus metrics for operators."""

    @router.get("/v1/stats", response_model=StatsOut, tags=["stats"])
    def stats() -> dict[str, Any]:
        """Stage counts and the funnel of every sequence, per milestone and step."""
        with app.sessions() as session:
            return funnel(session, app.rt)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
        tags=["operations"],
    )
    def prometheus() -> Response:
        """Counters of this process and gauges read from the database and the broker."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def health_route(api: FastAPI, app: App, probe: BrokerProbe | None) -> None:
    """`/healthz` for load balancers and orchestrators: no key needed."""

    def select_one() -> None:
        with app.engine.connect() as connection:
            connection.execute(text("select 1"))

    @api.get(
        "/healthz",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "Something failed"}},
        tags=["operations"],
    )
    def healthz() -> JSONResponse:
        """200 when the database and the broker answer, else 503 naming what failed."""
        status = {
            "database": _probe(select_one),
            "broker": _probe(probe.ping) if probe is not None else "ok",
        }
        healthy = all(value == "ok" for value in status.values())
        return JSONResponse(status, status_code=200 if healthy else 503)


def _probe(check: Callable[[], object]) -> str:
    """`ok`, or the failure in a few words (no secrets: the class and message of the error)."""
    try:
        check()
    except Exception as error:  # noqa: BLE001 - any failure is what health checks report
        return f"failed: {error.__class__.__name__}: {str(error)[:200]}"
    return "ok"
