"""Lead identity and attributes: normalise, find, create and lock leads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from engine.db import is_postgres
from engine.errors import InvalidLeadError, UnknownLeadError
from engine.models import Lead

_EMAIL = re.compile(
    r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
# Lead columns a caller may set directly; anything else goes to the custom `fields`.
STANDARD_FIELDS = ("first_name", "last_name", "company", "title", "timezone")
IDENTITY_FIELDS = ("email", "external_id", "phone")


def normalise_email(value: str) -> str:
    """Lower-case and trim an email address; InvalidLeadError when it is not one."""
    email = value.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidLeadError(f"invalid email address {value!r}")
    return email


def normalise_phone(value: str) -> str:
    """Reduce a phone number to E.164 (`+` and digits); InvalidLeadError otherwise."""
    phone = re.sub(r"[\s().-]", "", value.strip())
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _PHONE.match(phone):
        raise InvalidLeadError(f"invalid phone number {value!r}: use E.164, e.g. +14155550100")
    return phone


@dataclass(frozen=True)
class Identity:
    """How a caller names a lead: by email, external id or phone, in that order of preference."""

    email: str | None = None
    external_id: str | None = None
    phone: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Identity:
        """Pick and normalise the identity keys of `data`; at least one is required."""
        email = data.get("email")
        phone = data.get("phone")
        external_id = data.get("external_id")
        identity = cls(
            email=normalise_email(str(email)) if email else None,
            external_id=str(external_id).strip() if external_id else None,
            phone=normalise_phone(str(phone)) if phone else None,
        )
        if not (identity.email or identity.external_id or identity.phone):
            raise InvalidLeadError("a lead needs an email, an external_id or a phone number")
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


def apply_attributes(lead: Lead, identity: Identity, attributes: Mapping[str, Any]) -> bool:
    """Copy identity and attributes onto a lead; True when anything fit rules read changed."""
    changed = False
    for name in IDENTITY_FIELDS:
        value = getattr(identity, name)
        if value and getattr(lead, name) != value:
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


def attribute(lead: Lead, name: str) -> Any:
    """Read a lead attribute by name for rules and conditions: columns first, then custom fields."""
    if name.startswith("fields.") or name.startswith("attributes."):
        name = name.split(".", 1)[1]
    if name in STANDARD_FIELDS or name in IDENTITY_FIELDS or name in ("stage", "owner"):
        return getattr(lead, name)
    if name == "email_domain":
        return lead.email.rsplit("@", 1)[1] if lead.email else None
    return (lead.fields or {}).get(name)
