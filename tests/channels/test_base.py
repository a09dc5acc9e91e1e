"""Headers every email adapter sends, the normalised types, and the adapter registry."""

from __future__ import annotations

import email
import email.policy
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels import build_channel, build_channels
from channels.base import DeliveryEvent, EmailMessage, build_mime, email_headers
from channels.console import ConsoleChannel
from channels.outbox import OutboxChannel
from channels.sendgrid import SendGridChannel
from channels.smtp import SmtpChannel
from channels.twilio import TwilioChannel
from engine.errors import ChannelError, ConfigurationError, ErrorKind

MESSAGE = EmailMessage(
    delivery_id="d-1",
    to_email="ada@example.com",
    to_name="Ada",
    from_email="hello@acme.test",
    from_name="Acme",
    subject="Hello",
    html="<p>Hi</p>",
    text="Hi",
)


def test_a_message_without_unsubscribe_links_gets_only_the_delivery_id() -> None:
    assert email_headers(MESSAGE) == {"X-Nurture-Delivery-Id": "d-1"}


def test_an_https_link_and_a_mailto_give_rfc_8058_one_click_headers() -> None:
    headers = email_headers(
        replace(MESSAGE, unsubscribe_url="https://acme.test/u/t", unsubscribe_mailto="u@acme.test")
    )

    assert headers["List-Unsubscribe"] == "<https://acme.test/u/t>, <mailto:u@acme.test>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_plain_http_link_is_listed_but_not_promised_as_one_click() -> None:
    headers = email_headers(replace(MESSAGE, unsubscribe_url="http://localhost:8000/u/t"))

    assert headers["List-Unsubscribe"] == "<http://localhost:8000/u/t>"
    assert "List-Unsubscribe-Post" not in headers


def test_a_mailto_alone_is_listed_without_one_click() -> None:
    headers = email_headers(replace(MESSAGE, unsubscribe_mailto="mailto:u@acme.test"))

    assert headers["List-Unsubscribe"] == "<mailto:u@acme.test>"
    assert "List-Unsubscribe-Post" not in headers


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "Hello\r\nBcc: victim@example.com"},
        {"subject": "Hello\nthere"},
        {"to_name": "Ada\rLovelace"},
        {"from_name": "Acme\n"},
        {"reply_to": "a@b.test\r\nX: y"},
        {"unsubscribe_url": "https://acme.test/u/t\r\nX: y"},
        {"unsubscribe_mailto": "u@acme.test\n"},
        {"headers": {"X-Campaign": "spring\r\nBcc: victim@example.com"}},
        {"delivery_id": "d-1\r\nX: y"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_line_break_in_any_header_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ChannelError) as caught:
        email_headers(replace(MESSAGE, **change))  # type: ignore[arg-type]

    assert caught.value.kind == ErrorKind.PERMANENT


@pytest.mark.parametrize("name", ["To", "bcc", "Subject", "List-Unsubscribe", "Bad Name", "A:B"])
def test_custom_headers_may_not_replace_the_ones_nurture_sets(name: str) -> None:
    with pytest.raises(ChannelError, match="may not be set"):
        email_headers(replace(MESSAGE, headers={name: "x"}))


def test_a_delivery_event_must_have_a_known_kind_and_an_aware_time() -> None:
    fields = dict(
        channel="email",
        provider="sendgrid",
        provider_event_id="e",
        delivery_id=None,
        provider_message_id=None,
        recipient="ada@example.com",
    )
    with pytest.raises(ValueError, match="kind"):
        DeliveryEvent(kind="processed", occurred_at=datetime.now(UTC), **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        DeliveryEvent(kind="opened", occurred_at=datetime(2026, 1, 1), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "env", "expected"),
    [
        ("outbox", {}, OutboxChannel),
        ("console", {}, ConsoleChannel),
        ("smtp", {"NURTURE_SMTP_HOST": "mail.acme.test"}, SmtpChannel),
        ("sendgrid", {"SENDGRID_API_KEY": "SG.k"}, SendGridChannel),
        ("twilio", {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}, TwilioChannel),
    ],
)
def test_every_adapter_is_built_by_name(name: str, env: dict[str, str], expected: type) -> None:
    channel = build_channel(name, env)

    assert isinstance(channel, expected)
    assert channel.name == name


def test_an_unknown_adapter_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="console, outbox, sendgrid, smtp, twilio"):
        build_channel("mailgun", {})


def test_an_adapter_asked_for_the_wrong_channel_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="twilio sends sms, not email"):
        build_channel(
            "twilio", {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}, channel="email"
        )


def test_with_nothing_configured_both_channels_go_to_the_outbox(tmp_path: Path) -> None:
    channels = build_channels({"NURTURE_OUTBOX_DIR": str(tmp_path)})

    assert {k: (v.name, v.channel) for k, v in channels.items()} == {
        "email": ("outbox", "email"),
        "sms": ("outbox", "sms"),
    }


def test_configured_providers_are_chosen_and_can_be_overridden() -> None:
    env = {
        "SENDGRID_API_KEY": "SG.k",
        "NURTURE_SMTP_HOST": "mail.acme.test",
        "TWILIO_ACCOUNT_SID": "AC1",
        "TWILIO_AUTH_TOKEN": "t",
    }

    assert [c.name for c in build_channels(env).values()] == ["sendgrid", "twilio"]
    overridden = build_channels(
        env | {"NURTURE_EMAIL_CHANNEL": "smtp", "NURTURE_SMS_CHANNEL": "console"}
    )
    assert [c.name for c in overridden.values()] == ["smtp", "console"]


@pytest.mark.parametrize(
    ("name", "module", "env"),
    [
        ("sendgrid", "sendgrid", {"SENDGRID_API_KEY": "SG.k"}),
        ("twilio", "twilio.rest", {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}),
    ],
)
def test_a_missing_sdk_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, env: dict[str, str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError

    with pytest.raises(ConfigurationError, match=r"pip install 'nurture\[providers\]'"):
        build_channel(name, env)


MIME_CASES = [
    {},
    {"to_name": "Zoë Łukasiewicz-Østergaard", "subject": "Ваш отчёт готов"},
    {"subject": "Looks  like   an =?utf-8?q?encoded?= word, with  double spaces"},
    {"subject": "A subject long enough to be folded by the email package " * 3},
    {"to_name": "Ana  Silva", "unsubscribe_url": "https://acme.test/u/" + "t" * 90},
    {"html": "<p>Déjà vu = 100% " + "très long " * 40 + "</p>\n<p>two</p>", "text": "ok\n\n"},
]


@pytest.mark.parametrize("change", MIME_CASES)
def test_the_fast_mime_writer_gives_the_stdlib_headers_and_bodies_that_decode_to_the_copy(
    change: dict[str, object],
) -> None:
    message = replace(MESSAGE, **change)  # type: ignore[arg-type]
    mime = build_mime(message, datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    written = mime.as_bytes()
    # The same message written by the email package's own folder, header for header.
    assert written == mime.as_bytes(policy=email.policy.compat32)
    parsed = email.message_from_bytes(written)
    text, html = parsed.get_payload()
    assert text.get_payload(decode=True).decode() == message.text
    assert html.get_payload(decode=True).decode() == message.html
    for part in (text, html):  # quoted-printable keeps body lines within 76 characters
        assert max(len(line) for line in str(part.get_payload()).splitlines()) <= 76


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("Zofia Wójcik", "Zofia, Twój raport jest gotowy: zażółć gęślą jaźń"),
        ("Дмитрий Соколов", "Дмитрий, ваш отчёт готов — " + "очень длинная тема " * 4),
        ("Søren Bækgaard", "Søren: din rapport er klar"),
    ],
)
def test_names_and_subjects_in_any_script_read_back_as_written(name: str, subject: str) -> None:
    message = replace(MESSAGE, to_name=name, to_email="soren@xn--blbr-roah.test", subject=subject)
    written = build_mime(message, datetime(2026, 3, 2, 9, 0, tzinfo=UTC)).as_bytes()

    assert written.isascii()  # RFC 2047 words: any relay takes the headers
    parsed = email.message_from_bytes(written, policy=email.policy.default)
    assert parsed["Subject"] == subject
    assert parsed["To"].addresses[0].display_name == name
    assert parsed["To"].addresses[0].addr_spec == "soren@xn--blbr-roah.test"


def test_only_the_console_carries_a_mailbox_that_is_not_ascii() -> None:
    assert [
        c.__name__
        for c in (ConsoleChannel, OutboxChannel, SmtpChannel, SendGridChannel)
        if c.smtputf8
    ] == ["ConsoleChannel"]
