"""What a lead record may hold: one set of rules for the API, the CLI and file imports.

Each rule takes a value as given and returns it as stored (trimmed, an address's domain
lower-cased, a phone number in E.164, read by `engine.contacts`) or raises InvalidLeadError
naming the field. `check_lead` applies them all to one flat record
(identity, attributes, consent, custom fields); `check_attribute` is the rule for one
attribute. An empty string for an identity key or the time zone means "not given".

The patterns are written in the common subset of Python and ECMA-262 regular expressions
(no `\\s` or `\\d`, whose meanings differ), so the OpenAPI document states them; the server
also checks addresses and numbers against their standards (a domain's labels, a country's
numbering plan), which no pattern states.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from engine.contacts import check_region, email_address, email_key, phone_number
from engine.errors import InvalidLeadError
from engine.models import IDENTITY_FIELDS, STANDARD_FIELDS

TEXT_MAX = 200  # names, company, title, external id: the lead's text columns
EMAIL_MAX = 320
PHONE_MAX = 32  # as typed, separators included; stored as E.164, at most 16 characters
ZONE_MAX = 64
FIELD_NAME_MAX = 100
FIELD_TEXT_MAX = 2000  # a custom field's text
MAX_JSON_DEPTH = 32
# Numbers within the 64-bit integers, bounded by doubles so that a JSON reader that parses
# numbers as doubles agrees: 2**63 - 1024 is the largest double below 2**63.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1024
CONSENTS = ("email_consent", "sms_consent")
NO_IDENTITY = "a lead needs an email, an external_id or a phone number"
NEW_STAGES = ("subscriber", "lead")  # a new lead's stage; later stages come from scoring
# Custom field names that would shadow a lead column or an attribute rules read.
RESERVED_FIELDS = frozenset(
    {*IDENTITY_FIELDS, *STANDARD_FIELDS, *CONSENTS, "stage", "owner", "fields", "email_domain"}
)

# What Python's str.isspace() (and so str.strip()) counts as white space, spelled out.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = r"^[^\x00]*$"  # text PostgreSQL stores: no NUL characters
# Spaces around it are ignored; the address itself has no white space or control characters,
# and its domain (letters of any script) has a dot.
_ADDRESS_CHAR = (
    r"[^\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    r'@<>()\[\],;:"]'
)
EMAIL_PATTERN = rf"^ *{_ADDRESS_CHAR}+@{_ADDRESS_CHAR}+\.{_ADDRESS_CHAR}+ *$"
# An optional `+` or `00`, then 4 to 17 digits; spaces, dots, dashes, slashes and brackets
# between them are ignored. Without a country code, the number is read in the lead's country
# or the installation's region.
PHONE_PATTERN = r"^[ ()./-]*(?:\+|00)?[ ()./-]*[0-9](?:[ ()./-]*[0-9]){3,16}[ ()./-]*$"
# Something other than white space; the white space around it is trimmed.
EXTERNAL_ID_PATTERN = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"

_EMAIL = re.compile(EMAIL_PATTERN)
_PHONE = re.compile(PHONE_PATTERN)
_SHOWN = 40  # characters of a refused value that a message quotes


def shown(value: object) -> str:
    """A refused value for a message: quoted, and cut short when it is long."""
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value)} characters)"
    return repr(value)


@cache
def zones() -> frozenset[str]:
    """The IANA time zone names this system knows."""
    return frozenset(available_timezones())


def storable(value: str, what: str, max_length: int | None = None) -> str:
    """Text both databases keep as given: no NUL, no lone surrogates, within the column."""
    if "\x00" in value:
        raise InvalidLeadError("must not contain NUL characters", what)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidLeadError("must be valid Unicode text", what) from error
    if max_length is not None and len(value) > max_length:
        raise InvalidLeadError(f"must be at most {max_length} characters", what)
    return value


def storable_json(value: Any, what: str) -> Any:
    """JSON both databases keep: storable text, finite numbers within 64-bit integers, 32 levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidLeadError(f"must not nest deeper than {MAX_JSON_DEPTH} levels", what)
        if isinstance(item, str):
            storable(item, what)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int | float):
            _number(item, what)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidLeadError("keys must be text", what)
                storable(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        else:
            raise InvalidLeadError(f"{type(item).__name__} is not JSON", what)
    return value


def _number(value: int | float, what: str) -> None:
    """A finite number within the 64-bit integers (every float beyond them is whole)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidLeadError("numbers must be finite", what)
    if not INT_MIN <= value <= INT_MAX:
        raise InvalidLeadError(f"numbers must lie between {INT_MIN} and {INT_MAX}", what)


def text(value: Any, field: str, max_length: int = TEXT_MAX) -> str:
    """Storable text of at most `max_length` characters."""
    if not isinstance(value, str):
        raise InvalidLeadError(f"must be text, not {type(value).__name__}", field)
    return storable(value, field, max_length)


def normalise_email(value: str, field: str = "email") -> str:
    """An email address as stored (domain lower-cased, local part as written); InvalidLeadError
    saying what is wrong with it otherwise."""
    if len(value) > EMAIL_MAX or not _EMAIL.fullmatch(value):
        raise InvalidLeadError(f"invalid email address {shown(value)}", field)
    try:
        return email_address(value)
    except ValueError as error:
        raise InvalidLeadError(f"invalid email address {shown(value)}: {error}", field) from error


def normalise_phone(value: str, field: str = "phone", region: str | None = None) -> str:
    """A phone number in E.164, read in `region` (else the installation's) when written
    without a country code; InvalidLeadError saying why it is not a number otherwise."""
    if len(value) > PHONE_MAX or not _PHONE.fullmatch(value):
        raise InvalidLeadError(
            f"invalid phone number {shown(value)}: use digits, e.g. +45 20 12 34 56", field
        )
    try:
        return phone_number(value.strip(), region)
    except ValueError as error:
        raise InvalidLeadError(f"invalid phone number {shown(value)}: {error}", field) from error


def record_region(record: Mapping[str, Any]) -> str | None:
    """The region a record's phone is read in: its `country` when that is a country code."""
    country = record.get("country")
    if not isinstance(country, str) or not country.strip():
        return None
    try:
        return check_region(country)
    except ValueError:
        return None


def normalise_external_id(value: str, field: str = "external_id") -> str:
    """A storable external id of at most 200 characters, trimmed and not blank."""
    external_id = storable(value, field, TEXT_MAX).strip()
    if not external_id:
        raise InvalidLeadError("must not be blank", field)
    return external_id


def check_zone(value: Any, field: str = "timezone") -> str:
    """An IANA time zone name this system knows."""
    if not isinstance(value, str) or value not in zones():
        raise InvalidLeadError(
            f"unknown time zone {shown(value)}: use an IANA name, e.g. Europe/Berlin", field
        )
    return value


def check_field_name(name: Any) -> str:
    """A custom field name: storable text of 1 to 100 characters, not a lead attribute's."""
    if not isinstance(name, str):
        raise InvalidLeadError(f"custom field names must be text, not {shown(name)}")
    if not 0 < len(name) <= FIELD_NAME_MAX:
        raise InvalidLeadError(
            f"custom field name {shown(name)} must have 1 to {FIELD_NAME_MAX} characters"
        )
    storable(name, "custom field name")
    if name in RESERVED_FIELDS:
        raise InvalidLeadError("is a lead attribute, not a custom field name", name)
    return name


def check_field_value(value: Any, field: str) -> Any:
    """A custom field is one value fit rules can compare: text, a number, true/false or null."""
    if isinstance(value, str):
        return text(value, field, FIELD_TEXT_MAX)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        _number(value, field)
        return value
    raise InvalidLeadError("must be text, a number, true, false or null", field)


def check_consent(value: Any, field: str) -> bool:
    """Consent is true or false, never a string that merely looks like one."""
    if not isinstance(value, bool):
        raise InvalidLeadError(f"must be true or false, not {shown(value)}", field)
    return value


def _given(value: Any) -> bool:
    """False for what means "not given" for an identity key or the time zone."""
    return value is not None and value != ""


def check_identity(name: str, value: Any, region: str | None = None) -> str:
    """One identity key (email, external_id or phone), given, as stored; a phone number
    without a country code is read in `region`, else the installation's."""
    if not isinstance(value, str):
        raise InvalidLeadError(f"must be text, not {type(value).__name__}", name)
    if name == "email":
        return normalise_email(value)
    if name == "phone":
        return normalise_phone(value, region=region)
    return normalise_external_id(value)


def check_attribute(name: Any, value: Any) -> Any:
    """One attribute other than identity, as stored; InvalidLeadError naming it otherwise."""
    if name == "timezone":
        return None if value is None else check_zone(value)
    if name in STANDARD_FIELDS:
        return None if value is None else text(value, name)
    if name in CONSENTS:
        return check_consent(value, name)
    if name == "stage":
        if value not in NEW_STAGES:
            raise InvalidLeadError(f"{shown(value)} cannot be set: use subscriber or lead", name)
        return value
    return check_field_value(value, check_field_name(name))


def check_lead(record: Mapping[str, Any]) -> dict[str, Any]:
    """A flat lead record as stored: identity normalised, every attribute checked.

    Keys other than identity, standard attributes, consent and `stage` are custom fields; a
    `country` that is a country code (DK) is also the region its phone number is read in.
    Identity keys and the time zone that are None or "" are left out (not given).
    """
    lead: dict[str, Any] = {}
    region = record_region(record)
    for name, value in record.items():
        if name in (*IDENTITY_FIELDS, "timezone") and not _given(value):
            continue
        if name in IDENTITY_FIELDS:
            lead[name] = _identity(record, name, value, region)
        else:
            lead[name] = check_attribute(name, value)
    if not any(name in lead for name in IDENTITY_FIELDS):
        raise InvalidLeadError(NO_IDENTITY)
    return lead


def _identity(record: Mapping[str, Any], name: str, value: Any, region: str | None) -> str:
    """`check_identity`, its error saying when the record's country could not be its region."""
    try:
        return check_identity(name, value, region)
    except InvalidLeadError as error:
        country = record.get("country")
        if name != "phone" or region or not isinstance(country, str) or not country.strip():
            raise
        raise InvalidLeadError(
            f"{error.reason} (the lead's country {shown(country)} is not a two-letter code"
            " such as PL)",
            name,
        ) from error


def check_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every attribute of a lead record but its identity keys, as stored (a time zone of ""
    is not given); InvalidLeadError naming the first bad one."""
    return {
        name: check_attribute(name, value)
        for name, value in record.items()
        if name not in IDENTITY_FIELDS and (name != "timezone" or _given(value))
    }


def lookup_value(name: str, value: str) -> str:
    """A checked identity value as lookups compare it: an email by its lower-cased key."""
    return email_key(value) if name == "email" else value


def identity_keys(lead: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (key, value) pairs that name a checked lead, as lookups compare them (an email
    lower-cased): any of them names it alone."""
    return [(name, lookup_value(name, lead[name])) for name in IDENTITY_FIELDS if lead.get(name)]
