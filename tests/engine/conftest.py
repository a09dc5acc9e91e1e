"""Engine fixtures: the test workflows and shipped workflows loaded into a Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.clock import FrozenClock
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from tests.shipped import EMAIL_TEMPLATES, SMS_TEMPLATES

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
SHIPPED = Path(__file__).resolve().parents[2] / "workflows"


@pytest.fixture
def rt(clock: FrozenClock) -> Runtime:
    """The small test workflows (drip + winback) on a frozen clock."""
    return Runtime(load_workflows(FIXTURES, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)


@pytest.fixture
def shipped_rt(clock: FrozenClock) -> Runtime:
    """The workflows shipped in workflows/, as marketers get them."""
    return Runtime(load_workflows(SHIPPED, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
