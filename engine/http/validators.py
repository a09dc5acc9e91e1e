"""Field validators and the Annotated types request bodies are built from.

What a lead may hold is the funnel's rule in `engine.funnel.lead_fields`, reused here with its
InvalidLeadError turned into the ValueError pydantic reports as a 422. Each type also states
its rule in the OpenAPI document (the patterns of emails, phones and text, the time zone names,
number bounds), so a body the document allows is a body the server takes, and the reverse.
Only HTTP rules (RFC 3339 times, event ids and types, reasons) live in this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    SkipValidation,
    StringConstraints,
    WithJsonSchema,
)
from typing_extensions import TypeAliasType

from engine.errors import InvalidLeadError
from engine.funnel.lead_fields import (
    EMAIL_MAX,
    EMAIL_PATTERN,
    EXTERNAL_ID_PATTERN,
    FIELD_NAME_MAX,
    FIELD_TEXT_MAX,
    INT_MAX,
    INT_MIN,
    PHONE_MAX,
    PHONE_PATTERN,
    RESERVED_FIELDS,
    TEXT_MAX,
    TEXT_PATTERN,
    ZONE_MAX,
    check_field_name,
    check_field_value,
    check_zone,
    normalise_email,
    normalise_external_id,
    normalise_phone,
    record_region,
    storable,
    storable_json,
    zones,
)

# RFC 3339 with a zone, written in 1970 or later (the OpenAPI `format` checks the calendar).
RFC3339_PATTERN = (
    r"^(?:19[7-9][0-9]|[2-9][0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
# The field name funnel rules are given here: a 422 names the field in its loc, and shows only
# the reason (InvalidLeadError.reason).
_WHAT = "value"
NO_NUL = {"not": {"pattern": "\\x00"}}  # a JSON Schema for text without NUL characters


def _or_empty(pattern: str) -> str:
    """An anchored pattern that also matches "" (not given)."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


# Formats the server checks beyond any pattern, each by the library named: an address by
# email-validator (its domain's labels, IDNA), a number by phonenumbers (its country's plan).
EMAIL_FORMAT, PHONE_FORMAT = "email-validator", "phonenumbers"


def _text_schema(
    max_length: int, pattern: str = TEXT_PATTERN, min_length: int = 0, form: str | None = None
) -> Any:
    """The OpenAPI entry of a string the server checks with `pattern`, these lengths and, when
    given, the format `form`."""
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length, "pattern": pattern}
    if min_length:
        schema["minLength"] = min_length
    if form:
        schema["format"] = form
    return WithJsonSchema(schema)


@contextmanager
def _as_value_error() -> Iterator[None]:
    """Re-raise the funnel's InvalidLeadError as a ValueError, its reason without the field."""
    try:
        yield
    except InvalidLeadError as error:
        raise ValueError(error.reason) from error


def storable_text(value: str) -> str:
    """Text PostgreSQL stores as sent: no NUL characters, no lone surrogates."""
    with _as_value_error():
        return storable(value, _WHAT)


def _unless_empty(check: Callable[[str], str]) -> Callable[[str], str]:
    """A funnel rule for a value that may be "" (not given), as a pydantic validator."""

    def validate(value: str) -> str:
        if value == "":
            return value
        with _as_value_error():
            return check(value)

    validate.__doc__ = check.__doc__
    return validate


def _field_name(name: str) -> str:
    """A custom field name: storable, 1 to 100 characters, not a lead attribute's."""
    with _as_value_error():
        return check_field_name(name)


def _field_value(value: Any) -> Any:
    """A custom field is one value fit rules can compare: text, a number, true/false or null."""
    with _as_value_error():
        return check_field_value(value, _WHAT)


def _properties(value: Any) -> dict[str, Any]:
    """An object both databases keep as sent: storable text, numbers in range, 32 levels deep."""
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    with _as_value_error():
        storable_json(value, _WHAT)
    return value


def _rfc3339(value: Any) -> Any:
    """Refuse a time without a zone, before 1970 or in any other format than RFC 3339."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be ISO 8601 with a time zone, from 1970 on, e.g. 2026-03-02T10:00:00Z"
        )
    return value


_JSON_NUMBER = {"type": "number", "minimum": INT_MIN, "maximum": INT_MAX}

Short = Annotated[
    str,
    StringConstraints(max_length=TEXT_MAX),
    AfterValidator(storable_text),
    _text_schema(TEXT_MAX),
]
Reason = Annotated[
    str,
    StringConstraints(min_length=1, max_length=500),
    AfterValidator(storable_text),
    _text_schema(500, min_length=1),
]
EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(storable_text),
    _text_schema(200, min_length=1),
]
Email = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX),
    AfterValidator(_unless_empty(normalise_email)),
    _text_schema(EMAIL_MAX, _or_empty(EMAIL_PATTERN), form=EMAIL_FORMAT),
]
# Read by `read_phone` once the record's country is known (the lead body's validator).
Phone = Annotated[
    str,
    StringConstraints(max_length=PHONE_MAX),
    _text_schema(PHONE_MAX, _or_empty(PHONE_PATTERN), form=PHONE_FORMAT),
]


def read_phone(value: str, record: Mapping[str, Any]) -> str:
    """A phone number in E.164, written the national way of the record's `country` (a custom
    field) or else of the installation's region; "" stays not given."""
    if value == "":
        return value
    with _as_value_error():
        return normalise_phone(value, region=record_region(record))
ExternalId = Annotated[
    str,
    StringConstraints(max_length=TEXT_MAX),
    AfterValidator(_unless_empty(normalise_external_id)),
    _text_schema(TEXT_MAX, _or_empty(EXTERNAL_ID_PATTERN)),
]
TimeZone = Annotated[
    str,
    StringConstraints(max_length=ZONE_MAX),
    AfterValidator(_unless_empty(check_zone)),
    WithJsonSchema({"type": "string", "enum": ["", *sorted(zones())]}),
]
EventType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=64)]
FieldName = Annotated[
    str,
    AfterValidator(_field_name),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": FIELD_NAME_MAX,
            "not": {"anyOf": [NO_NUL["not"], {"enum": sorted(RESERVED_FIELDS)}]},
        }
    ),
]
FieldValue = Annotated[
    Any,
    AfterValidator(_field_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": FIELD_TEXT_MAX, "pattern": TEXT_PATTERN},
                _JSON_NUMBER,
                {"type": "boolean"},
                {"type": "null"},
            ]
        }
    ),
]
# JSON as both databases keep it, for the OpenAPI document (validated by `_properties`).
_JsonText = Annotated[str, WithJsonSchema({"type": "string", "pattern": TEXT_PATTERN})]
_JsonKey = Annotated[str, WithJsonSchema({"type": "string", **NO_NUL})]
_JsonNumber = Annotated[float, WithJsonSchema(_JSON_NUMBER)]
JsonValue = TypeAliasType(
    "JsonValue",
    "_JsonText | _JsonNumber | bool | None | list[JsonValue] | dict[_JsonKey, JsonValue]",
)
Properties = Annotated[SkipValidation[dict[_JsonKey, JsonValue]], AfterValidator(_properties)]
# Converted to UTC by the route, once it is known not to lie beyond the server's tomorrow.
OccurredAt = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
LeadKey = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        description="A numeric lead id, an email address, a +E.164 phone number or an external "
        "id; a key that names nobody (or cannot name anyone) is a 404.",
    ),
]


def json_integer(value: Any) -> Any:
    """A JSON integer, written 7 or 7.0 (both are one in JSON Schema); never true or false.

    Goes after a strict `Field` with the bounds (`Annotated[int, Field(strict=True, ge=1),
    BeforeValidator(json_integer)]`), so the document states the bounds as numbers."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, not true or false")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
