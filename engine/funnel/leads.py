"""Lead identity and attributes: normalise, find, create and lock leads."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, literal, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, object_session

from engine.contacts import email_key
from engine.db import is_postgres
from engine.errors import InvalidLeadError, UnknownLeadError
from engine.funnel.lead_fields import NO_IDENTITY, check_identity, lookup_value, record_region
from engine.models import IDENTITY_FIELDS, STANDARD_FIELDS, Lead, LeadAlias, Visitor


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
        region = record_region(data)
        identity = cls(**{k: check_identity(k, v, region) if v else None for k, v in given.items()})
        if not (identity.email or identity.external_id or identity.phone):
            raise InvalidLeadError(NO_IDENTITY)
        return identity

    def key(self) -> tuple[str, str]:
        """The identity key that names the lead and the value lookups compare."""
        name = "email" if self.email else "external_id" if self.external_id else "phone"
        return name, lookup_value(name, getattr(self, name) or "")

    def keys(self) -> list[tuple[str, str]]:
        """Every identity key given, as lookups compare them."""
        return [
            (name, lookup_value(name, value))
            for name in IDENTITY_FIELDS
            if (value := getattr(self, name))
        ]


# The column each identity key is looked up in: an email by its lower-cased key.
_LOOKUP = {"email": "email_key", "external_id": "external_id", "phone": "phone"}
# Leads whose lookup column holds one of the `values` parameter, in id order (the order locks
# are taken).
_BY = {
    name: select(Lead)
    .where(getattr(Lead, column).in_(bindparam("values", expanding=True)))
    .order_by(Lead.id)
    for name, column in _LOOKUP.items()
}
# Leads that a merged lead's identity (an alias) now names; "id" names it by the merged
# lead's id (in tokens and links made before the merge).
_BY_ALIAS = {
    name: select(Lead)
    .join(LeadAlias, LeadAlias.lead_id == Lead.id)
    .where(LeadAlias.field == name, LeadAlias.value.in_(bindparam("values", expanding=True)))
    .order_by(Lead.id)
    for name in (*_LOOKUP, "id")
}
_ALIASES = select(LeadAlias.value, LeadAlias.lead_id).where(
    LeadAlias.field == bindparam("field"), LeadAlias.value.in_(bindparam("values", expanding=True))
)
_BY_ID = select(Lead).where(Lead.id == bindparam("id"))
_BY_IDS = select(Lead).where(Lead.id.in_(bindparam("ids", expanding=True))).order_by(Lead.id)


@cache
def _locked(query: Select[Lead]) -> Select[Lead]:
    return query.with_for_update()


def _query(session: Session, query: Select[Lead], lock: bool) -> Select[Lead]:
    return _locked(query) if lock and is_postgres(session) else query


def find_lead(session: Session, identity: Identity, *, lock: bool = False) -> Lead | None:
    """The lead with this identity, row-locked on PostgreSQL when `lock` (None if unknown);
    an identity of a lead merged into another names the survivor."""
    column, value = identity.key()
    lead = session.scalars(_query(session, _BY[column], lock), {"values": [value]}).one_or_none()
    if lead is None:
        query = _query(session, _BY_ALIAS[column], lock)
        lead = session.scalars(query, {"values": [value]}).one_or_none()
    return lead


def get_lead(session: Session, identity: Identity, *, lock: bool = False) -> Lead:
    """The lead with this identity; UnknownLeadError names it when nobody has it."""
    lead = find_lead(session, identity, lock=lock)
    if lead is None:
        column, value = identity.key()
        raise UnknownLeadError(f"no lead with {column} {value!r}")
    return lead


def lead_by_id(session: Session, lead_id: int) -> Lead | None:
    """The lead with this id, or the lead it was merged into (a token or link made before a
    merge names the merged lead's id); None when neither exists."""
    lead = session.get(Lead, lead_id)
    if lead is None:
        lead = session.scalars(_BY_ALIAS["id"], {"values": [str(lead_id)]}).one_or_none()
    return lead


def lock_lead(session: Session, lead_id: int) -> Lead:
    """Load a lead by id holding its row lock, so one process at a time changes its score."""
    return session.scalars(_query(session, _BY_ID, True), {"id": lead_id}).one()


def lock_leads_and_visitors(session: Session, lead_ids: Collection[int]) -> dict[int, Lead]:
    """`lock_leads`, after the leads' tracked visitors in id order: the order stitching takes
    them in (`visitors.take`), so a beacon and an erasure or a merge of one person wait for
    each other instead of deadlocking."""
    session.execute(
        select(Visitor.id)
        .where(Visitor.lead_id.in_(sorted(set(lead_ids))))
        .order_by(Visitor.id)
        .with_for_update()
    )
    return lock_leads(session, lead_ids)


def lock_leads(session: Session, lead_ids: Collection[int]) -> dict[int, Lead]:
    """Load leads by id holding their row locks, taken in id order in one statement."""
    query = _query(session, _BY_IDS, True)
    return {lead.id: lead for lead in session.scalars(query, {"ids": sorted(set(lead_ids))})}


def ensure_leads(
    session: Session, wanted: Sequence[tuple[Identity, str]], now: datetime
) -> list[tuple[Lead, bool]]:
    """Find or create the leads of many (identity, stage) pairs at once, row-locked.

    One locking read per identity column in id order, one multi-row insert-if-absent for the
    unknown ones (each with the stage of the first pair naming it), one read of those. A lead
    is `created` (True) for the first pair only, as if the pairs came one by one.
    """
    keys = [identity.key() for identity, _ in wanted]
    found = _load(session, keys)
    missing: dict[tuple[str, str], tuple[str, str]] = {}  # key: (value as written, stage)
    for key, (identity, stage) in zip(keys, wanted, strict=True):
        if key not in found:
            missing.setdefault(key, (getattr(identity, key[0]), stage))
    created: set[tuple[str, str]] = set()
    if missing:
        created = _insert(session, missing, now)
        found.update(_load(session, list(missing)))
    result = []
    for key in keys:
        if key not in found:  # a conflicting insert that then vanished: deleted meanwhile
            raise UnknownLeadError(f"no lead with {key[0]} {key[1]!r}")
        result.append((found[key], key in created))
        created.discard(key)
    return result


def _load(session: Session, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Lead]:
    """The leads these (column, value) keys name, locked, one statement per column; keys
    no lead holds are looked up among the aliases of merged leads (read after the locking
    read, so a merge that removed a lead meanwhile is seen with the alias it left)."""
    found: dict[tuple[str, str], Lead] = {}
    for column in IDENTITY_FIELDS:
        values = sorted({value for name, value in keys if name == column})
        if values:
            rows = session.scalars(_query(session, _BY[column], True), {"values": values})
            found.update(((column, getattr(lead, _LOOKUP[column])), lead) for lead in rows)
    for column in IDENTITY_FIELDS:
        wanted = {value for name, value in keys if name == column}
        values = sorted(wanted - {value for name, value in found if name == column})
        seen: dict[str, int] = {}
        while values:
            aliases = dict(session.execute(_ALIASES, {"field": column, "values": values}).all())
            leads = lock_leads(session, aliases.values())
            values = []  # those whose lead was merged on while this waited: read again
            for value, owner in aliases.items():
                if owner not in leads and seen.get(value) != owner:
                    values.append(value)
                elif owner in leads and leads[owner].erased_at is None:  # erased: alias gone
                    found[(column, value)] = leads[owner]
            seen |= aliases
    return found


def _insert(
    session: Session, missing: dict[tuple[str, str], tuple[str, str]], now: datetime
) -> set[tuple[str, str]]:
    """Insert the missing leads unless another transaction just did; the keys inserted here."""
    insert = pg_insert if is_postgres(session) else sqlite_insert
    inserted: set[tuple[str, str]] = set()
    for name, column in _LOOKUP.items():
        rows = [
            _new_lead(name, value, stage, now)
            for (key_name, _), (value, stage) in sorted(missing.items())
            if key_name == name
        ]
        if rows:
            # Any conflict: an address's key and its written form are both unique, and two
            # transactions may insert the same address at once.
            statement = insert(Lead).on_conflict_do_nothing()
            values = session.scalars(statement.returning(getattr(Lead, column)), rows)
            inserted.update((name, value) for value in values)
    return inserted


def _new_lead(name: str, value: str, stage: str, now: datetime) -> dict[str, Any]:
    keys = {"email": value, "email_key": email_key(value)} if name == "email" else {name: value}
    return {
        **keys,
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


def holder(session: Session, name: str, value: str) -> int | None:
    """The id of the lead an identity value (as lookups compare it) names, by its own identity
    or as an alias of a lead merged into it; None when it names nobody."""
    column = getattr(Lead, _LOOKUP[name])
    own = select(Lead.id).where(column == value).add_columns(literal(0).label("aliased"))
    aliased = select(LeadAlias.lead_id, literal(1)).where(
        LeadAlias.field == name, LeadAlias.value == value
    )
    # one round trip for both; a lead's own identity first
    row = session.execute(own.union_all(aliased).order_by(text("aliased")).limit(1)).first()
    return None if row is None else int(row[0])


def claims(lead: Lead, identity: Identity) -> list[tuple[str, str, int]]:
    """The identity values a call gives `lead` that already name a lead: (key, value, the
    lead's id), that id being the lead's own when the value is an alias of it."""
    session = object_session(lead)
    if session is None or lead.id is None:
        return []
    return [
        (name, value, owner)
        for name, value in identity.keys()
        if getattr(lead, _LOOKUP[name]) != value
        and (owner := holder(session, name, value)) is not None
    ]


def apply_attributes(
    lead: Lead,
    identity: Identity,
    attributes: Mapping[str, Any],
    leave: Collection[str] = (),
) -> bool:
    """Copy identity and attributes onto a lead; True when anything fit rules read changed.

    The identity keys in `leave` stay as they are: the caller found them taken (`claims`).
    """
    changed = False
    for name in IDENTITY_FIELDS:
        value = getattr(identity, name)
        # an address written in other letter cases is the same address: kept as first written
        if (
            value
            and name not in leave
            and getattr(lead, _LOOKUP[name]) != lookup_value(name, value)
        ):
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
