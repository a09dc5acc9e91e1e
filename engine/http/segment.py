"""Segment-spec ingestion: `identify`, `track`, `page`, `screen` and `alias` calls, one at a
time or in a batch, from Segment, RudderStack, Jitsu or any library that speaks the spec.

Decisions:

- Auth as Segment's HTTP API: the write key as the HTTP Basic user name (password empty), or
  as `writeKey` in the body; keys from NURTURE_SEGMENT_WRITE_KEYS (comma separated, refused
  when weak like API keys). Without keys the endpoints are not served (404), so a pipeline is
  never taken in unauthenticated by default.
- Bodies follow the spec and, unlike the rest of the API, ignore keys nurture does not read
  (`integrations`, `context.library`, `_metadata`, ...): every library adds its own.
- Who: `userId` is the lead's external_id; traits (`traits` of an identify, `context.traits`
  of any call) fill lead fields (sources.yml maps more), the other scalar traits become custom
  fields; objects, lists and the fields nurture sets itself (stage, consent) are ignored. A
  call naming no lead (only `anonymousId`) is kept for the visitor until it is identified;
  one naming both identifies the visitor (`engine.funnel.visitors`).
- What: a track's event name maps to an event type through sources.yml (unmapped names kept
  in snake_case, or dropped); `page` is page_viewed with url, path, title, referrer and search
  from its properties or `context.page`; `screen` is screen_viewed; `group` is ignored.
- When: `timestamp` when given, else `originalTimestamp` corrected by the client's clock
  skew (received - (sentAt - originalTimestamp)), else when received; beyond tomorrow is a 409.
- `messageId` is the event's idempotency id (as `segment:<messageId>`): a replay counts once.
- A batch (at most 500 calls) is validated whole first (422 naming batch[i] and the field),
  then recorded in one transaction, in order; the answer says per call what happened.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.config import JsonDict
from sqlalchemy.orm import Session

from engine.app import App
from engine.errors import ConfigurationError, InvalidLeadError
from engine.funnel.lead_fields import EXTERNAL_ID_PATTERN, check_lead
from engine.funnel.leads import Identity, find_lead
from engine.funnel.visitors import VISITOR_MAX, Hit, Taken, join, take
from engine.http.errors import field_path, first_error, invalid
from engine.http.limits import MAX_BATCH
from engine.http.routes import MAX_FUTURE, FollowUps
from engine.http.schemas import error_responses
from engine.http.validators import ExternalId, OccurredAt, Properties, storable_text
from engine.safety import WRITE_KEYS_VARIABLE, api_keys_from, weakness
from engine.workflow.sources import NOT_FROM_TRAITS
from engine.workflow.spec import SegmentMapping, Unmapped

SEGMENT_PATH = "/v1/segment"
ID_PREFIX = "segment:"  # event ids of Segment calls: `segment:<messageId>`
TEXT_MAX = 2000  # an event name, page url, title or referrer
# Traits that fill lead fields without sources.yml (it may map more, or these elsewhere).
DEFAULT_TRAITS = {
    "email": "email",
    "phone": "phone",
    "firstName": "first_name",
    "first_name": "first_name",
    "lastName": "last_name",
    "last_name": "last_name",
    "company": "company",
    "title": "title",
    "timezone": "timezone",
}
PAGE_FIELDS = ("url", "path", "title", "referrer", "search")
BASIC = HTTPBasic(auto_error=False, description="A write key from NURTURE_SEGMENT_WRITE_KEYS.")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")

Kind = Literal["identify", "track", "page", "screen", "alias", "group"]
KINDS: tuple[Kind, ...] = ("identify", "track", "page", "screen", "alias", "group")
Status = Literal[
    "recorded",
    "duplicate",
    "failed",
    "stored",
    "identified",
    "anonymous",
    "dropped",
    "ignored",
    "invalid",
]


# --- Bodies ----------------------------------------------------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=VISITOR_MAX),
    AfterValidator(storable_text),
    AfterValidator(_not_blank),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": VISITOR_MAX,
            "pattern": EXTERNAL_ID_PATTERN,
        }
    ),
]
MessageId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200 - len(ID_PREFIX)),
    AfterValidator(storable_text),
]
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX), AfterValidator(storable_text)]


class _Spec(BaseModel):
    """Segment-spec bodies: keys nurture does not read are ignored (libraries add their own)."""

    model_config = ConfigDict(extra="ignore")


class PageContext(_Spec):
    """`context.page`: where a call was made, as analytics.js fills it in."""

    url: Text | None = None
    path: Text | None = None
    title: Text | None = None
    referrer: Text | None = None
    search: Text | None = None


class Context(_Spec):
    """The parts of `context` nurture reads."""

    page: PageContext = Field(default_factory=PageContext)
    traits: Properties = Field(default_factory=dict)


# What the spec asks of a call, stated in the document as far as JSON Schema can: a userId
# or an anonymousId; a track needs its event name and an alias its previousId.
_WHO: JsonDict = {
    "anyOf": [
        {"required": ["userId"], "properties": {"userId": {"type": "string", "minLength": 1}}},
        {"required": ["anonymousId"], "properties": {"anonymousId": {"type": "string"}}},
    ]
}
_NEEDS: dict[str, JsonDict] = {
    "track": {"required": ["event"], "properties": {"event": {"type": "string", "minLength": 1}}},
    "alias": {"required": ["previousId"], "properties": {"previousId": {"type": "string"}}},
}
_RULES: list[JsonValue] = [_WHO]
_RULES.extend({"if": {"properties": {"type": {"const": k}}}, "then": v} for k, v in _NEEDS.items())


class CallBody(_Spec):
    """The fields of a Segment-spec call nurture reads (the type aside)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_WHO)

    messageId: MessageId | None = Field(
        default=None, description="Idempotency id: a replay counts once."
    )
    userId: ExternalId | None = Field(default=None, description="The lead's external_id.")
    anonymousId: Id | None = Field(default=None, description="The visitor before it is identified.")
    previousId: Id | None = Field(default=None, description="alias: the id the person had before.")
    event: Text | None = Field(default=None, description="track: the event name.")
    name: Text | None = None
    category: Text | None = None
    properties: Properties = Field(default_factory=dict)
    traits: Properties = Field(default_factory=dict)
    context: Context = Field(default_factory=Context)
    timestamp: OccurredAt | None = None
    originalTimestamp: OccurredAt | None = None
    sentAt: OccurredAt | None = None
    writeKey: str | None = Field(
        default=None, description="The write key, when not sent as Basic auth."
    )


class TypedCall(CallBody):
    """A call posted to the path of its type (/v1/segment/track): `type` may be left out."""

    type: Kind | None = None


class SegmentCall(CallBody):
    """One Segment-spec call of any type."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"allOf": _RULES},
    )

    type: Kind


class SegmentBatch(_Spec):
    """Up to 500 calls, validated together and recorded in order in one transaction."""

    batch: list[SegmentCall] = Field(min_length=1, max_length=MAX_BATCH)
    sentAt: OccurredAt | None = None
    writeKey: str | None = None


class CallOut(BaseModel):
    """What one call did."""

    messageId: str | None
    type: str
    status: Status = Field(
        description="recorded (on a lead), duplicate (its messageId was seen), failed (stored, "
        "its scoring failed and is retried), stored (an anonymous visitor's, unscored until "
        "identified), identified (the lead upserted, its visitor linked), anonymous (an "
        "identify naming no lead), dropped (an unmapped event), ignored (unused call type), "
        "invalid (a call of a batch that could not be taken; `detail` says why)"
    )
    detail: str | None = None
    lead_id: int | None = None
    event_id: int | None = None
    stitched: int = Field(
        default=0, description="Earlier anonymous events this call joined the lead."
    )


class SegmentOut(BaseModel):
    """Segment's `success`, and per call, in order, what nurture did with it."""

    success: bool = True
    calls: list[CallOut]


# --- Mapping a call --------------------------------------------------------------------------


@dataclass
class _Plan:
    """What one checked call will do: take hits, join two anonymous ids, or nothing."""

    call: SegmentCall
    hits: list[Hit] = field(default_factory=list)
    joins: tuple[str, str] | None = None
    status: Status | None = None  # decided before recording: dropped, ignored
    detail: str | None = None
    renames: str | None = None  # alias: a user id that must not name another lead


def snake_case(name: str) -> str | None:
    """A track event name as an event type ("Trial Started", "trialStarted" -> trial_started);
    None when nothing usable is left."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    words = re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")
    return words if _EVENT_TYPE.fullmatch(words) else None


def _lead(call: SegmentCall, mapping: SegmentMapping, loc: tuple[Any, ...]) -> dict[str, Any]:
    """The lead a call names (userId, email or phone) with what its traits say; {} when none.

    422 naming the trait whose value a lead cannot hold.
    """
    targets = DEFAULT_TRAITS | dict(mapping.traits)
    lead: dict[str, Any] = {}
    origin: dict[str, tuple[Any, ...]] = {}
    for where, traits in (("context", call.context.traits), ("traits", call.traits)):
        for name, given in traits.items():
            value = given.get("name") if name == "company" and isinstance(given, dict) else given
            target = targets.get(name, name)
            if isinstance(value, dict | list) or target in NOT_FROM_TRAITS:
                continue  # not one value a field holds, or not a trait's to set
            lead[target] = value
            base = (*loc, "context", "traits") if where == "context" else (*loc, "traits")
            origin[target] = (*base, name)
    if call.userId:
        lead["external_id"] = call.userId
        origin["external_id"] = (*loc, "userId")
    if not any(lead.get(key) for key in ("email", "external_id", "phone")):
        return {}
    try:
        return check_lead(lead)
    except InvalidLeadError as error:
        raise invalid(origin.get(error.field or "", loc), error.reason) from error


def _when(
    call: SegmentCall, sent: datetime | None, now: datetime, loc: tuple[Any, ...]
) -> datetime:
    """When it happened, as Segment reckons it; 409 beyond the server's tomorrow."""
    sent = call.sentAt or sent
    if call.timestamp is not None:
        moment, where = call.timestamp, "timestamp"
    elif call.originalTimestamp is not None and sent is not None:
        moment, where = now - (sent - call.originalTimestamp), "originalTimestamp"
    else:
        moment, where = call.originalTimestamp or now, "originalTimestamp"
    if moment > now + MAX_FUTURE:
        raise HTTPException(
            409,
            f"{field_path((*loc[1:], where))}: more than a day ahead of the server's clock "
            f"({now.isoformat()})",
        )
    return moment.astimezone(UTC)


def _page(call: SegmentCall) -> dict[str, Any]:
    """A page's properties, with url, path, title, referrer and search from `context.page`
    where the properties lack them, and its name and category."""
    page = call.context.page.model_dump(exclude_none=True)
    shown = {key: page[key] for key in PAGE_FIELDS if key in page and key not in call.properties}
    named = {"name": call.name, "category": call.category}
    return {**{k: v for k, v in named.items() if v is not None}, **call.properties, **shown}


def plan(
    call: SegmentCall,
    mapping: SegmentMapping,
    now: datetime,
    sent: datetime | None,
    loc: tuple[Any, ...],
) -> _Plan:
    """Check one call and decide what it does; a 422 or 409 names what is wrong."""
    kind = call.type
    if kind == "group":
        return _Plan(call, status="ignored", detail="group calls are not used by nurture")
    lead = _lead(call, mapping, loc)
    visitor = call.anonymousId
    if kind == "alias":
        if call.previousId is None:
            raise invalid((*loc, "previousId"), "an alias call needs a previousId")
        if lead:
            hits = [Hit(call.previousId, lead)]
            if visitor and visitor != call.previousId:
                hits.append(Hit(visitor, lead))
            return _Plan(call, hits, renames=call.previousId)
        if visitor is None:
            raise invalid((*loc, "userId"), "an alias call needs a userId (or an anonymousId)")
        return _Plan(call, joins=(call.previousId, visitor))
    if not call.userId and visitor is None:
        raise invalid((*loc, "userId"), "a call needs a userId or an anonymousId")
    lead_or_none = lead or None
    if kind == "identify":
        if not lead:
            return _Plan(call, [Hit(visitor, None)], detail="no userId, email or phone yet")
        return _Plan(call, [Hit(visitor, lead)])
    if kind == "track":
        if not call.event:
            raise invalid((*loc, "event"), "a track call needs an event name")
        mapped = mapping.events.get(call.event)
        if mapped is None and mapping.unmapped == Unmapped.KEEP:
            mapped = snake_case(call.event)
        if mapped is None:
            why = (
                "not mapped in sources.yml (unmapped: drop)"
                if mapping.unmapped == Unmapped.DROP
                else "no event type can be made of it"
            )
            return _Plan(call, status="dropped", detail=f"event {call.event!r}: {why}")
        event_type, properties = mapped, dict(call.properties)
    elif kind == "page":
        event_type, properties = "page_viewed", _page(call)
    else:
        named = {"name": call.name} if call.name is not None else {}
        event_type, properties = "screen_viewed", {**named, **call.properties}
    hit = Hit(
        visitor,
        lead_or_none,
        event_type,
        properties,
        _when(call, sent, now, loc),
        f"{ID_PREFIX}{call.messageId}" if call.messageId else None,
        "segment",
    )
    return _Plan(call, [hit])


def _batched(
    call: SegmentCall,
    loc: tuple[Any, ...],
    mapping: SegmentMapping,
    now: datetime,
    sent: datetime | None,
) -> _Plan:
    """A batch call's plan, or `invalid` with why: pipelines do not resend a refused batch,
    so one bad call must not lose the others."""
    try:
        return plan(call, mapping, now, sent, loc)
    except RequestValidationError as error:
        return _Plan(call, status="invalid", detail=first_error(error.errors(), len(loc), "call"))
    except HTTPException as error:
        return _Plan(call, status="invalid", detail=str(error.detail))


# --- Recording -------------------------------------------------------------------------------


def carry_out(
    session: Session, app: App, plans: Sequence[_Plan]
) -> list[tuple[_Plan, list[Taken]]]:
    """Record the plans in order (and answer them so): runs of hits in one `take`, aliases,
    joins and skipped calls between them."""
    done: list[tuple[_Plan, list[Taken]]] = []
    run: list[_Plan] = []

    def flush() -> None:
        if not run:
            return
        taken = take(session, app.rt, [hit for p in run for hit in p.hits])
        for p in run:
            done.append((p, taken[: len(p.hits)]))
            taken = taken[len(p.hits) :]
        run.clear()

    for p in plans:
        if p.hits and p.renames is None:
            run.append(p)
            continue
        flush()
        if p.renames is not None and _names_other_lead(session, p):
            done.append((p, []))
        elif p.hits:
            done.append((p, take(session, app.rt, p.hits)))
        elif p.joins is not None:
            done.append((p, join(session, app.rt, *p.joins)))
        else:
            done.append((p, []))
    flush()
    return done


def _names_other_lead(session: Session, p: _Plan) -> bool:
    """An alias whose previousId is another lead's user id: leads are never merged (ignored)."""
    assert p.renames is not None
    other = find_lead(session, Identity(external_id=p.renames.strip()))
    target = p.hits[0].lead or {}
    if other is None or other.external_id == target.get("external_id"):
        return False
    p.status, p.detail = "ignored", f"previousId is lead {other.id}'s userId: leads are not merged"
    return True


def answer(p: _Plan, taken: Sequence[Taken]) -> CallOut:
    """One call's line of the response, from what its hits did."""
    call = p.call
    out = CallOut(messageId=call.messageId, type=call.type, status="ignored")
    if p.status is not None:
        out.status, out.detail = p.status, p.detail
        return out
    out.stitched = sum(len(t.stitched) for t in taken)
    first = taken[0] if taken else None
    outcome = first.outcome if first is not None else None
    event = bool(p.hits and p.hits[0].type)
    if outcome is not None:
        out.lead_id = outcome.lead_id
        if not event:
            out.status = "identified"
        else:
            out.event_id = outcome.event_id
            out.status = (
                "failed" if outcome.failed else "duplicate" if outcome.duplicate else "recorded"
            )
            out.detail = outcome.failed
    elif first is not None and event:
        out.status = "duplicate" if first.duplicate else "stored"
    elif p.joins is not None and taken:
        out.status = "identified"
        out.lead_id = next((o.lead_id for t in taken for o in t.outcomes), None)
    elif p.joins is not None:
        out.status, out.detail = (
            "anonymous",
            "neither id has a lead yet: their events are kept as one",
        )
    else:
        out.status, out.detail = "anonymous", p.detail
    return out


# --- Routes ----------------------------------------------------------------------------------


def write_key_check(keys: Sequence[str]) -> Callable[..., Any]:
    """A dependency that accepts a write key as the Basic user name or the body's `writeKey`."""
    encoded = [key.encode() for key in keys]

    async def authorise(
        request: Request,
        credentials: Annotated[HTTPBasicCredentials | None, Depends(BASIC)],
    ) -> None:
        given: Any = credentials.username if credentials is not None else None
        if given is None:
            try:
                body = await request.json()
            except ValueError:
                body = None
            given = body.get("writeKey") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given:
            raise HTTPException(
                401,
                "missing write key: send it as the Basic auth user name or as writeKey",
                headers={"WWW-Authenticate": 'Basic realm="segment"'},
            )
        token = given.encode("utf-8", "surrogatepass")
        # Compare with every key (no short cut), so timing says nothing about which is close.
        if not any([hmac.compare_digest(token, key) for key in encoded]):
            raise HTTPException(
                401, "invalid write key", headers={"WWW-Authenticate": 'Basic realm="segment"'}
            )

    return authorise


def segment_router(app: App, follow: FollowUps, environ: Mapping[str, str]) -> APIRouter:
    """POST /v1/segment, /v1/segment/batch and /v1/segment/<type>, behind the write keys;
    nothing when NURTURE_SEGMENT_WRITE_KEYS is unset. ConfigurationError for a weak key."""
    keys = api_keys_from(environ, WRITE_KEYS_VARIABLE)
    if not keys:
        return APIRouter()
    for key in keys:
        if why := weakness(key):
            raise ConfigurationError(f"a write key in {WRITE_KEYS_VARIABLE} {why}")
    router = APIRouter(
        dependencies=[Depends(write_key_check(keys))],
        responses=error_responses(400, 401, 409, 413),
        tags=["segment"],
    )

    def ingest(
        calls: Sequence[SegmentCall],
        locs: Sequence[tuple[Any, ...]],
        sent: datetime | None,
        batch: bool = False,
    ) -> SegmentOut:
        now = app.rt.clock.now()
        mapping = app.rt.workflows.segment
        plans = [
            _batched(c, loc, mapping, now, sent) if batch else plan(c, mapping, now, sent, loc)
            for c, loc in zip(calls, locs, strict=True)
        ]
        with app.sessions.begin() as session:
            done = carry_out(session, app, plans)
            lines = [answer(p, taken) for p, taken in done]
        for _, taken in done:
            for outcome in (o for t in taken for o in t.outcomes):
                if outcome.event_id is not None and not outcome.duplicate:
                    follow.metrics.events_ingested.inc()
                follow.after(outcome)
        return SegmentOut(calls=lines)

    @router.post(SEGMENT_PATH, response_model=SegmentOut)
    def one(body: SegmentCall) -> SegmentOut:
        """One call of any type; the answer says what it did."""
        return ingest([body], [("body",)], None)

    @router.post(f"{SEGMENT_PATH}/batch", response_model=SegmentOut)
    def batch(body: SegmentBatch) -> SegmentOut:
        """Up to 500 calls recorded in order in one transaction; a call that cannot be taken (a
        bad trait, a time beyond tomorrow) is answered `invalid` and the others are recorded,
        as pipelines do not resend a refused batch. A body that is not a batch is a 422."""
        locs = [("body", "batch", index) for index in range(len(body.batch))]
        return ingest(body.batch, locs, body.sentAt, batch=True)

    for kind in KINDS:
        router.add_api_route(
            f"{SEGMENT_PATH}/{kind}",
            _typed(kind, ingest),
            methods=["POST"],
            response_model=SegmentOut,
            summary=f"One {kind} call",
        )
    return router


_Ingest = Callable[
    [Sequence[SegmentCall], Sequence[tuple[Any, ...]], datetime | None, bool], SegmentOut
]


def _typed(kind: Kind, ingest: _Ingest) -> Callable[[TypedCall], SegmentOut]:
    """The route of one call type: the body's `type` may be left out, never contradict it."""

    def one_kind(body: TypedCall) -> SegmentOut:
        if body.type is not None and body.type != kind:
            raise invalid(("body", "type"), f"this path takes {kind} calls, not {body.type}")
        call = SegmentCall.model_construct(
            body.model_fields_set | {"type"}, **{**dict(body), "type": kind}
        )
        return ingest([call], [("body",)], None, False)

    return one_kind
