"""forms.yml: the shipped forms load, and each mistake names its file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.delivery.confirmation import check_confirmations
from engine.delivery.rendering import Renderer
from engine.errors import Problem
from engine.settings import Settings
from engine.workflow.forms import load_forms
from engine.workflow.loading import load_workflows
from engine.workflow.spec import FieldType
from tests.apps import ROOT

TEMPLATES = {"confirm_subscription", "welcome"}


def _problems(text: str) -> list[Problem]:
    problems: list[Problem] = []
    load_forms("forms.yml", text.encode(), problems, TEMPLATES)
    return problems


def test_the_shipped_forms_load_with_a_double_opt_in_newsletter_and_a_demo_request() -> None:
    renderer = Renderer(ROOT / "templates")
    workflows = load_workflows(
        ROOT / "workflows", renderer.email_templates(), renderer.sms_templates()
    )
    newsletter, demo = workflows.forms["newsletter"], workflows.forms["demo-request"]
    assert newsletter.consent is not None and newsletter.consent.double_opt_in
    assert newsletter.event in {rule.event for rule in workflows.scoring.engagement}
    assert demo.event in {rule.event for rule in workflows.scoring.engagement}
    assert demo.fields[-1].type == FieldType.SELECT and demo.redirect
    settings = Settings.from_env({})
    assert check_confirmations(renderer, settings, workflows.forms.values()) == []


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("forms:\n  news:\n    title: N\n", 3, "forms.news.fields", "required key is missing"),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: email, label: E}\n"
            "      - {name: stage, label: S}\n",
            6,
            "forms.news.fields[1].name",
            "'stage' cannot be a form field",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: Email Address, label: E}\n"
            "      - {name: phone, label: P}\n",
            5,
            "forms.news.fields[0].name",
            "bad field 'Email Address'",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: first_name, label: F}\n",
            5,
            "forms.news.fields",
            "a form needs an email or phone field",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: email, label: E}\n"
            "      - {name: size, label: S, type: select}\n",
            6,
            "forms.news.fields[1].choices",
            "a select field needs choices",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: email, label: E}\n"
            "    redirect: javascript:alert(1)\n",
            6,
            "forms.news.redirect",
            "bad URL 'javascript:alert(1)'",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: email, label: E}\n"
            "    consent: {text: I agree, double_opt_in: true}\n",
            6,
            "forms.news.consent.double_opt_in",
            "double opt-in needs a required email field",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n"
            "      - {name: email, label: E, required: true}\n"
            "    consent: {text: I agree, double_opt_in: true}\n    confirm_template: confirm_me\n",
            7,
            "forms.news.confirm_template",
            "no email template 'confirm_me'",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: email, label: E}\n"
            "    topics: news\n",
            6,
            "forms.news",
            "unknown key 'topics' (did you mean 'topic'?)",
        ),
        (
            "forms:\n  news:\n    title: N\n    fields:\n      - {name: email, label: E}\n"
            "    topic: Product News\n",
            6,
            "forms.news.topic",
            "bad topic 'Product News'",
        ),
    ],
)
def test_a_mistake_in_forms_yml_names_its_line_and_field(
    text: str, line: int, field: str, message: str
) -> None:
    problems = _problems(text)
    assert [(p.file, p.line, p.field) for p in problems] == [("forms.yml", line, field)]
    assert message in problems[0].message


def test_a_confirmation_template_without_the_link_fails_validation(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "confirm_subscription.j2").write_text(
        "{% block subject %}Confirm{% endblock %}{% block html %}<p>Hi {{ lead.first_name }}"
        '<a href="{{ unsubscribe_url }}">u</a></p>{% endblock %}'
    )
    text = (
        "forms:\n  news:\n    title: N\n    fields:\n"
        "      - {name: email, label: E, required: true}"
        "\n    consent: {text: I agree, double_opt_in: true}\n"
    )
    problems: list[Problem] = []
    forms = load_forms("forms.yml", text.encode(), problems, {"confirm_subscription"})
    assert problems == []
    found = check_confirmations(Renderer(tmp_path), Settings.from_env({}), forms.values())
    assert [(p.line, p.field) for p in found] == [(2, "forms.news.confirm_template")] * 2
    assert "no confirmation link" in found[0].message
