"""Email addresses and phone numbers, read with the field's own libraries.

`email-validator` (the checker Pydantic uses) reads addresses: internationalised domains and
local parts, the domain lower-cased, the local part kept as written. `phonenumbers` (a port of
Google's libphonenumber) reads numbers written the national way of a region, stores them as
E.164 and tells a mobile from a fixed line, and the time zone of a number's region. Both
raise `ValueError` with a message for people; callers add the field it came from.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache, lru_cache
from types import ModuleType

import email_validator
import idna
import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

_REMEMBERED = 4096  # stored numbers and addresses whose plan facts a send reads: kept read
# The installation's region for numbers written without a country code (NURTURE_DEFAULT_REGION),
# set once by the process's wiring (`App.create`); None: every number needs its `+`.
_region: list[str | None] = [None]


class PhoneKind(StrEnum):
    """What a number is, by its numbering plan: SMS steps skip fixed lines."""

    MOBILE = "mobile"
    FIXED = "fixed"
    FIXED_OR_MOBILE = "fixed or mobile"  # plans that do not tell them apart (US, DK)
    OTHER = "other"  # VoIP, toll-free, pagers, personal numbers, ...


_KINDS = {
    PhoneNumberType.MOBILE: PhoneKind.MOBILE,
    PhoneNumberType.FIXED_LINE: PhoneKind.FIXED,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: PhoneKind.FIXED_OR_MOBILE,
}


def use_region(region: str | None) -> None:
    """Set the region national numbers are read in (an ISO 3166 code, or None for none)."""
    _region[0] = check_region(region) if region else None


def default_region() -> str | None:
    """The region national numbers are read in, when the installation set one."""
    return _region[0]


def check_region(region: str) -> str:
    """A two-letter region code libphonenumber knows, upper-cased; ValueError otherwise."""
    code = region.strip().upper()
    code = "GB" if code == "UK" else code  # ISO 3166 says GB; people write UK
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{region!r} is not a two-letter country code such as DK, PL or US")
    return code


def phone_number(value: str, region: str | None = None) -> str:
    """The E.164 form of a number, read in `region` (else the default) when it has no `+`."""
    region = check_region(region) if region else default_region()
    written = value.lstrip(" ()./-")
    if written.startswith("00"):  # the international prefix of most of the world, for `+`
        written = "+" + written[2:]
    try:
        number = phonenumbers.parse(written, region)
    except NumberParseException as error:
        if error.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            raise ValueError(_needs_country(region)) from error
        raise ValueError("is not a phone number") from error
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_country_code(number.country_code or 0)
        known = where != phonenumbers.UNKNOWN_REGION
        plan = f"the numbering plan of {where}" if known else "any numbering plan"
        raise ValueError(f"is not a number in {plan}")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _needs_country(region: str | None) -> str:
    if region:
        return f"has no country code {region} knows"
    return (
        "has no country code: write it with one (+45 20 12 34 56), give the row a country, "
        "or set NURTURE_DEFAULT_REGION"
    )


@lru_cache(maxsize=_REMEMBERED)
def _parsed(e164: str) -> phonenumbers.PhoneNumber | None:
    """A stored number as libphonenumber reads it; None for one stored before numbers were
    checked against a plan that no plan knows (say an unassigned country code)."""
    try:
        return phonenumbers.parse(e164, None)
    except NumberParseException:
        return None


def phone_kind(e164: str) -> PhoneKind:
    """Mobile, fixed line, either (where the plan cannot tell) or something else."""
    number = _parsed(e164)
    if number is None:
        return PhoneKind.OTHER
    return _KINDS.get(phonenumbers.number_type(number), PhoneKind.OTHER)


def phone_region(e164: str) -> str | None:
    """The region (ISO 3166 code) a stored number belongs to, when its plan says."""
    number = _parsed(e164)
    return None if number is None else phonenumbers.region_code_for_number(number)


@cache
def _zones() -> ModuleType:
    """libphonenumber's time zone tables: loaded on first use (they take a third of a second)."""
    from phonenumbers import timezone

    return timezone


@lru_cache(maxsize=_REMEMBERED)
def phone_zone(e164: str) -> str | None:
    """The time zone of a number's area when it has exactly one (DK, PL, a US area code)."""
    number = _parsed(e164)
    if number is None:
        return None
    zones = _zones().time_zones_for_number(number)
    return zones[0] if len(zones) == 1 and zones[0] != "Etc/Unknown" else None


def local_zone(timezone: str | None, phone: str | None) -> str | None:
    """A lead's zone: its own, else its phone number's area's, else None (the default)."""
    return timezone or (phone_zone(phone) if phone else None)


def email_address(value: str) -> str:
    """An address as stored: trimmed, the domain lower-cased (and IDNA-normalised), the local
    part as written; `.test` domains pass (RFC 2606 keeps them for testing)."""
    try:
        checked = email_validator.validate_email(
            value.strip(" "), check_deliverability=False, test_environment=True
        )
    except email_validator.EmailNotValidError as error:
        raise ValueError(str(error)) from error
    return str(checked.normalized)


def email_key(address: str) -> str:
    """What lookups compare: the whole address lower-cased, so case never makes two leads."""
    # U+0130 (I with a dot) lower-cases to two characters; "i" keeps the length as checked.
    return address.replace("\u0130", "i").lower()


@lru_cache(maxsize=_REMEMBERED)
def ascii_address(address: str) -> str | None:
    """The address as a mail system without SMTPUTF8 carries it (the domain in its IDNA
    ASCII form), or None when the local part itself is not ASCII."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        return None
    if domain.isascii():
        return address
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
