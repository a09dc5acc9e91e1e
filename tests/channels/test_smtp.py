"""The SMTP adapter against a real aiosmtpd relay on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import ssl
from email.message import EmailMessage as Parsed

import pytest

from channels.base import EmailMessage
from channels.smtp import SmtpChannel
from engine.errors import ChannelError, ConfigurationError, ErrorKind
from tests.channels.servers import SmtpServer, free_port

MESSAGE = EmailMessage(
    delivery_id="0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e",
    to_email="ada@example.com",
    to_name="Ada Lovelace",
    from_email="hello@acme.test",
    from_name="Acme Analytics",
    subject="Your pricing guide",
    html="<p>Hi Ada</p>",
    text="Hi Ada",
    unsubscribe_url="https://acme.test/u/token123",
    unsubscribe_mailto="mailto:unsubscribe@acme.test",
)


def parsed(content: bytes) -> Parsed:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, Parsed)
    return message


def test_a_message_arrives_with_both_parts_and_the_nurture_headers(
    smtp_server: SmtpServer,
) -> None:
    result = SmtpChannel("127.0.0.1", smtp_server.port).send(MESSAGE)

    (received,) = smtp_server.received
    assert received.mail_from == "hello@acme.test"
    assert received.rcpt_tos == ("ada@example.com",)
    message = parsed(received.content)
    # Folded onto its own line (legal); the parser keeps the fold's leading space.
    assert message["List-Unsubscribe"].strip() == (
        "<https://acme.test/u/token123>, <mailto:unsubscribe@acme.test>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Nurture-Delivery-Id"] == MESSAGE.delivery_id
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert plain.get_content().strip() == "Hi Ada"
    assert html.get_content().strip() == "<p>Hi Ada</p>"
    assert result.provider_message_id == message["Message-ID"]
    assert result.status == "accepted"


def test_starttls_and_login_are_used_when_configured(
    secure_smtp_server: SmtpServer, client_tls: ssl.SSLContext
) -> None:
    channel = SmtpChannel(
        "127.0.0.1",
        secure_smtp_server.port,
        user="mailer",
        password="s3cret",
        starttls=True,
        ssl_context=client_tls,
    )

    channel.send(MESSAGE)

    assert len(secure_smtp_server.received) == 1


def test_a_wrong_password_is_a_configuration_error(
    secure_smtp_server: SmtpServer, client_tls: ssl.SSLContext
) -> None:
    channel = SmtpChannel(
        "127.0.0.1",
        secure_smtp_server.port,
        user="mailer",
        password="nope",
        starttls=True,
        ssl_context=client_tls,
    )

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.CONFIGURATION
    assert caught.value.status == 535


def test_an_untrusted_certificate_is_a_configuration_error(secure_smtp_server: SmtpServer) -> None:
    channel = SmtpChannel("127.0.0.1", secure_smtp_server.port, starttls=True)

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.CONFIGURATION


def test_starttls_against_a_server_without_it_is_a_configuration_error(
    smtp_server: SmtpServer,
) -> None:
    with pytest.raises(ChannelError) as caught:
        SmtpChannel("127.0.0.1", smtp_server.port, starttls=True).send(MESSAGE)

    assert caught.value.kind == ErrorKind.CONFIGURATION


@pytest.mark.parametrize(
    ("rcpt", "data", "kind", "status"),
    [
        ("550 5.1.1 No such user", None, ErrorKind.PERMANENT, 550),
        ("421 4.7.0 Try again later", None, ErrorKind.TRANSIENT, 421),
        ("450 4.2.1 Mailbox busy", None, ErrorKind.TRANSIENT, 450),
        (None, "554 5.7.1 Message rejected as spam", ErrorKind.PERMANENT, 554),
        (None, "451 4.3.0 Local error", ErrorKind.TRANSIENT, 451),
    ],
    ids=["rcpt-550", "rcpt-421", "rcpt-450", "data-554", "data-451"],
)
def test_refusals_map_by_reply_code(
    smtp_server: SmtpServer, rcpt: str | None, data: str | None, kind: str, status: int
) -> None:
    if rcpt:
        smtp_server.handler.rcpt_replies.append(rcpt)
    if data:
        smtp_server.handler.data_replies.append(data)

    with pytest.raises(ChannelError) as caught:
        SmtpChannel("127.0.0.1", smtp_server.port).send(MESSAGE)

    assert caught.value.kind == kind
    assert caught.value.status == status
    assert smtp_server.received == []


def test_a_closed_port_is_transient() -> None:
    with pytest.raises(ChannelError) as caught:
        SmtpChannel("127.0.0.1", free_port(), timeout=2).send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_relay_that_hangs_up_before_the_message_was_sent_is_transient(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.rcpt_faults.append("hang up")

    with pytest.raises(ChannelError) as caught:
        SmtpChannel("127.0.0.1", smtp_server.port, timeout=2).send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT
    assert smtp_server.received == []


@pytest.mark.parametrize("fault", ["stall", "hang up"])
def test_no_answer_after_the_message_was_sent_leaves_the_outcome_unknown(
    smtp_server: SmtpServer, fault: str
) -> None:
    smtp_server.handler.data_faults.append(fault)

    with pytest.raises(ChannelError) as caught:
        SmtpChannel("127.0.0.1", smtp_server.port, timeout=0.3).send(MESSAGE)

    assert caught.value.kind == ErrorKind.UNKNOWN
    assert len(smtp_server.received) == 1  # the relay has it: sending again would send twice

def test_settings_come_from_the_environment() -> None:
    channel = SmtpChannel.from_env(
        {
            "NURTURE_SMTP_HOST": "mail.acme.test",
            "NURTURE_SMTP_STARTTLS": "yes",
            "NURTURE_SMTP_USER": "mailer",
            "NURTURE_SMTP_PASSWORD": "s3cret",
        }
    )

    assert (channel.host, channel.port, channel.user, channel.starttls) == (
        "mail.acme.test",
        587,
        "mailer",
        True,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "NURTURE_SMTP_HOST"),
        ({"NURTURE_SMTP_HOST": "h", "NURTURE_SMTP_USER": "u"}, "NURTURE_SMTP_PASSWORD"),
        ({"NURTURE_SMTP_HOST": "h", "NURTURE_SMTP_PORT": "smtp"}, "NURTURE_SMTP_PORT"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        SmtpChannel.from_env(env)
