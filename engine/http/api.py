"""The HTTP API: leads, events, sales actions, stats, health and metrics (webhooks and the
unsubscribe page are in `engine.http.webhooks`).

Every request runs its engine function in one transaction and only then enqueues the work it
made due; the database stays the source of truth, so a failed enqueue is logged and left to
the scheduler. Decisions:

- Auth: bearer API keys from `NURTURE_API_KEYS` (comma separated), compared in constant time.
  With no keys configured `create_api` raises ConfigurationError unless `allow_no_auth=True`
  (the embedded demo), so a forgotten variable never serves an open API. Keys shorter than
  16 characters are refused. `/healthz`, `/webhooks/*` (signed instead) and `/u/*` (signed
  tokens) need no key; `/metrics` does, since delivery counts are business data.
- `POST /v1/events` takes one event or `{"events": [...]}` (at most 500). The whole body is
  validated first (422 before anything is written), then each event is recorded in its own
  transaction, in order, so a big batch never holds many lead locks at once. If recording
  fails midway the events before stay recorded: send ids, and a retry counts each once.
- Validation is stricter than JSON Schema can say (email and phone syntax, time zones, text
  PostgreSQL can store, occurred_at with a zone and at most a day ahead): all of it is 422
  with the field's path, never a 500.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import available_timezones

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StringConstraints,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from channels.webhooks import SignatureError
from engine.app import App
from engine.errors import ConfigurationError, InvalidLeadError, NurtureError, UnknownLeadError
from engine.funnel.journey import active_enrolments
from engine.funnel.leads import (
    IDENTITY_FIELDS,
    STANDARD_FIELDS,
    Identity,
    find_lead,
    normalise_email,
    normalise_phone,
)
from engine.funnel.service import TrackResult, recycle_lead, track, upsert_lead, win_lead
from engine.models import Event, Handoff, Lead
from engine.read.metrics import BrokerProbe, Metrics
from engine.read.stats import funnel
from engine.read.views import find_by_key, lead_detail
from engine.runner.actors import QUEUES, Tasks
from engine.workflow.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 500
MIN_KEY_LENGTH = 16
MAX_FUTURE = timedelta(days=1)  # clock skew we tolerate on occurred_at
MAX_LEAD_ID = 2**31 - 1  # leads.id is a 32-bit integer on PostgreSQL
MAX_JSON_DEPTH = 32
MAX_FIELD_TEXT = 2000
# Custom field names that would shadow a lead column or an attribute rules read.
RESERVED_FIELDS = frozenset(
    {*IDENTITY_FIELDS, *STANDARD_FIELDS, "email_consent", "sms_consent", "stage", "owner"}
    | {"fields", "email_domain"}
)
_J = TypeVar("_J")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_EVENTS_PATH = "/v1/events"
_TAGS = (("event",), ("batch",))  # the tags of the EventsIn union


# --- Validation of what PostgreSQL and the engine can take -----------------------------------


def _storable(value: str) -> str:
    """Text PostgreSQL stores as sent: no NUL characters, no lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("must be valid Unicode text") from error
    return value


def _email(value: str) -> str:
    try:
        return normalise_email(_storable(value))
    except InvalidLeadError as error:
        raise ValueError(str(error)) from error


def _phone(value: str) -> str:
    try:
        return normalise_phone(_storable(value))
    except InvalidLeadError as error:
        raise ValueError(str(error)) from error


def _external_id(value: str) -> str:
    value = _storable(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError(f"unknown time zone {value!r}: use an IANA name, e.g. Europe/Berlin")
    return value


def _storable_json(value: _J) -> _J:
    """JSON both databases keep as sent: storable text, finite numbers, 64-bit ints, 32 deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"must not nest deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            _storable(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -(2**63) <= item < 2**63:
                raise ValueError("integers must fit in 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite")
        elif isinstance(item, dict):
            for key, child in item.items():
                _storable(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return value


def _scalar(value: Any) -> Any:
    """A custom field is one value fit rules can compare: text, a number, true/false or null."""
    if isinstance(value, str) and len(value) > MAX_FIELD_TEXT:
        raise ValueError(f"text must be at most {MAX_FIELD_TEXT} characters")
    if not (value is None or isinstance(value, str | int | float)):
        raise ValueError("must be a string, a number, true, false or null")
    return _storable_json(value)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be ISO 8601 with a time zone, e.g. 2026-03-02T10:00:00Z")
    return value


def _since_1970(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError as error:
        raise ValueError("is out of range") from error
    if utc.year < 1970:
        raise ValueError("must not be before 1970")
    return utc


Short = Annotated[str, StringConstraints(max_length=200), AfterValidator(_storable)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_storable)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)]
Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(_email)]
Phone = Annotated[str, StringConstraints(max_length=32), AfterValidator(_phone)]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_external_id)
]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timezone)]
EventType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=64)]
FieldName = Annotated[
    str, StringConstraints(min_length=1, max_length=100), AfterValidator(_storable)
]
FieldValue = Annotated[
    Any,
    AfterValidator(_scalar),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": MAX_FIELD_TEXT},
                {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
            ]
        }
    ),
]
Properties = Annotated[dict[str, Any], AfterValidator(_storable_json)]
OccurredAt = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_since_1970)]
LeadKey = Annotated[
    str,
    Path(
        max_length=320,
        description="A numeric lead id, an email address, a +E.164 phone number or an external id.",
    ),
]


# --- Request bodies --------------------------------------------------------------------------


class _Body(BaseModel):
    """Request bodies refuse unknown keys, so a typo is a 422 instead of silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LeadAttributes(_Body):
    """Who a lead is (email, external_id or phone) and what is known about them."""

    email: Email | None = Field(None, examples=["dana@initech.example"])
    external_id: ExternalId | None = None
    phone: Phone | None = Field(None, description="E.164, e.g. +14155550100")
    first_name: Short | None = None
    last_name: Short | None = None
    company: Short | None = None
    title: Short | None = None
    timezone: TimeZone | None = Field(None, description="IANA name, e.g. America/Chicago")
    email_consent: StrictBool | None = None
    sms_consent: StrictBool | None = None
    fields: dict[FieldName, FieldValue] = Field(
        default_factory=dict, description="Custom attributes that fit rules may read."
    )

    @field_validator("fields")
    @classmethod
    def _not_reserved(cls, fields: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_FIELDS.intersection(fields))
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: set lead attributes at the top level")
        return fields

    @model_validator(mode="after")
    def _identified(self) -> LeadAttributes:
        if not (self.email or self.external_id or self.phone):
            raise ValueError("a lead needs an email, an external_id or a phone number")
        return self

    def engine_data(self) -> dict[str, Any]:
        """The mapping `track` and `upsert_lead` take: custom fields flat, unset keys left out."""
        given = self.model_dump(exclude_unset=True, exclude={"fields"})
        kept = {k: v for k, v in given.items() if v is not None or k in STANDARD_FIELDS}
        return {**self.fields, **kept}


class LeadIn(LeadAttributes):
    """A lead to create or update."""

    stage: Literal["subscriber", "lead"] | None = Field(
        None, description="Stage of a new lead (default lead); later stages come from scoring."
    )


class EventIn(_Body):
    """Something a lead did; the same `id` twice is recorded once."""

    id: EventId | None = Field(None, description="Idempotency id.")
    lead: LeadAttributes
    type: EventType = Field(examples=["form_submitted"])
    properties: Properties = Field(default_factory=dict)
    occurred_at: OccurredAt | None = Field(
        None, description="ISO 8601 with a time zone; default: when it is received."
    )


class EventBatch(_Body):
    """Up to 500 events, validated together and recorded one by one in order."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


def _event_or_batch(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "event"


EventsIn = Annotated[
    Annotated[EventIn, Tag("event")] | Annotated[EventBatch, Tag("batch")],
    Discriminator(_event_or_batch),
]


class RecycleIn(_Body):
    """Why sales sends the lead back to nurture."""

    reason: Reason


class WonIn(_Body):
    """Why the lead became a customer."""

    reason: Reason = "won by sales"


# --- Responses -------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """What went wrong, in words."""

    detail: str


class ScoreOut(BaseModel):
    """The score and its two halves."""

    total: float
    fit: float
    engagement: float


class LeadView(BaseModel):
    """A lead's identity, attributes, consent and stage."""

    id: int
    email: str | None
    phone: str | None
    external_id: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    title: str | None
    timezone: str | None
    fields: dict[str, Any]
    stage: str
    owner: str | None
    email_consent: bool
    sms_consent: bool
    created_at: datetime
    last_activity_at: datetime | None


class LeadOut(LeadView):
    """A lead with its score."""

    score: ScoreOut


class LedgerEntryOut(BaseModel):
    """One change of the score and why."""

    kind: str
    rule: str
    points: float
    reason: str
    occurred_at: datetime


class EnrolmentOut(BaseModel):
    """Where the lead stands in one sequence."""

    id: int
    sequence: str
    milestone: str
    status: str
    trigger: str
    enrolled_at: datetime
    next_run_at: datetime | None
    exit_reason: str | None


class DeliveryOut(BaseModel):
    """One planned or made send."""

    id: str
    sequence: str
    milestone: str
    template: str
    channel: str
    status: str
    subject: str | None
    due_at: datetime
    sent_at: datetime | None
    detail: str | None


class HandoffOut(BaseModel):
    """One handoff to sales."""

    id: int
    crossing: int
    created_at: datetime
    owner: str | None
    status: str
    score: dict[str, Any]
    delivered_at: datetime | None


class LeadDetailOut(BaseModel):
    """Everything about one lead: score and why (newest 50 ledger rows), sequences, sends."""

    lead: LeadView
    score: ScoreOut
    ledger: list[LedgerEntryOut]
    enrolments: list[EnrolmentOut]
    deliveries: list[DeliveryOut]
    handoffs: list[HandoffOut]


class EventOut(BaseModel):
    """What recording one event did."""

    id: str | None = Field(description="The idempotency id sent, if any.")
    event_id: int | None = Field(description="The stored event (the original for a duplicate).")
    duplicate: bool
    lead_id: int
    stage: str
    points: float
    handoff_id: int | None


class EventBatchOut(BaseModel):
    """Results in the order the events were sent."""

    events: list[EventOut]


class MilestoneStats(BaseModel):
    """Leads that entered a milestone and that are in it now."""

    id: str
    entered: int
    now_in: int


class StepStats(BaseModel):
    """Sends of one step and what providers reported about them."""

    step: str
    template: str
    channel: str
    planned: int
    sent: int
    skipped: int
    failed: int
    delivered: int
    opened: int
    clicked: int
    bounced: int


class SequenceStats(BaseModel):
    """The funnel of one sequence."""

    enrolled: int
    active: int
    exited: dict[str, int]
    milestones: list[MilestoneStats]
    steps: list[StepStats]


class StatsOut(BaseModel):
    """Stage counts, each sequence's funnel, and how fast leads reach sales."""

    stages: dict[str, int]
    sequences: dict[str, SequenceStats]
    median_days_to_sql: float | None


class HealthOut(BaseModel):
    """`ok`, or what failed, per dependency."""

    database: str
    broker: str


_DESCRIPTIONS = {
    400: "The body is not JSON",
    401: "Missing or invalid API key",
    403: "Signature missing or wrong",
    404: "No such lead",
    409: "Conflicts with the lead's state or another lead",
    413: "Body larger than the limit",
    503: "A dependency is unavailable or not configured",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation may answer."""
    return {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}


# --- Plumbing: body limit, keys, errors, follow-ups ------------------------------------------


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or by what actually arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body up front (bounded) and replay it, so no endpoint sees an oversized one."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A declared length says "too large" at once (19+ digits always is, and int() of
        # thousands of digits would raise); a wrong or missing one is caught below.
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and (len(length) > 18 or int(length) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body is larger than {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


BEARER = HTTPBearer(auto_error=False, description="An API key from NURTURE_API_KEYS.")


def api_keys_from(environ: Mapping[str, str]) -> list[str]:
    """NURTURE_API_KEYS split on commas, blanks dropped."""
    return [key.strip() for key in environ.get("NURTURE_API_KEYS", "").split(",") if key.strip()]


def _authoriser(keys: Sequence[str]) -> Callable[..., None]:
    """A dependency that accepts a bearer token equal to one of `keys`."""
    encoded = [key.encode() for key in keys]

    def authorise(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if credentials is None:
            raise HTTPException(
                401,
                "missing API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = credentials.credentials.encode()
        # Compare with every key (no short cut), so timing says nothing about which is close.
        matches = [hmac.compare_digest(token, key) for key in encoded]
        if not any(matches):
            raise HTTPException(
                401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )

    return authorise


_STATUS: dict[type[NurtureError], int] = {
    UnknownLeadError: 404,
    SignatureError: 403,
    ConfigurationError: 503,
}


def _nurture_error(request: Request, error: Exception) -> Response:
    """Refusals as 4xx: unknown lead 404, bad lead data 422, bad signature 403, the rest 400."""
    if isinstance(error, InvalidLeadError):
        detail = [{"loc": ["body"], "msg": str(error), "type": "invalid_lead"}]
        return JSONResponse({"detail": detail}, status_code=422)
    status = next((s for kind, s in _STATUS.items() if isinstance(error, kind)), 400)
    return JSONResponse({"detail": str(error)}, status_code=status)


def _conflict(request: Request, error: Exception) -> Response:
    """A unique value (email, phone, external_id) that belongs to another lead."""
    log.info("conflict: %s", error)
    detail = "conflicts with another lead: an email, phone or external_id given belongs to it"
    return JSONResponse({"detail": detail}, status_code=409)


async def _validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's 422 without echoing input (it may not even be JSON: NaN), union tags untold."""
    assert isinstance(error, RequestValidationError)
    errors = []
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        if request.url.path == _EVENTS_PATH and loc[:1] == ("body",) and loc[1:2] in _TAGS:
            loc = (loc[0], *loc[2:])
        errors.append({"type": item["type"], "loc": loc, "msg": item["msg"]})
    return await request_validation_exception_handler(request, RequestValidationError(errors))


def invalid(loc: Sequence[str | int], message: str) -> RequestValidationError:
    """A 422 for a value only the endpoint can judge, shaped like FastAPI's own."""
    return RequestValidationError([{"loc": tuple(loc), "msg": message, "type": "value_error"}])


class FollowUps:
    """Work a committed request made due, handed to the workers; new handoffs are counted."""

    def __init__(self, tasks: Tasks | None, metrics: Metrics) -> None:
        self.tasks = tasks
        self.metrics = metrics

    def after_track(self, result: TrackResult) -> None:
        """Advance the enrolments an event made due and deliver the handoff it created."""
        self.after(result.due_enrolments, result.handoff_id)

    def after(self, enrolments: Iterable[int], handoff_id: int | None) -> None:
        """Best effort: what is not enqueued now, the scheduler finds in the database."""
        if handoff_id is not None:
            self.metrics.handoffs_created.inc()
        if self.tasks is None:
            return
        try:
            for enrolment_id in enrolments:
                self.tasks.advance_enrolment.send(enrolment_id)
            if handoff_id is not None:
                self.tasks.deliver_handoff.send(handoff_id)
        except Exception as error:  # noqa: BLE001 - the committed work is safe in the database
            log.warning("could not enqueue follow-up work (the scheduler will): %s", error)


def broker_probe(app: App, tasks: Tasks | None) -> BrokerProbe | None:
    """The Redis behind the task broker, or behind NURTURE_REDIS_URL; None for the stub."""
    from dramatiq.brokers.redis import RedisBroker

    broker = tasks.broker if tasks is not None else None
    if isinstance(broker, RedisBroker):
        return BrokerProbe(broker.client, broker.namespace, QUEUES)
    if broker is None and app.settings.redis_url:
        import redis

        client = redis.Redis.from_url(
            app.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        return BrokerProbe(client, "dramatiq", QUEUES)
    return None


# --- Engine glue -----------------------------------------------------------------------------


def lead_out(lead: Lead) -> LeadOut:
    """The response shape of a lead row."""
    view = LeadView.model_validate(lead, from_attributes=True)
    return LeadOut(
        **view.model_dump(),
        score=ScoreOut(total=lead.score, fit=lead.fit, engagement=lead.engagement),
    )


def lookup(session: Session, key: str) -> Lead:
    """The lead a path key names: 404 when nobody has it, 422 when it cannot name anyone."""
    key = key.strip()
    if key.isdigit() and (not key.isascii() or int(key) > MAX_LEAD_ID):
        raise UnknownLeadError(f"no lead with id {key}")
    try:
        return find_by_key(session, _storable(key))
    except (InvalidLeadError, ValueError) as error:
        raise invalid(("path", "key"), str(error)) from error


def identity_of(lead: Lead) -> Identity:
    """The stored (already normalised) identity of a lead."""
    return Identity(email=lead.email, external_id=lead.external_id, phone=lead.phone)


def due_enrolments(session: Session, rt: Runtime, lead: Lead) -> list[int]:
    """The lead's active enrolments whose next step is due now."""
    now = rt.clock.now()
    return [
        e.id
        for e in active_enrolments(session, lead)
        if e.next_run_at is not None and e.next_run_at <= now
    ]


def _new_handoff(session: Session, lead: Lead, crossings_before: int) -> int | None:
    """The handoff this request created, when the lead crossed SQL during it."""
    if lead.sql_crossings <= crossings_before:
        return None
    return session.scalar(
        select(Handoff.id).where(Handoff.lead_id == lead.id, Handoff.crossing == lead.sql_crossings)
    )


def _check_times(events: Sequence[EventIn], batch: bool, now: datetime) -> None:
    """422 for any event dated more than MAX_FUTURE ahead, before any is recorded."""
    for index, event in enumerate(events):
        if event.occurred_at is not None and event.occurred_at > now + MAX_FUTURE:
            where = ("body", "events", index) if batch else ("body",)
            raise invalid((*where, "occurred_at"), "must not be more than a day in the future")


# --- The application -------------------------------------------------------------------------


def create_api(
    app: App,
    tasks: Tasks | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    allow_no_auth: bool = False,
    allow_unsigned_webhooks: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The FastAPI application over one App; `tasks` (when given) receives follow-up work.

    `environ` (default os.environ) supplies NURTURE_API_KEYS when `api_keys` is None, and the
    webhook secrets SENDGRID_WEBHOOK_PUBLIC_KEY and TWILIO_AUTH_TOKEN.
    """
    from engine.http.webhooks import unsubscribe_router, webhook_router

    env = os.environ if environ is None else environ
    keys = list(api_keys) if api_keys is not None else api_keys_from(env)
    if not keys and not allow_no_auth:
        raise ConfigurationError(
            "NURTURE_API_KEYS is not set: the API refuses to run without keys "
            "(allow_no_auth=True is for the local demo only)"
        )
    if any(len(key) < MIN_KEY_LENGTH for key in keys):
        raise ConfigurationError(f"API keys must be at least {MIN_KEY_LENGTH} characters long")
    probe = broker_probe(app, tasks)
    metrics = Metrics(app.sessions, app.rt.clock, probe)
    follow = FollowUps(tasks, metrics)

    api = FastAPI(
        title="nurture", version="0.1.0", summary="Lead scoring, nurture sequences, SQL handoff."
    )
    api.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    api.add_exception_handler(NurtureError, _nurture_error)
    api.add_exception_handler(IntegrityError, _conflict)
    api.add_exception_handler(RequestValidationError, _validation_error)
    router = APIRouter(
        dependencies=[Depends(_authoriser(keys))] if keys else [],
        responses=error_responses(401) if keys else {},
    )
    _lead_routes(router, app, follow)
    _event_routes(router, app, follow)
    _report_routes(router, app, metrics)
    _health_route(api, app, probe)
    api.include_router(router)
    api.include_router(
        webhook_router(
            app,
            follow.after_track,
            metrics,
            sendgrid_key=env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
            twilio_token=env.get("TWILIO_AUTH_TOKEN") or None,
            allow_unsigned=allow_unsigned_webhooks,
        )
    )
    api.include_router(unsubscribe_router(app, follow.after_track))
    return api


def _lead_routes(router: APIRouter, app: App, follow: FollowUps) -> None:
    """Upsert and show leads; the sales actions recycle and won."""

    @router.post(
        "/v1/leads",
        response_model=LeadOut,
        responses=error_responses(400, 409, 413),
        tags=["leads"],
    )
    def upsert(body: LeadIn) -> LeadOut:
        """Create or update a lead; fit is recomputed and stages follow."""
        data = body.engine_data()
        with app.sessions.begin() as session:
            before = find_lead(session, Identity.parse(data))
            crossings = before.sql_crossings if before is not None else 0
            lead = upsert_lead(session, app.rt, data)
            handoff_id = _new_handoff(session, lead, crossings)
            due = due_enrolments(session, app.rt, lead)
            out = lead_out(lead)
        follow.after(due, handoff_id)
        return out

    @router.get(
        "/v1/leads/{key}",
        response_model=LeadDetailOut,
        responses=error_responses(404),
        tags=["leads"],
    )
    def show(key: LeadKey) -> dict[str, Any]:
        """Stage, scores and why, enrolments, deliveries and handoffs of a lead."""
        with app.sessions() as session:
            return lead_detail(session, lookup(session, key))

    @router.post(
        "/v1/leads/{key}/recycle",
        response_model=LeadOut,
        responses=error_responses(400, 404, 409, 413),
        tags=["leads"],
    )
    def recycle(key: LeadKey, body: RecycleIn) -> LeadOut:
        """Sales sends an mql, sql or customer back to nurture; 409 for any other stage."""
        with app.sessions.begin() as session:
            lead = lookup(session, key)
            try:
                lead = recycle_lead(session, app.rt, identity_of(lead), body.reason)
            except InvalidLeadError as error:
                raise HTTPException(409, str(error)) from error
            due = due_enrolments(session, app.rt, lead)
            out = lead_out(lead)
        follow.after(due, None)
        return out

    @router.post(
        "/v1/leads/{key}/won",
        response_model=LeadOut,
        responses=error_responses(400, 404, 413),
        tags=["leads"],
    )
    def won(key: LeadKey, body: WonIn | None = None) -> LeadOut:
        """Sales closed the lead: it becomes a customer and leaves every sequence."""
        reason = (body or WonIn()).reason
        with app.sessions.begin() as session:
            lead = win_lead(session, app.rt, identity_of(lookup(session, key)), reason)
            return lead_out(lead)


def _event_routes(router: APIRouter, app: App, follow: FollowUps) -> None:
    """Record events, one or a batch."""

    def record(event: EventIn) -> EventOut:
        with app.sessions.begin() as session:
            result = track(
                session,
                app.rt,
                event.lead.engine_data(),
                event.type,
                event.properties,
                occurred_at=event.occurred_at,
                event_id=event.id,
                source="api",
            )
            stored = result.event_id
            if result.duplicate and event.id is not None:
                stored = session.scalar(select(Event.id).where(Event.idempotency_key == event.id))
        if not result.duplicate:
            follow.metrics.events_ingested.inc()
        follow.after_track(result)
        return EventOut(
            id=event.id,
            event_id=stored,
            duplicate=result.duplicate,
            lead_id=result.lead_id,
            stage=result.stage,
            points=result.points,
            handoff_id=result.handoff_id,
        )

    @router.post(
        _EVENTS_PATH,
        response_model=EventOut | EventBatchOut,
        responses=error_responses(400, 409, 413),
        tags=["events"],
    )
    def events(body: EventsIn) -> EventOut | EventBatchOut:
        """Record one event, or a batch: all validated first, then each in its own transaction."""
        if isinstance(body, EventBatch):
            _check_times(body.events, True, app.rt.clock.now())
            return EventBatchOut(events=[record(event) for event in body.events])
        _check_times([body], False, app.rt.clock.now())
        return record(body)


def _report_routes(router: APIRouter, app: App, metrics: Metrics) -> None:
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


def _health_route(api: FastAPI, app: App, probe: BrokerProbe | None) -> None:
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
