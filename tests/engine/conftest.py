"""Engine fixtures: the test workflows and shipped workflows loaded into a Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.clock import FrozenClock
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
SHIPPED = Path(__file__).resolve().parents[2] / "workflows"
EMAIL_TEMPLATES = {
    "welcome",
    "case_study",
    "pricing_guide",
    "demo_invite",
    "customer_story",
    "win_back",
    "whats_new",
    "last_chance",
    "confirm_subscription",
}
SMS_TEMPLATES = {"quick_question", "demo_nudge", "win_back_sms"}


@pytest.fixture
def rt(clock: FrozenClock) -> Runtime:
    """The small test workflows (drip + winback) on a frozen clock."""
    return Runtime(load_workflows(FIXTURES, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)


@pytest.fixture
def shipped_rt(clock: FrozenClock) -> Runtime:
    """The workflows shipped in workflows/, as marketers get them."""
    return Runtime(load_workflows(SHIPPED, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
