"""Rendering: lead data stays data, templates stay sandboxed, every shipped template renders."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.delivery.rendering import (
    OPT_OUT_LINE,
    SAMPLE_NOW,
    Renderer,
    TemplateError,
    ago,
    sample_context,
)
from engine.errors import NurtureError, Problem
from engine.workflow.loading import load_workflows
from tests.shipped import EMAIL_TEMPLATES, SMS_TEMPLATES

SHIPPED = Path(__file__).resolve().parents[3] / "templates"
WORKFLOWS = SHIPPED.parent / "workflows"
# The double opt-in confirmation renders with its own link (tests/engine/http/test_forms.py).
SEQUENCE_EMAILS = EMAIL_TEMPLATES - {"confirm_subscription"}

GREETING = """{% extends "email/_layout.j2" %}
{% block subject %}Hello {{ lead.first_name }} from {{ lead.company }}{% endblock %}
{% block preheader %}For {{ lead.company }}{% endblock %}
{% block html %}<p>Hi {{ lead.first_name }}, welcome.</p>{% endblock %}
{% block text %}Hi {{ lead.first_name }}, welcome.{% endblock %}
"""


def make_renderer(
    tmp_path: Path, email: dict[str, str] | None = None, sms: dict[str, str] | None = None
) -> Renderer:
    """A renderer over the shipped layout plus the given templates."""
    (tmp_path / "email").mkdir()
    (tmp_path / "sms").mkdir()
    shutil.copy(SHIPPED / "email" / "_layout.j2", tmp_path / "email" / "_layout.j2")
    for folder, templates in (("email", email or {}), ("sms", sms or {})):
        for name, source in templates.items():
            (tmp_path / folder / f"{name}.j2").write_text(source)
    return Renderer(tmp_path)


def lead_context(**lead: Any) -> dict[str, Any]:
    """The sample context with some lead values replaced."""
    context = sample_context()
    context["lead"].update(lead)
    return context


# ---- untrusted lead data ---------------------------------------------------------------------


def test_a_script_tag_in_lead_data_is_escaped_in_html(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING})
    email = renderer.render_email("greeting", lead_context(first_name="<script>alert(1)</script>"))
    assert "<script>" not in email.html
    assert "Hi &lt;script&gt;alert(1)&lt;/script&gt;, welcome." in email.html


def test_markup_characters_in_lead_data_come_through_unchanged_in_subject_and_text(
    tmp_path: Path,
) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING})
    name = 'O\'Brien <ob@x.example> & "Sons" &amp;'
    email = renderer.render_email("greeting", lead_context(first_name=name, company="AT&T"))
    assert email.subject == f"Hello {name} from AT&T"
    assert email.preheader == "For AT&T"
    assert email.text.startswith(f"Hi {name}, welcome.")


def test_template_syntax_in_lead_data_is_shown_literally(tmp_path: Path) -> None:
    renderer = make_renderer(
        tmp_path, email={"greeting": GREETING}, sms={"hi": "Hi {{ lead.first_name }}"}
    )
    context = lead_context(first_name="{{ 7*7 }}{% if true %}x{% endif %}")
    email = renderer.render_email("greeting", context)
    sms = renderer.render_sms("hi", context, first_message=False)
    assert "Hi {{ 7*7 }}{% if true %}x{% endif %}, welcome." in email.html
    assert "49" not in email.html
    assert sms.body == "Hi {{ 7*7 }}{% if true %}x{% endif %}"


def test_line_breaks_in_the_subject_collapse_to_one_trimmed_line(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING})
    context = lead_context(first_name="\r\n Jo\r\nBcc: victim@x.example\n", company="Acme\u2028Inc")
    email = renderer.render_email("greeting", context)
    assert email.subject == "Hello Jo Bcc: victim@x.example from Acme Inc"
    assert email.preheader == "For Acme Inc"


# ---- the sandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "lead.__class__.__subclasses__()",
        "cycler.__init__.__globals__",
        "lead.fields.update({'plan': 'free'})",
        "recent_activity.append(1)",
    ],
)
def test_reaching_outside_the_sandbox_raises_a_template_error(
    tmp_path: Path, expression: str
) -> None:
    renderer = make_renderer(tmp_path, sms={"evil": f"{{{{ {expression} }}}}"})
    with pytest.raises(TemplateError) as caught:
        renderer.render_sms("evil", sample_context(), first_message=False)
    assert isinstance(caught.value, NurtureError)
    assert caught.value.template == "evil"
    assert "not allowed in a template" in caught.value.message


def test_an_undefined_variable_names_the_template_the_missing_name_and_the_line(
    tmp_path: Path,
) -> None:
    source = GREETING.replace(
        "{% block html %}<p>Hi {{ lead.first_name }}", "{% block html %}<p>Hi {{ lead.frist_name }}"
    )
    renderer = make_renderer(tmp_path, email={"greeting": source})
    with pytest.raises(TemplateError) as caught:
        renderer.render_email("greeting", sample_context())
    assert str(caught.value).startswith("template 'greeting': 'lead' has no attribute 'frist_name'")
    assert caught.value.file == str(tmp_path / "email" / "greeting.j2")
    assert caught.value.line == 4


def test_an_undefined_name_in_plain_data_still_names_what_is_missing(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, sms={"hi": "Hi {{ lead.nickname }} {{ missing }}"})
    with pytest.raises(TemplateError, match="no attribute 'nickname'"):
        renderer.render_sms("hi", {"lead": {"first_name": "Jo"}}, first_message=False)


def test_an_unknown_template_raises_a_template_error(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path)
    with pytest.raises(TemplateError, match="no such email template"):
        renderer.render_email("nope", sample_context())
    with pytest.raises(TemplateError, match="no such sms template"):
        renderer.render_sms("nope", sample_context(), first_message=True)


# ---- email parts -----------------------------------------------------------------------------


def test_text_derived_from_html_keeps_links_and_paragraphs_and_drops_the_preheader(
    tmp_path: Path,
) -> None:
    source = """{% extends "email/_layout.j2" %}
{% block subject %}Report{% endblock %}
{% block preheader %}Hidden preview{% endblock %}
{% block html %}
<h1>The   2026
   Benchmark</h1>
<p>Hi {{ lead.first_name }}, read <a href="https://acme.example/r?a=1&amp;b=2">the report</a>
or visit <a href="https://acme.example/">https://acme.example/</a>.</p>
<ul><li>Fast</li><li>Cheap &amp; <strong>good</strong></li></ul>
<p>Line one<br>Line two</p>
{% endblock %}
"""
    renderer = make_renderer(tmp_path, email={"report": source})
    context = sample_context()
    text = renderer.render_email("report", context).text
    assert "Hidden preview" not in text
    assert (
        "The 2026 Benchmark\n\n"
        "Hi Jordan, read the report (https://acme.example/r?a=1&b=2) or visit https://acme.example/.\n\n"
        "- Fast\n- Cheap & good\n\n"
        "Line one\nLine two"
    ) in text
    assert f"Unsubscribe ({context['unsubscribe_url']})" in text  # the layout's footer


def test_a_text_block_is_used_as_written_and_gets_the_unsubscribe_footer(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING})
    context = sample_context()
    text = renderer.render_email("greeting", context).text
    assert text.startswith("Hi Jordan, welcome.\n\n--\n")
    assert context["unsubscribe_url"] in text
    assert context["sender"]["postal_address"] in text


def test_names_set_at_the_top_of_a_template_are_visible_to_every_part(tmp_path: Path) -> None:
    source = """{% extends "email/_layout.j2" %}
{% set name = lead.first_name or "there" %}
{% set product %}Acme & Co{% endset %}
{% block subject %}{{ name }}, meet {{ product }}{% endblock %}
{% block html %}<p>{{ name }}, meet {{ product }}</p>{% endblock %}
{% block text %}{{ name }}, meet {{ product }}{% endblock %}
"""
    renderer = make_renderer(tmp_path, email={"intro": source})
    email = renderer.render_email("intro", lead_context(first_name=""))
    assert email.subject == "there, meet Acme & Co"
    assert "<p>there, meet Acme & Co</p>" in email.html
    assert email.text.startswith("there, meet Acme & Co")


def test_a_template_without_a_layout_is_its_own_document_without_its_plain_parts(
    tmp_path: Path,
) -> None:
    source = """{% block subject %}Plain subject{% endblock %}
<html><body>{% block html %}<p>Hi {{ lead.first_name }}</p>{% endblock %}
<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>
{% block preheader %}Preview{% endblock %}{% block text %}Text part{% endblock %}"""
    renderer = make_renderer(tmp_path, email={"bare": source})
    email = renderer.render_email("bare", sample_context())
    assert email.html.startswith("<html><body><p>Hi Jordan</p>")
    assert "Plain subject" not in email.html and "Text part" not in email.html
    assert (email.subject, email.preheader) == ("Plain subject", "Preview")
    assert email.text.startswith("Text part")


def test_an_empty_subject_is_refused(tmp_path: Path) -> None:
    source = GREETING.replace(
        "Hello {{ lead.first_name }} from {{ lead.company }}", "{{ lead.company }}"
    )
    renderer = make_renderer(tmp_path, email={"greeting": source})
    with pytest.raises(TemplateError, match="the subject is empty"):
        renderer.render_email("greeting", lead_context(company=" \n "))


def test_templates_compile_once_and_renders_never_read_the_files_again(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING}, sms={"hi": "Hi"})
    before = renderer.render_email("greeting", sample_context())
    renderer.render_sms("hi", sample_context(), first_message=False)
    shutil.rmtree(tmp_path / "email")
    shutil.rmtree(tmp_path / "sms")
    assert renderer.render_email("greeting", sample_context()) == before
    assert renderer.render_sms("hi", sample_context(), first_message=False).body == "Hi"


def test_ago_says_how_long_before_now_something_happened() -> None:
    said = [ago(SAMPLE_NOW - timedelta(days=days), SAMPLE_NOW) for days in (0, 1, 3, 8, 21, 90)]
    assert said == [
        "within the last day",
        "yesterday",
        "3 days ago",
        "last week",
        "3 weeks ago",
        "3 months ago",
    ]


# ---- SMS ---------------------------------------------------------------------------------------


def test_the_opt_out_line_is_added_to_the_first_sms_only(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, sms={"hi": "  Hi {{ lead.first_name }}!\n"})
    first = renderer.render_sms("hi", sample_context(), first_message=True)
    later = renderer.render_sms("hi", sample_context(), first_message=False)
    assert first.body == f"Hi Jordan!\n{OPT_OUT_LINE}"
    assert later.body == "Hi Jordan!"
    assert (first.segments, first.encoding) == (1, "GSM-7")


@pytest.mark.parametrize("body", ["Hi! Text STOP to quit", "Hi! reply stop to opt out", "STOP=end"])
def test_a_body_that_already_says_how_to_stop_gets_no_second_opt_out_line(
    tmp_path: Path, body: str
) -> None:
    renderer = make_renderer(tmp_path, sms={"hi": body})
    assert renderer.render_sms("hi", sample_context(), first_message=True).body == body


def test_a_body_that_merely_uses_the_word_stop_still_gets_the_opt_out_line(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, sms={"hi": "Stop by our booth at SaaStr!"})
    body = renderer.render_sms("hi", sample_context(), first_message=True).body
    assert body.endswith(OPT_OUT_LINE)


def test_an_sms_reports_its_segments_and_encoding(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, sms={"long": "x" * 150, "emoji": "Hi 👋"})
    long = renderer.render_sms("long", sample_context(), first_message=True)
    emoji = renderer.render_sms("emoji", sample_context(), first_message=False)
    assert (long.segments, long.encoding) == (2, "GSM-7")
    assert (emoji.segments, emoji.encoding) == (1, "UCS-2")


# ---- the shipped templates ---------------------------------------------------------------------


def test_the_shipped_templates_are_the_ones_the_workflows_name() -> None:
    workflows = load_workflows(WORKFLOWS, EMAIL_TEMPLATES, SMS_TEMPLATES)
    named = {(use[1], use[0]) for use in workflows.template_uses}
    named |= {("email", form.confirm_template) for form in workflows.forms.values()}
    shipped = {("email", name) for name in EMAIL_TEMPLATES}
    assert named == shipped | {("sms", name) for name in SMS_TEMPLATES}


@pytest.mark.parametrize("name", sorted(SEQUENCE_EMAILS))
def test_every_shipped_email_renders_for_the_sample_lead_with_an_unsubscribe_link(
    name: str,
) -> None:
    context = sample_context()
    email = Renderer(SHIPPED).render_email(name, context)
    assert email.subject and email.preheader and "\n" not in email.subject
    assert f'href="{context["unsubscribe_url"].replace("&", "&amp;")}"' in email.html
    assert context["sender"]["postal_address"] in email.html
    assert context["unsubscribe_url"] in email.text
    assert "{{" not in email.html + email.text and "None" not in email.html + email.text


@pytest.mark.parametrize("name", sorted(SEQUENCE_EMAILS))
def test_every_shipped_email_renders_for_a_lead_we_know_little_about(name: str) -> None:
    context = lead_context(first_name="", company="", title="", fields={})
    context["recent_activity"] = []
    email = Renderer(SHIPPED).render_email(name, context)
    assert "Hi there," in email.text
    assert "None" not in email.html + email.text


@pytest.mark.parametrize("name", sorted(SMS_TEMPLATES))
def test_every_shipped_sms_fits_one_segment_and_the_first_one_two(name: str) -> None:
    renderer = Renderer(SHIPPED)
    later = renderer.render_sms(name, sample_context(), first_message=False)
    first = renderer.render_sms(name, sample_context(), first_message=True)
    assert (later.segments, later.encoding) == (1, "GSM-7")
    assert first.segments <= 2 and first.body.endswith(OPT_OUT_LINE)


def test_check_finds_nothing_wrong_with_the_shipped_templates() -> None:
    uses = [(name, "email", "w.yml", 1) for name in SEQUENCE_EMAILS]
    uses += [(name, "sms", "w.yml", 2) for name in SMS_TEMPLATES]
    assert Renderer(SHIPPED).check(uses, sms_max_segments=1) == []


# ---- check() -----------------------------------------------------------------------------------


def test_check_reports_unknown_templates_undefined_variables_and_long_sms(tmp_path: Path) -> None:
    typo = GREETING.replace(
        "Hi {{ lead.first_name }}, welcome.</p>", "Hi {{ lead.frist_name }}</p>"
    )
    renderer = make_renderer(
        tmp_path, email={"typo": typo}, sms={"long": "{{ lead.first_name }} " + "x" * 300}
    )
    problems = renderer.check(
        [
            ("welcom", "email", "workflows/lead-nurture.yml", 12, "milestones[0].steps[0].email"),
            ("typo", "email", "workflows/lead-nurture.yml", 14),
            ("long", "sms", "workflows/lead-nurture.yml", 20, "milestones[1].steps[2].sms"),
        ],
        sms_max_segments=2,
    )
    assert [(p.line, p.field) for p in problems] == [
        (12, "milestones[0].steps[0].email"),
        (14, ""),
        (20, "milestones[1].steps[2].sms"),
    ]
    unknown, undefined, long = (p.message for p in problems)
    assert unknown.startswith("template 'welcom': no such email template")
    assert undefined.startswith("template 'typo': 'lead' has no attribute 'frist_name'")
    assert f"{tmp_path / 'email' / 'typo.j2'}:4" in undefined
    assert long == (
        "template 'long': the first message is 3 GSM-7 segments, more than the 2 allowed"
    )
    assert all(p.file == "workflows/lead-nurture.yml" for p in problems)


def test_check_reports_syntax_errors_with_the_template_file_and_line(tmp_path: Path) -> None:
    broken = GREETING.replace("{% block text %}", "{% block text %}{% if lead.first_name %}")
    renderer = make_renderer(tmp_path, email={"broken": broken})
    [problem] = renderer.check([("broken", "email", "w.yml", 3)])
    assert problem.message.startswith("template 'broken': ")
    assert f"({tmp_path / 'email' / 'broken.j2'}:5)" in problem.message


def test_check_reports_a_syntax_error_in_the_layout_where_it_is(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING})
    (tmp_path / "email" / "_layout.j2").write_text("<html>\n{{ sender.company }\n</html>")
    [problem] = renderer.check([("greeting", "email", "w.yml", 3)])
    assert f"({tmp_path / 'email' / '_layout.j2'}:2)" in problem.message


def test_check_reports_sandbox_violations_and_missing_unsubscribe_links(tmp_path: Path) -> None:
    no_link = "{% block subject %}Hi{% endblock %}{% block html %}<p>Hi</p>{% endblock %}"
    renderer = make_renderer(
        tmp_path, email={"no_link": no_link}, sms={"evil": "{{ ''.__class__ }}"}
    )
    problems = renderer.check([("no_link", "email", "w.yml", 1), ("evil", "sms", "w.yml", 2)])
    assert [p.message for p in problems] == [
        "template 'no_link': the HTML part has no unsubscribe link",
        "template 'no_link': the text part has no unsubscribe link",
        problems[2].message,
    ]
    assert "not allowed in a template" in problems[2].message


def test_check_takes_the_sms_limit_of_each_workflow_file(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, sms={"long": "x" * 200})
    uses = [("long", "sms", "strict.yml", 1), ("long", "sms", "lenient.yml", 1)]
    problems = renderer.check(uses, sms_max_segments={"strict.yml": 1, "lenient.yml": 2})
    assert [p.file for p in problems] == ["strict.yml"]


def test_check_reports_an_unknown_channel(tmp_path: Path) -> None:
    renderer = make_renderer(tmp_path, email={"greeting": GREETING})
    assert renderer.check([("greeting", "fax", "w.yml", 7)]) == [
        Problem("w.yml", 7, "", "unknown channel 'fax' (expected email or sms)")
    ]
