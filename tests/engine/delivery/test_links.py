"""Click tracking's rewrite: web links become signed redirects, everything else stays as written;
a sent email of a tracking sequence carries them, one of a sequence without tracking does not."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from channels.base import EMAIL
from channels.outbox import OutboxChannel
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.links import Click, click_url, read_click, track_links, with_lead_token
from engine.delivery.rendering import RenderedEmail
from engine.delivery.sending import send_delivery
from engine.delivery.unsubscribe import make_token, read_token
from engine.funnel.service import track
from engine.models import Delivery
from engine.runner.inline import run_due
from engine.settings import Settings
from engine.signing import InvalidTokenError, lead_token, read_lead_token
from tests.apps import outbox_app
from tests.conftest import START
from tests.engine.tracked import tracked_workflows

SECRET = "links-test-secret"
PUBLIC = "https://nurture.acme.test"
SETTINGS = Settings.from_env({"NURTURE_PUBLIC_URL": PUBLIC, "NURTURE_SECRET_KEY": SECRET})
UNSUBSCRIBE = f"{PUBLIC}/u/42.bWFya2V0aW5n.c2lnbmF0dXJl"
REDIRECT = re.compile(re.escape(PUBLIC) + r"/c/([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+){3})")
# What a redirect is written as in the HTML (an href value) and in the text.
HREF_REDIRECT = re.compile(r'(?i:href)="' + REDIRECT.pattern + '"')


def _rewrite(html: str = "", text: str = "", delivery_id: str = "d-1") -> RenderedEmail:
    return track_links(SETTINGS, delivery_id, RenderedEmail("Hi", html, text, ""), {})


def _clicks(part: str) -> list[Click]:
    return [read_click(SECRET, token) for token in REDIRECT.findall(part)]


# --- HTML ------------------------------------------------------------------------------------


def test_web_links_in_the_html_become_redirects_that_name_the_original_url() -> None:
    html = (
        '<p><a href="https://acme.test/pricing?plan=pro&amp;utm_source=email">Prices</a>'
        " and <a HREF='http://blog.acme.test/post'>the post</a></p>"
    )
    rewritten = _rewrite(html).html

    assert _clicks(rewritten) == [
        Click("d-1", 0, "https://acme.test/pricing?plan=pro&utm_source=email"),
        Click("d-1", 1, "http://blog.acme.test/post"),
    ]
    assert len(HREF_REDIRECT.findall(rewritten)) == 2
    assert "acme.test/pricing" not in rewritten and "blog.acme.test" not in rewritten


def test_only_the_href_values_change_and_the_rest_of_the_html_stays_byte_for_byte() -> None:
    html = (
        "<!DOCTYPE html>\n<html><head><style>a{color:red}</style></head>\n<body>\n"
        '<!--[if mso]><a href="https://outlook.acme.test">o</a><![endif]-->\n'
        '<table role="presentation"><tr><td style="padding:0">\n'
        '  <a class="btn" href="https://acme.test/start" target=_blank>Start &rarr;</a>\n'
        "</td></tr></table>\n"
        '<img src="https://acme.test/logo.png" alt="">\n'
        "<a data-href='https://nope.test' title='see href=\"https://x.test\"'\n"
        "   href=https://acme.test/docs>Docs</a>\n"
        "</body></html>"
    )
    rewritten = _rewrite(html).html
    first, second = _clicks(rewritten)

    assert (first.url, second.url) == ("https://acme.test/start", "https://acme.test/docs")
    restored = HREF_REDIRECT.sub('href="@"', rewritten)
    expected = html.replace('href="https://acme.test/start"', 'href="@"').replace(
        "href=https://acme.test/docs", 'href="@"'
    )
    assert restored == expected


def test_unsubscribe_mailto_tel_anchors_relative_links_and_placeholders_are_left_alone() -> None:
    html = (
        f'<a href="{UNSUBSCRIBE}">Unsubscribe</a>'
        f'<a href="{PUBLIC}">nurture itself</a>'
        '<a href="mailto:sales@acme.test?subject=Hi&amp;body=x">Mail us</a>'
        '<a href="tel:+15005550006">Call</a>'
        '<a href="#top">Top</a><a href="/relative/page">Relative</a><a>No href</a>'
        '<a href="javascript:alert(1)">js</a><a href="ftp://files.acme.test/x">ftp</a>'
        '<a href="https://acme.test/?e=*|EMAIL|*">Merge tag</a>'
        '<a href="https://acme.test/{{ token }}">Unrendered</a>'
        '<a href="https://acme.test/%%unsubscribe%%">Provider tag</a>'
    )
    text = f"Unsubscribe with one click: {UNSUBSCRIBE}\nMail sales@acme.test or call +15005550006\n"

    rewritten = _rewrite(html, text)

    assert (rewritten.html, rewritten.text) == (html, text)


def test_bare_urls_in_the_text_become_redirects_and_the_sentence_keeps_its_punctuation() -> None:
    text = (
        "Read the guide (https://acme.test/guide?a=1&b=2). Or this: https://acme.test/wiki/Foo_(bar),"
        " then https://acme.test/end!\n<https://acme.test/angle>\n"
    )
    rewritten = _rewrite(text=text).text

    assert [click.url for click in _clicks(rewritten)] == [
        "https://acme.test/guide?a=1&b=2",
        "https://acme.test/wiki/Foo_(bar)",
        "https://acme.test/end",
        "https://acme.test/angle",
    ]
    assert REDIRECT.sub("@", rewritten) == "Read the guide (@). Or this: @, then @!\n<@>\n"


def test_a_url_in_both_parts_or_twice_in_the_html_is_one_link_with_one_number() -> None:
    html = (
        '<a href="https://acme.test/a"><img src="x"></a><a href="https://acme.test/b">b</a>'
        '<a href="https://acme.test/a">a again</a>'
    )
    text = "A: https://acme.test/a\nC: https://acme.test/c\n"
    rewritten = _rewrite(html, text)

    assert [c.index for c in _clicks(rewritten.html)] == [0, 1, 0]
    assert [(c.index, c.url) for c in _clicks(rewritten.text)] == [
        (0, "https://acme.test/a"),
        (2, "https://acme.test/c"),
    ]


def test_a_link_is_signed_as_the_browser_would_request_it() -> None:
    html = (
        '<a href="\n  https://acme.test/a\tb?q=x y  ">spaced</a>'
        '<a href="https://bücher.acme.test/straße">idn</a>'
    )
    assert [click.url for click in _clicks(_rewrite(html).html)] == [
        "https://acme.test/ab?q=x%20y",
        "https://xn--bcher-kva.acme.test/stra%C3%9Fe",
    ]


def test_links_from_the_leads_own_data_are_tracked_only_to_our_own_sites() -> None:
    settings = Settings.from_env(
        {
            "NURTURE_PUBLIC_URL": PUBLIC,
            "NURTURE_SECRET_KEY": SECRET,
            "NURTURE_SITE_ORIGINS": "https://www.acme.test",
        }
    )
    context = {
        "lead": {"fields": {"website": "https://evil.test/"}},
        "recent_activity": [{"url": "https://www.acme.test/pricing"}],
    }
    html = (
        '<a href="https://evil.test/">theirs</a><a href="https://evil.test/x?y">also theirs</a>'
        '<a href="https://www.acme.test/pricing">ours</a><a href="https://blog.test/">template</a>'
    )
    rewritten = track_links(settings, "d-1", RenderedEmail("Hi", html, "", ""), context).html

    assert [c.url for c in _clicks(rewritten)] == [
        "https://www.acme.test/pricing",
        "https://blog.test/",
    ]
    assert 'href="https://evil.test/"' in rewritten and 'href="https://evil.test/x?y"' in rewritten


def test_an_address_inside_the_leads_text_or_one_browsers_read_otherwise_gets_no_redirect() -> None:
    settings = Settings.from_env(
        {
            "NURTURE_PUBLIC_URL": PUBLIC,
            "NURTURE_SECRET_KEY": SECRET,
            "NURTURE_SITE_ORIGINS": "https://site.acme.test",
        }
    )
    context = {
        "lead": {"company": "see https://evil.test/login."},
        "recent_activity": [{"title": "Pricing https://evil.com\\@site.acme.test/ now"}],
    }
    text = (
        "Hello see https://evil.test/login. and Pricing https://evil.com\\@site.acme.test/ now;"
        " our guide https://site.acme.test/guide"
    )
    rewritten = track_links(settings, "d-1", RenderedEmail("Hi", "", text, ""), context).text

    assert [c.url for c in _clicks(rewritten)] == ["https://site.acme.test/guide"]
    assert "https://evil.test/login." in rewritten
    assert with_lead_token("https://evil.com\\@site.acme.test/", settings.site_origins, "T") == (
        "https://evil.com\\@site.acme.test/"
    )


# --- Tokens ----------------------------------------------------------------------------------


def test_a_click_token_altered_anywhere_or_signed_with_another_secret_is_refused() -> None:
    url = click_url(SETTINGS, "d-1", 3, "https://acme.test/pricing")
    token = url.rsplit("/", 1)[1]
    delivery, index, target, signature = token.split(".")
    other = click_url(SETTINGS, "d-1", 3, "https://evil.test/").rsplit("/", 1)[1]

    assert read_click(SECRET, token) == Click("d-1", 3, "https://acme.test/pricing")
    for forged in (
        f"d-2.{index}.{target}.{signature}",  # another delivery
        f"{delivery}.4.{target}.{signature}",  # another link
        f"{delivery}.{index}.{other.split('.')[2]}.{signature}",  # another URL
        token[:-1] + ("A" if token[-1] != "A" else "B"),  # another signature
        token.rsplit(".", 1)[0],  # truncated
        token + "=",  # padded
    ):
        with pytest.raises(InvalidTokenError):
            read_click(SECRET, forged)
    with pytest.raises(InvalidTokenError):
        read_click("another-secret", token)


def test_tokens_of_one_purpose_never_pass_for_another() -> None:
    unsubscribe = make_token(SECRET, 42, "marketing")
    lead = lead_token(SECRET, 42, START)

    with pytest.raises(InvalidTokenError):
        read_token(SECRET, lead)  # a lead token unsubscribes nobody
    with pytest.raises(InvalidTokenError):
        read_lead_token(SECRET, unsubscribe, START)  # nor identifies an unsubscribe link
    with pytest.raises(InvalidTokenError):
        read_click(SECRET, f"d-1.{lead}")


def test_a_lead_token_names_its_lead_for_a_week_and_refuses_forgeries() -> None:
    token = lead_token(SECRET, 42, START)
    lead, issued, signature = token.split(".")

    assert read_lead_token(SECRET, token, START + timedelta(days=7)) == 42
    for forged in (f"43.{issued}.{signature}", f"{lead}.{int(issued) + 1}.{signature}"):
        with pytest.raises(InvalidTokenError):
            read_lead_token(SECRET, forged, START)
    with pytest.raises(InvalidTokenError, match="expired"):
        read_lead_token(SECRET, token, START + timedelta(days=7, seconds=1))
    with pytest.raises(InvalidTokenError, match="expired"):
        read_lead_token(SECRET, token, START - timedelta(hours=1))  # issued in the future


def test_the_lead_token_goes_only_to_the_websites_origins() -> None:
    sites = ("https://www.acme.test", "http://localhost:8080")
    add = lambda url: with_lead_token(url, sites, "TOKEN")  # noqa: E731

    assert add("https://www.acme.test") == "https://www.acme.test?nurture_lead=TOKEN"
    assert add("https://WWW.acme.test:443/p?q=1&r=2#top") == (
        "https://WWW.acme.test:443/p?q=1&r=2&nurture_lead=TOKEN#top"
    )
    assert add("https://www.acme.test/p?") == "https://www.acme.test/p?nurture_lead=TOKEN"
    assert add("http://localhost:8080/x") == "http://localhost:8080/x?nurture_lead=TOKEN"
    for elsewhere in (
        "http://www.acme.test/",  # another scheme is another origin
        "https://acme.test/",
        "https://www.acme.test.evil.test/",
        "https://www.acme.test@evil.test/",  # user info, not the host
        "https://evil.test/?next=https://www.acme.test/",
        "http://localhost:8081/x",
        "https://www.acme.test:notaport/",
    ):
        assert add(elsewhere) == elsewhere


# --- Sent emails -----------------------------------------------------------------------------

ANA = "ana@northwind.test"
UNTRACKED = """\
name: plain
enrol: {on: {event: form_submitted}}
send: {from: "Acme <hello@acme.test>"}
milestones:
  - id: hello
    steps: [{email: whats_new}]
"""


@pytest.fixture
def sent(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """Ana signed up: the tracking sequence sent her welcome, the other one whats_new."""
    folder = tracked_workflows(tmp_path / "workflows", plain=UNTRACKED)
    app = outbox_app(
        db, clock, tmp_path, folder, NURTURE_PUBLIC_URL=PUBLIC, NURTURE_SECRET_KEY=SECRET
    )
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": ANA, "first_name": "Ana"}, "form_submitted")
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        planned = list(s.scalars(select(Delivery.id)))
    assert sorted(str(send_delivery(app, delivery_id)) for delivery_id in planned) == [
        "sent",
        "sent",
    ]
    return app


def _sent_email(app: App, template: str) -> tuple[str, EmailMessage]:
    """The delivery id and the message the outbox wrote for a template."""
    with app.sessions() as s:
        delivery_id = s.scalars(select(Delivery.id).where(Delivery.template == template)).one()
    outbox = app.channels[EMAIL]
    assert isinstance(outbox, OutboxChannel)
    raw = (outbox.directory / "email" / f"{delivery_id}.eml").read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return delivery_id, message


def _part(message: EmailMessage, kind: str) -> str:
    body = message.get_body((kind,))
    assert body is not None
    return str(body.get_content())  # type: ignore[attr-defined]


def test_a_sent_email_of_a_tracking_sequence_links_through_nurture_but_unsubscribes_directly(
    sent: App,
) -> None:
    delivery_id, message = _sent_email(sent, "welcome")
    html, text = _part(message, "html"), _part(message, "plain")
    unsubscribe = re.search(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert unsubscribe is not None and unsubscribe.group(1).startswith(f"{PUBLIC}/u/")

    start = Click(delivery_id, 0, "https://acme-analytics.example/start")
    assert _clicks(html) == [start] and _clicks(text) == [start]
    links = re.findall(r'href="([^"]+)"', html) + re.findall(r"https?://\S+", text)
    assert {link.split("/")[3] for link in links} == {"c", "u"}  # nothing else, nowhere else
    assert f'href="{unsubscribe.group(1)}"' in html
    assert f"Unsubscribe with one click: {unsubscribe.group(1)}" in text


def test_a_sent_email_of_a_sequence_without_tracking_keeps_its_links(sent: App) -> None:
    _, message = _sent_email(sent, "whats_new")
    html, text = _part(message, "html"), _part(message, "plain")

    assert "/c/" not in html + text
    assert 'href="https://acme-analytics.example/' in html
    assert "https://acme-analytics.example/" in text
