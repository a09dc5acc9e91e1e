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
from sqlalchemy.orm import Session, object_session

from engine.db import is_postgres
from engine.errors import InvalidLeadError, UnknownLeadError
from engine.models import IDENTITY_FIELDS, STANDARD_FIELDS, Lead

_EMAIL = re.compile(
    r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_TEXT = 200  # the length of the lead's text columns (timezone: 64)
MAX_JSON_DEPTH = 32


def storable(value: str, what: str, max_length: int | None = None) -> str:
    """Text both databases keep as given: no NUL, no lone surrogates, within the column."""
    if "\x00" in value:
        raise InvalidLeadError(f"{what}: must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidLeadError(f"{what}: must be valid Unicode text") from error
    if max_length is not None and len(value) > max_length:
        raise InvalidLeadError(f"{what}: must be at most {max_length} characters")
    return value


def storable_json(value: Any, what: str) -> Any:
    """JSON both databases keep: storable text, finite numbers, 64-bit integers, 32 levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidLeadError(f"{what}: must not nest deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            storable(item, what)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -(2**63) <= item < 2**63:
                raise InvalidLeadError(f"{what}: integers must fit in 64 bits")
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise InvalidLeadError(f"{what}: numbers must be finite")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidLeadError(f"{what}: keys must be text")
                storable(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        else:
            raise InvalidLeadError(f"{what}: {type(item).__name__} is not JSON")
    return value


def check_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Lead attributes the columns can hold; InvalidLeadError naming the first that cannot."""
    for name, value in attributes.items():
        if name in STANDARD_FIELDS:
            if value is not None and not isinstance(value, str):
                raise InvalidLeadError(f"{name}: must be text, not {type(value).__name__}")
            if value is not None:
                storable(value, name, 64 if name == "timezone" else MAX_TEXT)
        elif name in ("email_consent", "sms_consent"):
            if not isinstance(value, bool):
                raise InvalidLeadError(f"{name}: must be true or false, not {value!r}")
        elif name not in IDENTITY_FIELDS:
            if not isinstance(name, str):
                raise InvalidLeadError(f"custom field names must be text, not {name!r}")
            storable(name, "custom field name", 100)
            storable_json(value, name)
    return dict(attributes)


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
    def of(cls, lead: Lead) -> Identity:
        """The stored (already normalised) identity of a lead."""
        return cls(email=lead.email, external_id=lead.external_id, phone=lead.phone)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Identity:
        """Pick and normalise the identity keys of `data`; at least one is required."""
        email = data.get("email")
        phone = data.get("phone")
        external_id = data.get("external_id")
        identity = cls(
            email=storable(normalise_email(str(email)), "email") if email else None,
            external_id=storable(str(external_id).strip(), "external_id", MAX_TEXT)
            if external_id
            else None,
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
        raise InvalidLeadError(f"{name} {value!r} belongs to another lead (id {owner})")


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
