"""Headers every email adapter sends, the normalised types, and the adapter registry."""

from __future__ import annotations

import email
import email.policy
import sys
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage as Parsed
from pathlib import Path

import pytest

from channels import build_channel, build_channels
from channels.base import (
    DeliveryEvent,
    EmailMessage,
    build_mime,
    email_headers,
    smtputf8_address,
)
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


def test_every_email_adapter_but_sendgrid_carries_a_mailbox_that_is_not_ascii() -> None:
    assert [
        c.__name__
        for c in (ConsoleChannel, OutboxChannel, SmtpChannel, SendGridChannel)
        if not c.smtputf8
    ] == ["SendGridChannel"]


NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def read_utf8(written: bytes) -> Parsed:
    """A message as a reader that knows SMTPUTF8 reads it: UTF-8 headers decoded as UTF-8."""
    parsed = email.message_from_string(written.decode("utf-8"), policy=email.policy.default)
    assert isinstance(parsed, Parsed)
    return parsed


@pytest.mark.parametrize(
    ("change", "address"),
    [
        ({}, None),
        ({"to_email": "soren@xn--blbr-roah.test", "to_name": "Søren"}, None),
        ({"reply_to": "Zoë Müller <zoe@acme.test>"}, None),
        ({"to_email": "иван@пример.рф"}, "иван@пример.рф"),
        ({"to_email": "Jens.Hansen@blåbær.dk"}, "Jens.Hansen@blåbær.dk"),
        ({"from_email": "hej@blåbær.dk"}, "hej@blåbær.dk"),
        ({"reply_to": "Иван <иван@пример.рф>"}, "иван@пример.рф"),
    ],
)
def test_only_an_address_that_is_not_ascii_needs_smtputf8(
    change: dict[str, str], address: str | None
) -> None:
    assert smtputf8_address(replace(MESSAGE, **change)) == address  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("to_email", "to_name", "to_line"),
    [
        ("иван@пример.рф", "Иван Петров", "To: Иван Петров <иван@пример.рф>"),
        ("Jens.Hansen@blåbær.dk", "Hansen, Jens", 'To: "Hansen, Jens" <Jens.Hansen@blåbær.dk>'),
        ("иван@пример.рф", "", "To: иван@пример.рф"),
    ],
)
def test_a_message_only_smtputf8_carries_has_utf8_headers_that_read_back_as_written(
    to_email: str, to_name: str, to_line: str
) -> None:
    message = replace(MESSAGE, to_email=to_email, to_name=to_name, subject="Ваш отчёт готов")
    written = build_mime(message, NOW).as_bytes()

    assert f"\n{to_line}\n".encode() in written
    assert "\nSubject: Ваш отчёт готов\n".encode() in written
    parsed = read_utf8(written)
    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == (to_name, to_email)
    assert parsed["Subject"] == "Ваш отчёт готов"
    text, html = parsed.iter_parts()
    assert text["Content-Transfer-Encoding"] == "quoted-printable"  # bodies stay 7-bit
    assert (text.get_content(), html.get_content()) == ("Hi", "<p>Hi</p>")


def test_text_that_reads_as_encoded_words_stays_that_text_in_a_utf8_message() -> None:
    words = "=?utf-8?q?=0D=0ABcc:_victim@example.com?="
    message = replace(
        MESSAGE, to_email="иван@пример.рф", to_name=words, subject=words, headers={"X-A": words}
    )
    parsed = read_utf8(build_mime(message, NOW).as_bytes())

    assert parsed["Bcc"] is None
    assert parsed["To"].addresses[0].display_name == words
    assert (parsed["Subject"], parsed["X-A"]) == (words, words)


def test_a_utf8_subject_past_the_line_limit_is_written_as_encoded_words() -> None:
    subject = "Дмитрий, ваш отчёт готов " * 30  # 1,350 octets of UTF-8
    message = replace(MESSAGE, to_email="иван@пример.рф", subject=subject)
    written = build_mime(message, NOW).as_bytes()

    assert max(len(line) for line in written.splitlines()) <= 998
    assert read_utf8(written)["Subject"] == subject


@pytest.mark.parametrize(
    "address", ["и ван@пример.рф", "иван@@пример.рф", "иван@пример", '"и в"@пример.рф']
)
def test_an_unusable_address_that_is_not_ascii_is_permanent(address: str) -> None:
    with pytest.raises(ChannelError, match="invalid email address") as caught:
        build_mime(replace(MESSAGE, to_email=address), NOW)

    assert caught.value.kind == ErrorKind.PERMANENT
