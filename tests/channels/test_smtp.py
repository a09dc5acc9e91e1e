"""The SMTP adapter against a real aiosmtpd relay on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import ssl
from dataclasses import replace
from datetime import datetime
from email.message import EmailMessage as Parsed
from email.message import Message

import pytest

from channels import smtp
from channels.base import EmailMessage, SendResult, build_mime
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


def _logged_in(server: SmtpServer, tls: ssl.SSLContext, password: str) -> SmtpChannel:
    """The channel to the STARTTLS test server, logging in as `mailer`."""
    return SmtpChannel(
        "127.0.0.1", server.port, user="mailer", password=password, starttls=True, ssl_context=tls
    )


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
    channel = _logged_in(secure_smtp_server, client_tls, "s3cret")

    channel.send(MESSAGE)

    assert len(secure_smtp_server.received) == 1


def test_a_wrong_password_is_a_configuration_error(
    secure_smtp_server: SmtpServer, client_tls: ssl.SSLContext
) -> None:
    channel = _logged_in(secure_smtp_server, client_tls, "nope")

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


def batch_of(count: int) -> list[EmailMessage]:
    """Messages 1..count, each to its own lead with its own subject, bodies and delivery id."""
    return [
        replace(
            MESSAGE,
            delivery_id=f"delivery-{n}",
            to_email=f"lead{n}@example.com",
            to_name=f"Lead {n}",
            subject=f"Guide {n}",
            html=f"<p>Hi lead {n}</p>",
            text=f"Hi lead {n}",
        )
        for n in range(1, count + 1)
    ]


def received_ids(server: SmtpServer) -> list[str]:
    return [parsed(r.content)["X-Nurture-Delivery-Id"] for r in server.received]


def kinds(answers: list[SendResult | ChannelError]) -> list[str]:
    return [a.kind if isinstance(a, ChannelError) else a.status for a in answers]


def test_a_batch_goes_over_one_connection_and_each_recipient_gets_their_own_message(
    smtp_server: SmtpServer,
) -> None:
    messages = batch_of(5)

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(messages)

    assert smtp_server.connections == 1
    assert [r.rcpt_tos for r in smtp_server.received] == [(m.to_email,) for m in messages]
    for message, received, answer in zip(messages, smtp_server.received, answers, strict=True):
        mail = parsed(received.content)
        assert mail["To"] == f"{message.to_name} <{message.to_email}>"
        assert mail["Subject"] == message.subject
        assert mail["X-Nurture-Delivery-Id"] == message.delivery_id
        plain, html = mail.iter_parts()
        assert (plain.get_content().strip(), html.get_content().strip()) == (
            message.text,
            message.html,
        )
        assert isinstance(answer, SendResult)
        assert answer.provider_message_id == mail["Message-ID"]


def test_a_batch_over_starttls_logs_in_once(
    secure_smtp_server: SmtpServer, client_tls: ssl.SSLContext
) -> None:
    channel = _logged_in(secure_smtp_server, client_tls, "s3cret")

    answers = channel.send_many(batch_of(3))

    assert kinds(answers) == ["accepted"] * 3
    assert secure_smtp_server.connections == 1
    assert len(secure_smtp_server.received) == 3


def test_a_wrong_password_fails_the_whole_batch_without_trying_again(
    secure_smtp_server: SmtpServer, client_tls: ssl.SSLContext
) -> None:
    channel = _logged_in(secure_smtp_server, client_tls, "nope")

    answers = channel.send_many(batch_of(3))

    assert kinds(answers) == [ErrorKind.CONFIGURATION] * 3
    assert secure_smtp_server.connections == 1
    assert secure_smtp_server.received == []


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("550 5.1.1 No such user", ErrorKind.PERMANENT),
        ("450 4.2.1 Mailbox busy", ErrorKind.TRANSIENT),
    ],
    ids=["550", "450"],
)
def test_a_refused_recipient_in_the_middle_fails_only_that_message(
    smtp_server: SmtpServer, reply: str, kind: str
) -> None:
    smtp_server.handler.refusals["lead2@example.com"] = reply

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(batch_of(4))

    assert kinds(answers) == ["accepted", kind, "accepted", "accepted"]
    assert received_ids(smtp_server) == ["delivery-1", "delivery-3", "delivery-4"]
    assert smtp_server.connections == 1


def test_a_message_refused_at_the_end_of_data_leaves_the_session_usable(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.data_replies.append("554 5.7.1 Message rejected as spam")

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(batch_of(3))

    assert kinds(answers) == [ErrorKind.PERMANENT, "accepted", "accepted"]
    assert received_ids(smtp_server) == ["delivery-2", "delivery-3"]
    assert smtp_server.connections == 1


def test_a_message_with_a_header_injection_fails_alone_before_anything_is_sent(
    smtp_server: SmtpServer,
) -> None:
    messages = batch_of(3)
    messages[1] = replace(messages[1], subject="Hi\r\nBcc: everyone@example.com")

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(messages)

    assert kinds(answers) == ["accepted", ErrorKind.PERMANENT, "accepted"]
    assert received_ids(smtp_server) == ["delivery-1", "delivery-3"]
    assert smtp_server.connections == 1


def test_a_421_reply_closes_the_session_and_the_rest_go_over_a_new_one(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.refusals["lead2@example.com"] = "421 4.7.0 Closing connection"

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(batch_of(4))

    assert kinds(answers) == ["accepted", ErrorKind.TRANSIENT, "accepted", "accepted"]
    assert received_ids(smtp_server) == ["delivery-1", "delivery-3", "delivery-4"]
    assert smtp_server.connections == 2


def test_a_connection_lost_before_a_message_went_out_fails_it_transient_and_the_rest_reconnect(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.rcpt_faults.extend(["none", "hang up"])

    answers = SmtpChannel("127.0.0.1", smtp_server.port, timeout=2).send_many(batch_of(4))

    assert kinds(answers) == ["accepted", ErrorKind.TRANSIENT, "accepted", "accepted"]
    assert received_ids(smtp_server) == ["delivery-1", "delivery-3", "delivery-4"]
    assert smtp_server.connections == 2


@pytest.mark.parametrize("fault", ["stall", "hang up"])
def test_no_answer_after_data_of_one_message_leaves_it_unknown_and_the_rest_go_on_a_new_connection(
    smtp_server: SmtpServer, fault: str
) -> None:
    smtp_server.handler.data_faults.extend(["none", fault])

    answers = SmtpChannel("127.0.0.1", smtp_server.port, timeout=0.3).send_many(batch_of(4))

    assert kinds(answers) == ["accepted", ErrorKind.UNKNOWN, "accepted", "accepted"]
    # the relay has message 2 exactly once: it was not sent again on the new connection
    assert received_ids(smtp_server) == ["delivery-1", "delivery-2", "delivery-3", "delivery-4"]
    assert smtp_server.connections == 2


def test_when_reconnecting_fails_the_rest_of_the_batch_is_transient_and_never_sent(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.max_connections = 1
    smtp_server.handler.rcpt_faults.extend(["none", "hang up"])

    answers = SmtpChannel("127.0.0.1", smtp_server.port, timeout=2).send_many(batch_of(4))

    assert kinds(answers) == ["accepted"] + [ErrorKind.TRANSIENT] * 3
    assert [a.status for a in answers[2:] if isinstance(a, ChannelError)] == [421, 421]
    assert received_ids(smtp_server) == ["delivery-1"]
    assert smtp_server.connections == 2  # one try to reconnect, not one per message


def test_an_unexpected_error_on_one_message_answers_it_unknown_and_the_rest_still_go(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build(message: EmailMessage, sent_at: datetime) -> Message:
        if message.delivery_id == "delivery-2":
            raise RuntimeError("a bug")
        return build_mime(message, sent_at)

    monkeypatch.setattr(smtp, "build_mime", build)

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(batch_of(3))

    assert kinds(answers) == ["accepted", ErrorKind.UNKNOWN, "accepted"]
    assert "RuntimeError: a bug" in str(answers[1])
    assert received_ids(smtp_server) == ["delivery-1", "delivery-3"]
    assert smtp_server.connections == 2  # a session left in an unknown state is not reused


def test_a_body_line_that_begins_with_from_arrives_as_written(smtp_server: SmtpServer) -> None:
    message = replace(MESSAGE, text="Hi Ada\nFrom all of us, thanks")

    SmtpChannel("127.0.0.1", smtp_server.port).send(message)

    plain, _ = parsed(smtp_server.received[0].content).iter_parts()
    assert plain.get_content().splitlines() == ["Hi Ada", "From all of us, thanks"]  # not ">From"


@pytest.mark.parametrize("address", ["иван@пример.рф", "Jens.Hansen@blåbær.dk"])
def test_an_address_that_is_not_ascii_goes_with_smtputf8_where_the_relay_offers_it(
    smtputf8_server: SmtpServer, address: str
) -> None:
    answer = SmtpChannel("127.0.0.1", smtputf8_server.port).send(
        replace(MESSAGE, to_email=address, to_name="Иван Петров")
    )

    (received,) = smtputf8_server.received
    assert (received.smtputf8, received.rcpt_tos) == (True, (address,))
    assert f"\r\nTo: Иван Петров <{address}>\r\n".encode() in received.content
    mail = email.message_from_string(received.content.decode("utf-8"), policy=email.policy.default)
    assert isinstance(mail, Parsed)
    assert (mail["To"].addresses[0].addr_spec, mail["Subject"]) == (address, MESSAGE.subject)
    assert answer.status == "accepted"


def test_ascii_messages_after_one_with_smtputf8_go_plain_on_the_same_session(
    smtputf8_server: SmtpServer,
) -> None:
    messages = batch_of(3)
    messages[0] = replace(messages[0], to_email="иван@пример.рф")

    answers = SmtpChannel("127.0.0.1", smtputf8_server.port).send_many(messages)

    assert kinds(answers) == ["accepted"] * 3
    assert [r.smtputf8 for r in smtputf8_server.received] == [True, False, False]
    assert [r.content.isascii() for r in smtputf8_server.received] == [False, True, True]
    assert smtputf8_server.connections == 1


def test_a_relay_without_smtputf8_fails_only_the_message_that_needs_it_permanently(
    smtp_server: SmtpServer,
) -> None:
    messages = batch_of(3)
    messages[1] = replace(messages[1], to_email="иван@пример.рф")

    answers = SmtpChannel("127.0.0.1", smtp_server.port).send_many(messages)

    assert kinds(answers) == ["accepted", ErrorKind.PERMANENT, "accepted"]
    assert "the relay does not offer SMTPUTF8, which the address иван@пример.рф needs" in str(
        answers[1]
    )
    assert received_ids(smtp_server) == ["delivery-1", "delivery-3"]
    assert smtp_server.connections == 1


def test_a_relay_without_smtputf8_is_asked_before_the_first_message_needs_it(
    smtp_server: SmtpServer,
) -> None:
    with pytest.raises(ChannelError, match="does not offer SMTPUTF8") as caught:
        SmtpChannel("127.0.0.1", smtp_server.port).send(replace(MESSAGE, to_email="иван@пример.рф"))

    assert caught.value.kind == ErrorKind.PERMANENT
    assert smtp_server.received == []
