"""The API against its own OpenAPI document, fuzzed by schemathesis on SQLite and PostgreSQL:
no input is a server error, invalid input is never accepted, answers match the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok
from sqlalchemy import Engine

from channels.base import EMAIL, SMS
from channels.outbox import OutboxChannel
from engine.app import App
from engine.clock import FrozenClock
from engine.http.api import create_api
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
KEY = "schema-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def api_schema(db: Engine, clock: FrozenClock, tmp_path: Path) -> schemathesis.BaseSchema:
    """The OpenAPI document of an API over the test database."""
    settings_ = Settings.from_env(
        {
            "NURTURE_WORKFLOWS": str(ROOT / "tests" / "engine" / "fixtures" / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
        }
    )
    channels = {
        EMAIL: OutboxChannel(tmp_path / "outbox", EMAIL, clock),
        SMS: OutboxChannel(tmp_path / "outbox", SMS, clock),
    }
    app = App.create(settings_, clock=clock, environ={}, channels=channels, engine=db, paced=False)
    # Unsigned SendGrid posts are allowed so the fuzzer reaches the event parser.
    api = create_api(app, None, api_keys=[KEY], environ={}, allow_unsigned_webhooks=True)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    return schema


def test_every_operation_keeps_its_contract_for_valid_and_invalid_input(
    api_schema: schemathesis.BaseSchema, subtests: pytest.Subtests
) -> None:
    # Driven by hand rather than by `from_fixture`, which does not run on pytest 9.
    for result in api_schema.get_all_operations():
        if not isinstance(result, Ok):
            pytest.fail(f"the OpenAPI document has an invalid operation: {result.err()}")
        operation = result.ok()
        for mode in _modes(operation):
            with subtests.test(f"{operation.method.upper()} {operation.path} ({mode})"):
                _fuzz(operation.as_strategy(generation_mode=mode), mode)


def _modes(operation: schemathesis.APIOperation) -> list[GenerationMode]:
    """Both, except for form bodies: a form on the wire is name=value strings, never invalid."""
    if any(body.media_type == FORM for body in operation.body):
        return [GenerationMode.POSITIVE]
    return list(GenerationMode)


def _fuzz(strategy: SearchStrategy[schemathesis.Case], mode: GenerationMode) -> None:
    @given(case=strategy)
    @settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: schemathesis.Case) -> None:
        # Accepting every schema-valid body is not a goal: the API also refuses what the
        # schema cannot express (email and phone syntax, time zones, NUL characters) with 422.
        case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise  # an operation nobody can call; negative: nothing in it can be invalid
