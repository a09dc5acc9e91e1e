"""SQLAlchemy 2.0 models: the database is the source of truth for every lead, step and send."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from engine.clock import as_utc
from engine.contacts import email_key, local_zone

JSONType = JSON().with_variant(JSONB(), "postgresql")
_E = TypeVar("_E", bound=StrEnum)


class Stage(StrEnum):
    """A lead's lifecycle stage: subscriber -> lead -> mql -> sql, then customer or recycled."""

    SUBSCRIBER = "subscriber"
    LEAD = "lead"
    MQL = "mql"
    SQL = "sql"
    CUSTOMER = "customer"
    RECYCLED = "recycled"


# Stages that belong to sales, not marketing: no enrolment, no send, no stage evaluation.
OUT_OF_NURTURE = frozenset({Stage.SQL, Stage.CUSTOMER})


class EnrolmentStatus(StrEnum):
    """Whether a lead is still running through a sequence."""

    ACTIVE = "active"
    EXITED = "exited"


class DeliveryStatus(StrEnum):
    """planned -> sending -> sent | failed | skipped; `unknown` when a send's outcome is lost."""

    PLANNED = "planned"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


class HandoffStatus(StrEnum):
    """pending until the CRM acknowledged it (or, with no CRM configured, once recorded)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    WITHDRAWN = "withdrawn"  # its lead was erased before it reached the CRM: never sent


class LedgerKind(StrEnum):
    """What moved a score: a fit rule, an engagement rule, decay, a reset when sales recycles,
    or a rescore that brought a rule's points in line with changed scoring rules."""

    FIT = "fit"
    ENGAGEMENT = "engagement"
    DECAY = "decay"
    RESET = "reset"
    RESCORE = "rescore"


class EventStatus(StrEnum):
    """Whether an event's consequences ran: failed ones stay stored and are retried with backoff."""

    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"


class JobStatus(StrEnum):
    """A backtest job: queued until a worker claims it, running, then done or failed."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class PickKind(StrEnum):
    """How a step's winning variant was chosen: by its winner rule's test, or by hand."""

    AUTO = "auto"
    MANUAL = "manual"


class ExperimentStatus(StrEnum):
    """Where a step's experiment stands: still drawing variants, or one given to every lead."""

    RUNNING = "running"
    DECIDED = "decided"  # by its winner rule
    PICKED = "picked"  # by hand
    INCONCLUSIVE = "inconclusive"  # every look of its winner rule taken, and none won


class ErasureReason(StrEnum):
    """Why a lead's personal data was erased: someone asked, or it sat idle past retention."""

    REQUEST = "request"
    RETENTION = "retention"


class MergeMode(StrEnum):
    """What happens when one call names identities of two leads (email of one, phone of the
    other): merge them at once, or keep both and list the conflict for a person to decide."""

    AUTO = "auto"
    ASK = "ask"


class ConsentStatus(StrEnum):
    """Where a consent record stands: given on the form, or for double opt-in pending until the
    confirmation link is followed; `existing` when the lead already had that consent, `blocked`
    when its address is suppressed for a bounce or complaint (no confirmation sent)."""

    GIVEN = "given"
    PENDING = "pending"
    CONFIRMED = "confirmed"
    EXISTING = "existing"
    BLOCKED = "blocked"


class VersionKind(StrEnum):
    """Which workflow file a stored version holds: a sequence, scoring.yml or sending.yml."""

    SEQUENCE = "sequence"
    SCORING = "scoring"
    SENDING = "sending"


class EnumText(TypeDecorator[_E]):
    """A StrEnum stored as its text (no database enum type), read back as the enum member."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[_E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: _E | None, dialect: Dialect) -> str | None:
        """Store the member's text."""
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> _E | None:
        """The member, so code compares and matches against the enum, never bare text."""
        return None if value is None else self.enum(value)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps that always come back timezone-aware UTC, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC; SQLite keeps it naive, PostgreSQL as timestamptz."""
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Give back an aware UTC datetime whatever the backend returned."""
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    """Declarative base of every nurture table."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


# Lead columns a caller may set directly; anything else goes to the custom `fields`.
STANDARD_FIELDS = ("first_name", "last_name", "company", "title", "timezone")
IDENTITY_FIELDS = ("email", "external_id", "phone")


class Lead(Base):
    """A person: identity, attributes, consent, stage and the two halves of the score."""

    __tablename__ = "leads"
    # Ids are never handed out twice (SQLite reuses the highest without it): a merged lead's
    # id lives on in links and tokens, as an alias of the survivor.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)  # as written
    # What lookups compare: the address lower-cased, kept in step with `email` by `_keyed`.
    email_key: Mapped[str | None] = mapped_column(String(320), unique=True, index=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    phone: Mapped[str | None] = mapped_column(String(20), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    email_consent: Mapped[bool] = mapped_column(default=True)
    sms_consent: Mapped[bool] = mapped_column(default=False)
    stage: Mapped[Stage] = mapped_column(EnumText(Stage, 20), default=Stage.SUBSCRIBER)
    fit: Mapped[float] = mapped_column(Float, default=0)
    engagement: Mapped[float] = mapped_column(Float, default=0)
    fit_rules: Mapped[dict[str, Any]] = mapped_column(default=dict)
    owner: Mapped[str | None] = mapped_column(String(200))
    sql_crossings: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_activity_at: Mapped[datetime | None]
    decay_due_at: Mapped[datetime | None] = mapped_column(index=True)
    inactive_due_at: Mapped[datetime | None] = mapped_column(index=True)
    mql_at: Mapped[datetime | None]
    sql_at: Mapped[datetime | None]
    erased_at: Mapped[datetime | None]  # personal data erased; the row stays as a tombstone

    @validates("email")
    def _keyed(self, _: str, address: str | None) -> str | None:
        self.email_key = None if address is None else email_key(address)
        return address

    @property
    def score(self) -> float:
        """Total score: fit plus engagement."""
        return self.fit + self.engagement

    @property
    def zone(self) -> str | None:
        """The time zone sends are timed in: the lead's own, else its phone number's area's
        (when that area has one zone), else None (the sending rules' default)."""
        return local_zone(self.timezone, self.phone)

    @property
    def key(self) -> str:
        """The identity people look the lead up by: email, else external id, else phone."""
        return self.email or self.external_id or self.phone or f"lead {self.id}"

    @property
    def full_name(self) -> str:
        """First and last name as people write them; '' when neither is known."""
        return " ".join(part for part in (self.first_name, self.last_name) if part)

    def attribute(self, name: str) -> Any:
        """An attribute by the name rules and conditions use: columns first, then custom fields."""
        if name.startswith("fields.") or name.startswith("attributes."):
            name = name.split(".", 1)[1]
        if name in STANDARD_FIELDS or name in IDENTITY_FIELDS or name in ("stage", "owner"):
            return getattr(self, name)
        if name == "email_domain":
            return self.email.rsplit("@", 1)[1] if self.email else None
        return (self.fields or {}).get(name)


class Event(Base):
    """Something a lead did or that happened to it; the idempotency key makes repeats count once."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_lead_type_time", "lead_id", "type", "occurred_at"),
        # Partial: only the few events not yet processed, so /metrics never scans the table.
        Index(
            "ix_events_unprocessed",
            "status",
            postgresql_where=text("status <> 'processed'"),
            sqlite_where=text("status <> 'processed'"),
        ),
        # Status first: the earliest retry of a failed event is one index seek, however many
        # processed events (retry_at NULL) there are.
        Index("ix_events_retry", "status", "retry_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(32), default="api")
    status: Mapped[EventStatus] = mapped_column(
        EnumText(EventStatus, 12), default=EventStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    retry_at: Mapped[datetime | None]


class ScoreEntry(Base):
    """One change of a lead's score with its rule and reason: the answer to 'why is this an MQL'."""

    __tablename__ = "score_ledger"
    __table_args__ = (Index("ix_ledger_lead_rule_time", "lead_id", "rule", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"))
    kind: Mapped[LedgerKind] = mapped_column(EnumText(LedgerKind, 16))
    rule: Mapped[str] = mapped_column(String(100))
    points: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]


class StageChange(Base):
    """A lifecycle stage transition, kept for the funnel and time-to-SQL."""

    __tablename__ = "stage_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    from_stage: Mapped[Stage] = mapped_column(EnumText(Stage, 20))
    to_stage: Mapped[Stage] = mapped_column(EnumText(Stage, 20))
    reason: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime]


class Enrolment(Base):
    """A lead's run through one sequence: where it stands and when it is next due."""

    __tablename__ = "enrolments"
    __table_args__ = (
        Index("ix_enrolments_due", "status", "next_run_at"),
        Index("ix_enrolments_lead_sequence", "lead_id", "sequence"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    sequence: Mapped[str] = mapped_column(String(100))
    sequence_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[EnrolmentStatus] = mapped_column(
        EnumText(EnrolmentStatus, 16), default=EnrolmentStatus.ACTIVE
    )
    milestone: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer, default=0)
    pass_no: Mapped[int] = mapped_column(Integer, default=1)
    exhausted: Mapped[bool] = mapped_column(default=False)
    next_run_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    enrolled_at: Mapped[datetime]
    milestone_entered_at: Mapped[datetime]
    exited_at: Mapped[datetime | None]
    exit_reason: Mapped[str | None] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(64))
    # In the sequence's holdout group: runs every step, but its sends are skipped.
    holdout: Mapped[bool] = mapped_column(default=False)


class MilestoneVisit(Base):
    """One entry of an enrolment into a milestone, kept for the funnel and the timeline."""

    __tablename__ = "milestone_visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(
        ForeignKey("enrolments.id", ondelete="CASCADE"), index=True
    )
    milestone: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    entered_at: Mapped[datetime]
    # set on a visit of an enrolment not yet flushed: the unit of work inserts both in order
    enrolment: Mapped[Enrolment] = relationship(lazy="raise")


class Delivery(Base):
    """One planned send of one step to one lead; unique per (enrolment, step, pass)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("enrolment_id", "step", "pass_no", name="uq_delivery_step_pass"),
        Index("ix_deliveries_due", "status", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolments.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    sequence: Mapped[str] = mapped_column(String(100))
    milestone: Mapped[str] = mapped_column(String(100))
    step: Mapped[str] = mapped_column(String(200))  # the step's stable id within its milestone
    pass_no: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(100))
    variant: Mapped[str | None] = mapped_column(String(100))  # the step's variant drawn
    status: Mapped[DeliveryStatus] = mapped_column(
        EnumText(DeliveryStatus, 12), default=DeliveryStatus.PLANNED
    )
    planned_at: Mapped[datetime]
    due_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None]
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), index=True)
    subject: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)


class VariantPick(Base):
    """The variant every later lead of a step gets: its winner rule's decision, or a pick by hand.

    One row per step, so the automatic decision is taken once; a pick by hand overwrites it.
    """

    __tablename__ = "variant_picks"
    __table_args__ = (
        UniqueConstraint("sequence", "milestone", "step", name="uq_variant_pick_step"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence: Mapped[str] = mapped_column(String(100))
    milestone: Mapped[str] = mapped_column(String(100))
    step: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(100))
    kind: Mapped[PickKind] = mapped_column(EnumText(PickKind, 8))
    figures: Mapped[dict[str, Any]]  # what the test saw: sends and successes per variant, p
    reason: Mapped[str] = mapped_column(Text)
    picked_at: Mapped[datetime]


class Handoff(Base):
    """The one record of a lead crossing the SQL threshold, with the reasons sales needs."""

    __tablename__ = "handoffs"
    __table_args__ = (
        UniqueConstraint("lead_id", "crossing", name="uq_handoff_crossing"),
        Index("ix_handoffs_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    crossing: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    score: Mapped[dict[str, Any]]
    reasons: Mapped[dict[str, Any]]
    owner: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[HandoffStatus] = mapped_column(
        EnumText(HandoffStatus, 12), default=HandoffStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    owner_notified_at: Mapped[datetime | None]


class WorkflowVersion(Base):
    """One immutable content of a workflow file, so any process can run what a lead is pinned to."""

    __tablename__ = "workflow_versions"
    __table_args__ = (UniqueConstraint("kind", "name", "hash", name="uq_workflow_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[VersionKind] = mapped_column(EnumText(VersionKind, 12))
    name: Mapped[str] = mapped_column(String(100))
    hash: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    first_seen_at: Mapped[datetime]


class VersionMove(Base):
    """An enrolment moved to a new version of its sequence by `nurture apply`, for its timeline."""

    __tablename__ = "version_moves"

    id: Mapped[int] = mapped_column(primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(
        ForeignKey("enrolments.id", ondelete="CASCADE"), index=True
    )
    from_version: Mapped[str] = mapped_column(String(64))
    to_version: Mapped[str] = mapped_column(String(64))
    from_place: Mapped[str] = mapped_column(String(300))
    to_place: Mapped[str] = mapped_column(String(300))
    note: Mapped[str] = mapped_column(Text)
    moved_at: Mapped[datetime]


class Suppression(Base):
    """An address that must not be messaged on a channel (unsubscribe, bounce, STOP)."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_suppression"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class TopicOptOut(Base):
    """An email topic a lead left (the unsubscribe page, or a `topic_unsubscribed` event).

    Sends of sequences with that topic are skipped; the lead keeps getting the others.
    """

    __tablename__ = "topic_opt_outs"
    __table_args__ = (UniqueConstraint("lead_id", "topic", name="uq_topic_opt_out"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    topic: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(32))  # the event's source: unsubscribe, api, ...
    created_at: Mapped[datetime]


class BacktestJob(Base):
    """A backtest asked for through the API, run by a worker; its report once done.

    `due_at` is when the scheduler hands it to a worker again: a queued job whose message was
    lost, or a running one whose worker died, runs again (a backtest only reads the live
    database), up to `MAX_ATTEMPTS` times.
    """

    __tablename__ = "backtest_jobs"
    __table_args__ = (Index("ix_backtest_jobs_due", "status", "due_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sequence: Mapped[str] = mapped_column(String(100))
    since: Mapped[str] = mapped_column(String(20))  # as asked: "30d"
    leads: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[JobStatus] = mapped_column(EnumText(JobStatus, 12), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    report: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)


class Erasure(Base):
    """The log of one erasure: which tombstone, why, through what, and what it scrubbed.

    It holds no personal data itself: the lead's identity is gone by the time it is written.
    """

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    reason: Mapped[ErasureReason] = mapped_column(EnumText(ErasureReason, 12))
    via: Mapped[str] = mapped_column(String(32))  # cli, api, scheduler
    erased_at: Mapped[datetime]
    summary: Mapped[dict[str, Any]]  # rows scrubbed or removed, by table


class Visitor(Base):
    """An anonymous browser or device (snippet cookie, Segment anonymousId) and, once it is
    identified, the lead it turned out to be."""

    __tablename__ = "visitors"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), index=True
    )
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    identified_at: Mapped[datetime | None]


class VisitorEvent(Base):
    """An event of a visitor not yet identified: kept here, unscored, until the visitor names a
    lead, then recorded on that lead once (by its idempotency key) and removed."""

    __tablename__ = "visitor_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    visitor_id: Mapped[str] = mapped_column(
        ForeignKey("visitors.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(64))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(32))


class Consent(Base):
    """Proof of one consent a lead gave on a form: what it was shown word for word, where, when,
    from which address and browser, and for double opt-in when and whence it confirmed."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(8))
    topic: Mapped[str] = mapped_column(String(100))
    form: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)  # the consent text as shown
    status: Mapped[ConsentStatus] = mapped_column(EnumText(ConsentStatus, 12))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    page_url: Mapped[str | None] = mapped_column(String(2000))  # where the form was
    requested_at: Mapped[datetime]
    confirmation_sent_at: Mapped[datetime | None]
    confirmed_at: Mapped[datetime | None]
    confirm_ip: Mapped[str | None] = mapped_column(String(64))
    confirm_user_agent: Mapped[str | None] = mapped_column(String(500))


class LeadAlias(Base):
    """An identity of a lead merged into another: it still names the survivor.

    `value` is what lookups compare (an address's lower-cased key), so a call naming the
    merged lead by its old email or phone finds the survivor.
    """

    __tablename__ = "lead_aliases"
    __table_args__ = (UniqueConstraint("field", "value", name="uq_lead_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    field: Mapped[str] = mapped_column(String(16))  # email, external_id or phone
    value: Mapped[str] = mapped_column(String(320))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    merged_lead: Mapped[int]  # the id the merged lead had, for the timeline
    merged_at: Mapped[datetime]


class LeadConflict(Base):
    """A call named an identity of another lead (merge: ask): the two may be one person.

    Listed by `nurture leads conflicts` until the two are merged (either one's deletion
    removes the row).
    """

    __tablename__ = "lead_conflicts"
    __table_args__ = (
        UniqueConstraint("lead_id", "other_id", "field", name="uq_lead_conflict"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    field: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    times: Mapped[int] = mapped_column(Integer, default=1)
