"""The API against its own OpenAPI document, on SQLite and PostgreSQL: schemathesis runs every
phase (examples, coverage, fuzzing, stateful over the document's links) with every check, and
finds nothing: no server error, nothing the document allows refused, nothing it forbids taken,
answers, headers and `Allow` as documented."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis.checks import load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NotSet
from schemathesis.engine import Status, events, from_schema
from sqlalchemy import Engine

from engine.clock import FrozenClock
from engine.contacts import email_address, phone_number
from engine.http.api import create_api
from engine.http.validators import EMAIL_FORMAT, PHONE_FORMAT
from tests.apps import outbox_app

KEY = "schema-key-0123456789abcdef-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 60  # per operation and phase: about 15 s a database
# NURTURE_SCHEMA_SEED=<seed from a failure> replays a run.
SEED = int(os.environ.get("NURTURE_SCHEMA_SEED") or random.getrandbits(64))


@pytest.fixture
def api(db: Engine, clock: FrozenClock, tmp_path: Path) -> FastAPI:
    """The API over the test database."""
    app = outbox_app(db, clock, tmp_path)
    # Unsigned SendGrid posts are allowed so the fuzzer reaches the event parser.
    return create_api(app, None, api_keys=[KEY], environ={}, allow_unsigned_webhooks=True)


def _accepted(check: Callable[[str], str]) -> Callable[[str], bool]:
    """A format checker: "" (not given) or what the library named by the format takes."""

    def accepts(value: str) -> bool:
        try:
            return value == "" or bool(check(value))
        except ValueError:
            return False

    return accepts


# What each library-checked format means, as jsonschema_rs and schemathesis are told it.
FORMATS = {EMAIL_FORMAT: _accepted(email_address), PHONE_FORMAT: _accepted(phone_number)}
_DOMAINS = ["initech.test", "Globex.example", "blåbær.dk", "łódź.pl", "xn--blbr-roah.dk"]
# Values of each format for the positive phases: numbers of several plans in their writings.
_WRITINGS = ["+1 415 {0:03d} {1:04d}", "0045 2{0:03d} {1:04d}", "+48 5{0:02d} {1:03d} 678"]
STRATEGIES = {
    EMAIL_FORMAT: st.builds(
        "{}@{}".format,
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}[A-Za-z0-9]", fullmatch=True),
        st.sampled_from(_DOMAINS),
    ).filter(FORMATS[EMAIL_FORMAT]),
    PHONE_FORMAT: st.builds(
        lambda writing, a, b: writing.format(a, b),
        st.sampled_from(_WRITINGS),
        st.integers(200, 999),
        st.integers(0, 9999),
    ).filter(FORMATS[PHONE_FORMAT]),
}


@pytest.fixture
def api_schema(api: FastAPI) -> schemathesis.BaseSchema:
    """The API's OpenAPI document, set up for every phase and check of schemathesis."""
    for name, strategy in STRATEGIES.items():
        schemathesis.openapi.format(name, strategy)
    load_all_checks()
    config = SchemathesisConfig()
    config.update(seed=SEED, max_failures=None)
    config.projects.override.update(headers=AUTH, workers=1)
    config.projects.override.checks.update(included_check_names=["all"])
    config.projects.override.generation.update(max_examples=EXAMPLES, database="none")
    return schemathesis.openapi.from_asgi("/openapi.json", api, config=config)


def test_schemathesis_with_every_phase_and_check_finds_no_disagreement_with_the_document(
    api_schema: schemathesis.BaseSchema,
) -> None:
    phases: dict[str, Status] = {}
    failures = list(_failures(api_schema, phases))

    assert not failures, f"seed {SEED}:\n" + "\n".join(failures)
    assert {"coverage", "fuzzing", "stateful"} <= {p for p, s in phases.items() if s != Status.SKIP}


def _failures(schema: schemathesis.BaseSchema, phases: dict[str, Status]) -> Iterator[str]:
    """Every failed check as `METHOD path: check: title -> status body`; phases as they end."""
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = event.status
        elif isinstance(event, events.FatalError | events.NonFatalError):
            yield f"{event.__class__.__name__}: {getattr(event, 'value', None) or event}"
        elif isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status != Status.FAILURE:
                        continue
                    case = recorder.cases[case_id].value
                    response = recorder.interactions.get(case_id)
                    answer = response.response if response is not None else None
                    if check.name == "positive_data_acceptance" and _format_refusal(answer):
                        continue
                    title = check.failure_info.failure.title if check.failure_info else ""
                    body = "-" if isinstance(case.body, NotSet) else repr(case.body)[:300]
                    yield (
                        f"{case.method} {case.formatted_path}: {check.name}: {title}; "
                        f"body {body} -> "
                        f"{answer.status_code if answer else None} "
                        f"{answer.content[:300] if answer else b''!r}"
                    )


def _format_refusal(answer: Any) -> bool:
    """A 422 naming only email or phone values: their formats (a country's numbering plan, a
    domain's IDNA labels) are checked by the libraries the document names, which the coverage
    phase does not consult; `test_the_server_takes_exactly_the_lead_fields_the_document_allows`
    holds the server to exactly those formats."""
    if answer is None or answer.status_code != 422:
        return False
    errors = json.loads(answer.content).get("detail")
    return bool(errors) and all(error["loc"][-1] in ("email", "phone") for error in errors)


# Awkward values of each lead field: white space of every kind, other scripts' digits, a
# trailing newline (which `$` lets through in Python), NUL, look-alikes of the valid forms.
AWKWARD = {
    "email": [
        "dana@initech.test",
        " Dana@Initech.TEST ",
        "dana@initech",
        "da na@initech.test",
        "dana\t@initech.test",
        "dana@initech.test\n",
        "\u00a0dana@initech.test",
        "d\x1c@initech.test",
        "dänä@initech.test",
        "\u0130stanbul@initech.test",
        "d\x00@initech.test",
        "@initech.test",
        "dana@-initech.test",
        "",
    ],
    "phone": [
        "+14155550100",
        "+1 (415) 555-0100",
        "0044 20 7946 0958",
        "+1415555",
        "+12",
        "+0123456789",
        "+1\u0664\u0661\u06655550100",
        "+14155550101\n",
        "\t+14155550102",
        "+1234567890123456",
        "555-CALL-NOW",
        "",
    ],
    "external_id": ["crm-7", "  crm-8 ", " ", "\u3000", "\x1c", "\ufeff", "a\x00", ""],
    "timezone": ["Europe/Berlin", "UTC", "europe/berlin", "Mars/Olympus", " UTC", ""],
}


@pytest.mark.parametrize("field", sorted(AWKWARD))
def test_the_server_takes_exactly_the_lead_fields_the_document_allows(
    api: FastAPI, field: str
) -> None:
    client = TestClient(api, headers=AUTH)
    documented = api.openapi()["components"]["schemas"]["LeadIn"]["properties"][field]
    # jsonschema_rs: the validator schemathesis judges requests with.
    validator = jsonschema_rs.validator_for(documented, validate_formats=True, formats=FORMATS)
    for index, value in enumerate(AWKWARD[field]):
        other = {"external_id": f"probe-{index}"} if field == "email" else {}
        body = {"email": f"probe{index}@initech.test", **other, field: value}
        status = client.post("/v1/leads", json=body).status_code
        assert status in (200, 409, 422), (value, status)
        assert (status != 422) == validator.is_valid(value), (value, status)
