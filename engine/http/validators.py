"""Field validators and the Annotated types request bodies are built from.

What PostgreSQL and the engine can take (storable text and JSON, email and phone syntax) is
the funnel's rule in `engine.funnel.leads`, reused here with its InvalidLeadError turned into
the ValueError pydantic reports as a 422; only HTTP constraints (lengths, RFC 3339 times, IANA
time zones, scalar custom fields) live in this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, TypeVar
from zoneinfo import available_timezones

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    StringConstraints,
    WithJsonSchema,
)

from engine.errors import InvalidLeadError
from engine.funnel.leads import normalise_email, normalise_phone, storable, storable_json
from engine.models import IDENTITY_FIELDS, STANDARD_FIELDS

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
# What the funnel's messages are prefixed with; a 422 names the field in its loc instead.
_WHAT = "value"


@contextmanager
def _as_value_error() -> Iterator[None]:
    """Re-raise the funnel's InvalidLeadError as a ValueError, without the `value: ` prefix."""
    try:
        yield
    except InvalidLeadError as error:
        raise ValueError(str(error).removeprefix(f"{_WHAT}: ")) from error


def storable_text(value: str) -> str:
    """Text PostgreSQL stores as sent: no NUL characters, no lone surrogates."""
    with _as_value_error():
        return storable(value, _WHAT)


def _storable_json(value: _J) -> _J:
    """JSON both databases keep as sent: storable text, finite numbers, 64-bit ints, 32 deep."""
    with _as_value_error():
        storable_json(value, _WHAT)
    return value


def _email(value: str) -> str:
    """A storable email address, trimmed and lower-cased."""
    with _as_value_error():
        return normalise_email(storable(value, _WHAT))


def _phone(value: str) -> str:
    """A storable phone number, reduced to E.164."""
    with _as_value_error():
        return normalise_phone(storable(value, _WHAT))


def _external_id(value: str) -> str:
    """A storable external id, trimmed and not blank."""
    value = storable_text(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


@cache
def _zones() -> frozenset[str]:
    """The IANA time zone names this system knows."""
    return frozenset(available_timezones())


def _timezone(value: str) -> str:
    """An IANA time zone name."""
    if value not in _zones():
        raise ValueError(f"unknown time zone {value!r}: use an IANA name, e.g. Europe/Berlin")
    return value


def _scalar(value: Any) -> Any:
    """A custom field is one value fit rules can compare: text, a number, true/false or null."""
    if isinstance(value, str) and len(value) > MAX_FIELD_TEXT:
        raise ValueError(f"text must be at most {MAX_FIELD_TEXT} characters")
    if not (value is None or isinstance(value, str | int | float)):
        raise ValueError("must be a string, a number, true, false or null")
    return _storable_json(value)


def _rfc3339(value: Any) -> Any:
    """Refuse a time without a zone or in any other format than RFC 3339, before parsing."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be ISO 8601 with a time zone, e.g. 2026-03-02T10:00:00Z")
    return value


def _since_1970(value: datetime) -> datetime:
    """The time in UTC, no earlier than 1970."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError as error:
        raise ValueError("is out of range") from error
    if utc.year < 1970:
        raise ValueError("must not be before 1970")
    return utc


Short = Annotated[str, StringConstraints(max_length=200), AfterValidator(storable_text)]
Reason = Annotated[
    str, StringConstraints(min_length=1, max_length=500), AfterValidator(storable_text)
]
EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable_text)
]
Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(_email)]
Phone = Annotated[str, StringConstraints(max_length=32), AfterValidator(_phone)]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_external_id)
]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timezone)]
EventType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=64)]
FieldName = Annotated[
    str, StringConstraints(min_length=1, max_length=100), AfterValidator(storable_text)
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
