"""Request and response models of the API, and the OpenAPI entries of its error statuses.

Request bodies refuse unknown keys; what each field accepts is in `engine.http.validators`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.funnel.merge import Folded
from engine.http.limits import MAX_BATCH
from engine.http.validators import (
    Email,
    EventId,
    EventType,
    ExternalId,
    FieldName,
    FieldValue,
    OccurredAt,
    Phone,
    Properties,
    Reason,
    Short,
    TimeZone,
    read_phone,
)
from engine.models import STANDARD_FIELDS, Lead

EVENTS_PATH = "/v1/events"  # the path whose body is EventsIn
EVENTS_TAGS = (("event",), ("batch",))  # the tags of the EventsIn union, as they show in a loc
# The values of Stage.SUBSCRIBER and Stage.LEAD: a Literal of the members themselves would
# put their reprs ("<Stage.LEAD: 'lead'>") into the 422 a client reads.
NewStage = Literal["subscriber", "lead"]

# --- Request bodies --------------------------------------------------------------------------

# A lead body names the lead: one of these is given, and not as "" (which means not given).
IDENTIFIED: list[JsonValue] = [
    {"required": [key], "properties": {key: {"type": "string", "minLength": 1}}}
    for key in ("email", "external_id", "phone")
]


class _Body(BaseModel):
    """Request bodies refuse unknown keys, so a typo is a 422 instead of silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LeadAttributes(_Body):
    """Who a lead is (email, external_id or phone) and what is known about them.

    An email, external_id, phone or timezone of "" is not given (as if left out).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": IDENTIFIED})

    # Validated first: a phone number is read in its `country`.
    fields: dict[FieldName, FieldValue] = Field(
        default_factory=dict, description="Custom attributes that fit rules may read."
    )
    email: Email | None = Field(
        None,
        examples=["dana@initech.example"],
        description="Checked by email-validator (internationalised domains welcome) and stored "
        "trimmed with its domain lower-cased; the local part is kept as written, and looked up "
        "in any letter case.",
    )
    external_id: ExternalId | None = Field(None, description="Stored trimmed.")
    phone: Phone | None = Field(
        None,
        examples=["+45 20 12 34 56"],
        description="With its country code (+45 20 12 34 56, 0045 ...) or written the national "
        "way of the lead's fields.country (a two-letter code), else of NURTURE_DEFAULT_REGION; "
        "checked against the country's numbering plan (phonenumbers) and stored as E.164.",
    )
    first_name: Short | None = None
    last_name: Short | None = None
    company: Short | None = None
    title: Short | None = None
    timezone: TimeZone | None = Field(None, description="IANA name, e.g. America/Chicago")
    email_consent: StrictBool | None = None
    sms_consent: StrictBool | None = None

    @field_validator("phone")
    @classmethod
    def _phone_read(cls, phone: str | None, info: ValidationInfo) -> str | None:
        """Read after `fields` (declared first for this): its `country` says how the number
        is written."""
        return phone and read_phone(phone, info.data.get("fields") or {})

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

    stage: NewStage | None = Field(
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


class MergeIn(_Body):
    """The lead to merge into the one the path names: it is deleted, its past joins that one."""

    other: str = Field(
        min_length=1,
        max_length=320,
        examples=["+4520123456"],
        description="A numeric lead id, an email address, a +E.164 phone number or an external "
        "id; a key that names nobody (or cannot name anyone) is a 404.",
    )


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
    phone_region: str | None = None  # the country of the phone number's plan
    phone_kind: str | None = None  # mobile, fixed, fixed or mobile, other: SMS skips fixed
    send_zone: str | None = None  # what sends are timed in; None: the sending rules' default
    send_zone_from: str = "default"  # timezone (the lead's own), phone (its area) or default
    fields: dict[str, Any]
    stage: str
    owner: str | None
    email_consent: bool
    sms_consent: bool
    created_at: datetime
    last_activity_at: datetime | None
    erased_at: datetime | None = None  # personal data erased: the lead is a tombstone


class LeadOut(LeadView):
    """A lead with its score."""

    score: ScoreOut


class AliasOut(BaseModel):
    """An identity of the merged lead the survivor already had one of: it still names it."""

    field: str
    value: str


class MergeOut(LeadOut):
    """The survivor of a merge, and what the merge did."""

    merged: str = Field(description="The key the merged lead was known by.")
    merged_id: int = Field(description="The id the merged lead had (it is deleted).")
    moved: dict[str, int] = Field(description="Rows moved to the survivor, per table.")
    aliases: list[AliasOut]
    collapsed: list[int] = Field(
        description="Enrolments ended as duplicates: the survivor runs on in the same sequence."
    )
    handoff_id: int | None = Field(description="A handoff the rescored survivor made.")


class ConflictOut(BaseModel):
    """A call gave `lead` an identity `other` holds (NURTURE_MERGE=ask): one person, maybe."""

    lead_id: int
    lead: str = Field(description="The key of the lead the call named.")
    other_id: int
    other: str = Field(description="The key of the lead that holds the value.")
    field: str
    value: str
    source: str
    first_seen_at: datetime
    last_seen_at: datetime
    times: int


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
    holdout: bool  # in the sequence's holdout group: its sends are skipped


class DeliveryOut(BaseModel):
    """One planned or made send."""

    id: str
    sequence: str
    milestone: str
    template: str
    variant: str | None  # the step's variant this lead drew, when the step has variants
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


class UnprocessedEventOut(BaseModel):
    """An event that is stored but whose consequences have not run: why, and when they will."""

    id: int
    idempotency_key: str | None
    type: str
    occurred_at: datetime
    received_at: datetime
    status: str
    attempts: int
    error: str | None
    retry_at: datetime | None


class SuppressionOut(BaseModel):
    """An address of the lead that is never messaged on a channel, and why."""

    channel: str
    address: str
    reason: str
    created_at: datetime


class UnsubscribedTopicOut(BaseModel):
    """An email topic the lead left: sequences with that topic send it no more emails."""

    topic: str
    source: str
    created_at: datetime


class ConsentOut(BaseModel):
    """Proof of a consent given on a form: the text shown, where, from which address, when."""

    form: str
    topic: str
    status: str = Field(description="given, pending (double opt-in), confirmed, existing, blocked")
    text: str
    page_url: str | None
    ip: str | None
    requested_at: datetime
    confirmed_at: datetime | None


class LeadDetailOut(BaseModel):
    """Everything about one lead: score and why (newest 50 ledger rows), sequences, sends."""

    lead: LeadView
    score: ScoreOut
    ledger: list[LedgerEntryOut]
    enrolments: list[EnrolmentOut]
    deliveries: list[DeliveryOut]
    handoffs: list[HandoffOut]
    unprocessed_events: list[UnprocessedEventOut]
    suppressions: list[SuppressionOut]
    unsubscribed_topics: list[UnsubscribedTopicOut]
    consents: list[ConsentOut]


class EventOut(BaseModel):
    """What recording one event did."""

    id: str | None = Field(description="The idempotency id sent, if any.")
    event_id: int | None = Field(description="The stored event (the original for a duplicate).")
    duplicate: bool
    processing: Literal["processed", "failed"] = Field(
        description="`failed`: the event is stored, its scoring or journey failed and the "
        "scheduler retries it with backoff."
    )
    error: str | None = Field(description="Why processing failed, when it did.")
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
    409: "Conflicts with the lead's state, another lead, or the server's clock",
    413: "Body larger than the limit",
    503: "A dependency is unavailable or not configured",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation may answer."""
    return {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}


def _lead_link(method: str, path: str, description: str) -> dict[str, Any]:
    """An OpenAPI link from a response carrying a lead `id` to an operation on that lead."""
    pointer = path.replace("~", "~0").replace("/", "~1").replace("{", "%7B").replace("}", "%7D")
    return {
        "operationRef": f"#/paths/{pointer}/{method}",
        "parameters": {"key": "$response.body#/id"},
        "description": description,
    }


# What a client (and a stateful fuzzer) can do next with the lead a response names.
LEAD_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            "ShowLead": _lead_link("get", "/v1/leads/{key}", "The lead, its score and why."),
            "RecycleLead": _lead_link("post", "/v1/leads/{key}/recycle", "Send it back."),
            "WinLead": _lead_link("post", "/v1/leads/{key}/won", "Mark it a customer."),
        }
    }
}


def lead_out(lead: Lead) -> LeadOut:
    """The response shape of a lead row."""
    view = LeadView.model_validate(lead, from_attributes=True)
    return LeadOut(
        **view.model_dump(),
        score=ScoreOut(total=lead.score, fit=lead.fit, engagement=lead.engagement),
    )


def merge_out(survivor: Lead, folded: Folded, handoff_id: int | None) -> MergeOut:
    """The response shape of a merge: the survivor's row after it, and what it did."""
    return MergeOut(
        **lead_out(survivor).model_dump(),
        merged=folded.merged_key,
        merged_id=folded.merged,
        moved=folded.moved,
        aliases=[AliasOut(field=name, value=value) for name, value in folded.aliases],
        collapsed=folded.collapsed,
        handoff_id=handoff_id,
    )
