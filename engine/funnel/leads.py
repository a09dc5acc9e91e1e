"""Lead identity and attributes: normalise, find, create and lock leads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, object_session

from engine.db import is_postgres
from engine.errors import InvalidLeadError, LeadConflictError, UnknownLeadError
from engine.funnel.lead_fields import NO_IDENTITY, check_identity
from engine.models import IDENTITY_FIELDS, STANDARD_FIELDS, Lead


@dataclass(frozen=True)
class Identity:
    """How a caller names a lead: by email, external id or phone, in that order of preference."""

    email: str | None = None
    external_id: str | None = None
    phone: str | None = None

    @classmethod
    def of(cls, lead: Lead) -> Identity:
        """The stored (already normalised) identity of a lead."""
        return cls(email=lead.email, external_id=lead.external_id, phone=lead.phone)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Identity:
        """Pick and normalise the identity keys of `data`; at least one is required."""
        given = {name: data.get(name) for name in IDENTITY_FIELDS}
        identity = cls(**{k: check_identity(k, v) if v else None for k, v in given.items()})
        if not (identity.email or identity.external_id or identity.phone):
            raise InvalidLeadError(NO_IDENTITY)
        return identity

    def key(self) -> tuple[str, str]:
        """The column and value that identify the lead."""
        if self.email:
            return "email", self.email
        if self.external_id:
            return "external_id", self.external_id
        return "phone", self.phone or ""


def find_lead(session: Session, identity: Identity, *, lock: bool = False) -> Lead | None:
    """The lead with this identity, row-locked on PostgreSQL when `lock` (None if unknown)."""
    column, value = identity.key()
    query = select(Lead).where(getattr(Lead, column) == value)
    if lock and is_postgres(session):
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def get_lead(session: Session, identity: Identity, *, lock: bool = False) -> Lead:
    """The lead with this identity; UnknownLeadError names it when nobody has it."""
    lead = find_lead(session, identity, lock=lock)
    if lead is None:
        column, value = identity.key()
        raise UnknownLeadError(f"no lead with {column} {value!r}")
    return lead


def lock_lead(session: Session, lead_id: int) -> Lead:
    """Load a lead by id holding its row lock, so one process at a time changes its score."""
    query = select(Lead).where(Lead.id == lead_id)
    if is_postgres(session):
        query = query.with_for_update()
    return session.scalars(query).one()


def ensure_lead(
    session: Session, identity: Identity, now: datetime, stage: str
) -> tuple[Lead, bool]:
    """Find or create the lead race-free (insert-if-absent), row-locked; True when created."""
    existing = find_lead(session, identity, lock=True)
    if existing is not None:  # the common case: one locking read, no insert attempted
        return existing, False
    column, value = identity.key()
    values = {
        column: value,
        "stage": stage,
        "fields": {},
        "fit_rules": {},
        "created_at": now,
        "updated_at": now,
        "email_consent": True,
        "sms_consent": False,
        "fit": 0.0,
        "engagement": 0.0,
        "sql_crossings": 0,
    }
    insert = pg_insert if is_postgres(session) else sqlite_insert
    statement = (
        insert(Lead)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[column])
        .returning(Lead.id)
    )
    created = session.scalar(statement) is not None
    return get_lead(session, identity, lock=True), created


def _ensure_unclaimed(lead: Lead, name: str, value: str) -> None:
    """An email, phone or external id names one lead: refuse to give it to a second one."""
    session = object_session(lead)
    column = getattr(Lead, name)
    owner = (
        session.scalar(select(Lead.id).where(column == value, Lead.id != lead.id))
        if session is not None and lead.id is not None
        else None
    )
    if owner is not None:
        raise LeadConflictError(f"{value!r} belongs to another lead (id {owner})", name)


def apply_attributes(lead: Lead, identity: Identity, attributes: Mapping[str, Any]) -> bool:
    """Copy identity and attributes onto a lead; True when anything fit rules read changed."""
    changed = False
    for name in IDENTITY_FIELDS:
        value = getattr(identity, name)
        if value and getattr(lead, name) != value:
            _ensure_unclaimed(lead, name, value)
            setattr(lead, name, value)
            changed = True
    fields = dict(lead.fields or {})
    for name, value in attributes.items():
        if name in IDENTITY_FIELDS:
            continue
        if name in STANDARD_FIELDS:
            if getattr(lead, name) != value:
                setattr(lead, name, value)
                changed = True
        elif name in ("email_consent", "sms_consent"):
            setattr(lead, name, bool(value))
        elif fields.get(name) != value:
            fields[name] = value
            changed = True
    if fields != (lead.fields or {}):
        lead.fields = fields
    return changed
