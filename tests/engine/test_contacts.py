"""Contact data read with phonenumbers and email-validator: national formats, IDN addresses."""

from __future__ import annotations

import pytest

from engine.contacts import (
    PhoneKind,
    ascii_address,
    default_region,
    email_address,
    email_key,
    phone_kind,
    phone_number,
    phone_region,
    phone_zone,
    use_region,
)
from engine.errors import ConfigurationError, InvalidLeadError
from engine.funnel.lead_fields import check_lead, normalise_phone
from engine.settings import Settings

# (as written in a national CRM export, its region, E.164, kind, the one zone of its area)
NUMBERS = [
    ("20 12 34 56", "DK", "+4520123456", PhoneKind.FIXED_OR_MOBILE, "Europe/Copenhagen"),
    ("33 12 34 56", "DK", "+4533123456", PhoneKind.FIXED_OR_MOBILE, "Europe/Copenhagen"),
    ("512 345 678", "PL", "+48512345678", PhoneKind.MOBILE, "Europe/Warsaw"),
    ("22 123 45 67", "PL", "+48221234567", PhoneKind.FIXED, "Europe/Warsaw"),
    ("030 1234567", "DE", "+49301234567", PhoneKind.FIXED, "Europe/Berlin"),
    ("0151 23456789", "DE", "+4915123456789", PhoneKind.MOBILE, "Europe/Berlin"),
    ("(415) 555-0100", "US", "+14155550100", PhoneKind.FIXED_OR_MOBILE, "America/Los_Angeles"),
    ("8 (912) 345-67-89", "RU", "+79123456789", PhoneKind.MOBILE, None),  # eleven zones
    ("8 (495) 123-45-67", "RU", "+74951234567", PhoneKind.FIXED, "Europe/Moscow"),
]


@pytest.mark.parametrize(("written", "region", "e164", "kind", "zone"), NUMBERS)
def test_a_national_number_reads_in_its_region_and_round_trips_through_e164(
    written: str, region: str, e164: str, kind: PhoneKind, zone: str | None
) -> None:
    assert phone_number(written, region) == e164
    assert phone_number(e164) == e164  # a stored number reads back as itself, in any region
    assert phone_number(e164, "PL") == e164
    assert (phone_kind(e164), phone_region(e164), phone_zone(e164)) == (kind, region, zone)


def test_international_prefixes_and_separators_are_read_as_the_country_code() -> None:
    assert phone_number("0045 20 12 34 56") == "+4520123456"
    assert phone_number("+48 512-345-678") == "+48512345678"
    assert phone_number("+49 (0)30 / 123 45 67") == "+49301234567"


def test_a_number_without_a_country_code_needs_a_region() -> None:
    with pytest.raises(ValueError, match="NURTURE_DEFAULT_REGION"):
        phone_number("20 12 34 56")
    use_region("dk")
    assert (default_region(), phone_number("20 12 34 56")) == ("DK", "+4520123456")
    assert phone_number("512 345 678", "PL") == "+48512345678"  # the record's own wins


@pytest.mark.parametrize(
    ("written", "region", "reason"),
    [
        ("+1 555 000 0001", None, "not a number in the numbering plan of US"),
        ("20 12 34", "DK", "not a number in the numbering plan of DK"),
        ("+999 1234 5678", None, "has no country code"),
    ],
)
def test_numbers_outside_any_plan_are_refused_saying_why(
    written: str, region: str | None, reason: str
) -> None:
    with pytest.raises(InvalidLeadError, match=reason) as error:
        normalise_phone(written, region=region)
    assert error.value.field == "phone"


def test_a_records_country_is_the_region_of_its_phone_and_stays_a_field() -> None:
    lead = check_lead({"email": "jens@blåbær.dk", "phone": "20 12 34 56", "country": "dk"})
    assert lead == {"email": "jens@blåbær.dk", "phone": "+4520123456", "country": "dk"}
    with pytest.raises(InvalidLeadError, match="NURTURE_DEFAULT_REGION"):
        check_lead({"email": "jens@x.dk", "phone": "20 12 34 56", "country": "Denmark"})


def test_the_default_region_setting_is_checked_at_start_up() -> None:
    assert Settings.from_env({"NURTURE_DEFAULT_REGION": "pl"}).default_region == "PL"
    assert Settings.from_env({}).default_region is None
    with pytest.raises(ConfigurationError, match="NURTURE_DEFAULT_REGION: 'Poland'"):
        Settings.from_env({"NURTURE_DEFAULT_REGION": "Poland"})


@pytest.mark.parametrize(
    ("written", "stored", "ascii"),
    [
        (" Jens.Hansen@Example.COM ", "Jens.Hansen@example.com", "Jens.Hansen@example.com"),
        ("jens@Blåbær.dk", "jens@blåbær.dk", "jens@xn--blbr-roah.dk"),
        ("jens@xn--blbr-roah.dk", "jens@blåbær.dk", "jens@xn--blbr-roah.dk"),
        ("zofia@łódź.pl", "zofia@łódź.pl", "zofia@xn--d-uga0v4h.pl"),
        ("иван@пример.рф", "иван@пример.рф", None),  # needs SMTPUTF8 all the way
        ("josé@exämple.de", "josé@exämple.de", None),
    ],
)
def test_addresses_keep_their_local_part_and_carry_an_ascii_form_where_one_exists(
    written: str, stored: str, ascii: str | None
) -> None:
    assert email_address(written) == stored
    assert email_address(stored) == stored
    assert ascii_address(stored) == ascii
    assert email_key(stored) == stored.lower()


@pytest.mark.parametrize(
    "written", ["dana@initech", "dana@@initech.test", "dana@-initech.test", "dana@initech..test"]
)
def test_addresses_outside_the_standard_are_refused(written: str) -> None:
    with pytest.raises(ValueError):
        email_address(written)


def test_a_number_stored_before_plans_were_checked_reads_as_other_with_no_zone() -> None:
    assert (phone_kind("+9991234567"), phone_region("+9991234567")) == (PhoneKind.OTHER, None)
    assert phone_zone("+9991234567") is None


def test_uk_is_read_as_gb() -> None:
    assert phone_number("020 7946 0958", "uk") == "+442079460958"
