"""One check of a lead record, the one the API, the CLI, imports and the service apply: each
refusal names its field, and what is taken comes back as stored."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import InvalidLeadError
from engine.funnel.lead_fields import check_lead
from engine.funnel.service import track, upsert_lead
from engine.models import Lead
from engine.workflow.runtime import Runtime

DANA = {"email": "dana@initech.test"}


def test_a_record_comes_back_as_stored_identity_normalised_and_empty_keys_not_given() -> None:
    lead = check_lead(
        {
            "email": "  Dana@Initech.TEST ",
            "phone": "0044 (20) 7946-0958",
            "external_id": "  crm-7 ",
            "timezone": "",
            "first_name": "Dana",
            "sms_consent": True,
            "company_size": 250,
            "industry": "saas",
        }
    )

    assert lead == {
        "email": "Dana@initech.test",  # the local part as written, the domain lower-cased
        "phone": "+442079460958",
        "external_id": "crm-7",
        "first_name": "Dana",
        "sms_consent": True,
        "company_size": 250,
        "industry": "saas",
    }
    assert check_lead({"email": "", "phone": None, "external_id": "crm-7"}) == {
        "external_id": "crm-7"
    }


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"email": "dana@initech"}, "email", "invalid email address 'dana@initech'"),
        ({**DANA, "phone": "+1 415 555 O100"}, "phone", "invalid phone number"),
        ({**DANA, "phone": "+1\u0664\u0661\u06655550100"}, "phone", "invalid phone number"),
        ({**DANA, "timezone": "Mars/Olympus"}, "timezone", "unknown time zone 'Mars/Olympus'"),
        ({**DANA, "title": "x" * 201}, "title", "must be at most 200 characters"),
        ({**DANA, "notes": "x" * 2001}, "notes", "must be at most 2000 characters"),
        ({**DANA, "tags": ["a"]}, "tags", "must be text, a number, true, false or null"),
        ({**DANA, "score": 2**64}, "score", "numbers must lie between"),
        ({**DANA, "owner": "sam"}, "owner", "is a lead attribute, not a custom field name"),
        ({**DANA, "sms_consent": "no"}, "sms_consent", "must be true or false, not 'no'"),
        ({**DANA, "stage": "sql"}, "stage", "'sql' cannot be set"),
        ({**DANA, "company": "Init\x00ech"}, "company", "must not contain NUL characters"),
        ({"external_id": " \u3000 "}, "external_id", "must not be blank"),
        ({"first_name": "Dana"}, None, "a lead needs an email, an external_id or a phone"),
    ],
)
def test_a_refusal_names_the_field_and_says_why(
    record: dict[str, Any], field: str | None, reason: str
) -> None:
    with pytest.raises(InvalidLeadError) as refused:
        check_lead(record)

    assert refused.value.field == field
    assert refused.value.reason.startswith(reason), refused.value.reason


def test_a_refused_value_is_quoted_short_in_the_message() -> None:
    with pytest.raises(InvalidLeadError) as refused:
        check_lead({"email": "x" * 10_000_000})

    assert len(str(refused.value)) < 100
    assert "(10000000 characters)" in str(refused.value)


def test_upsert_and_track_refuse_what_the_api_refuses_and_write_nothing(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    for attributes, field in (
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"tags": ["a", "b"]}, "tags"),
        ({"fields": "x"}, "fields"),
    ):
        with pytest.raises(InvalidLeadError) as upserted, sessions.begin() as s:
            upsert_lead(s, rt, {**DANA, **attributes})
        with pytest.raises(InvalidLeadError) as tracked, sessions.begin() as s:
            track(s, rt, {**DANA, **attributes}, "page_viewed")
        assert upserted.value.field == tracked.value.field == field

    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Lead)) == 0
