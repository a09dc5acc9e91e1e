"""The SendGrid adapter, with the real sendgrid SDK talking to a local SendGrid stand-in."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from python_http_client.exceptions import BadRequestsError
from sendgrid import SendGridAPIClient

from channels.base import EmailMessage, SendResult
from channels.sendgrid import SendGridChannel
from engine.clock import FrozenClock
from engine.errors import ChannelError, ConfigurationError, ErrorKind
from tests.channels.servers import Reply, Request, SendGridServer, free_port, sendgrid_errors

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

MESSAGE = EmailMessage(
    delivery_id="0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e",
    to_email="ada@example.com",
    to_name="Ada Lovelace",
    from_email="hello@acme.test",
    from_name="Acme Analytics",
    subject="Your pricing guide",
    html="<p>Hi Ada</p>",
    text="Hi Ada",
    reply_to="Sales <sales@acme.test>",
    unsubscribe_url="https://acme.test/u/token123",
    unsubscribe_mailto="unsubscribe@acme.test",
    categories=("drip", "pricing_guide"),
)


def channel_for(server: SendGridServer) -> SendGridChannel:
    env = {"SENDGRID_API_KEY": "SG.test-key", "NURTURE_SENDGRID_HOST": server.url}
    return SendGridChannel.from_env(env, clock=FrozenClock(NOW))


def test_a_valid_message_is_accepted_with_the_x_message_id(sendgrid_server: SendGridServer) -> None:
    result = channel_for(sendgrid_server).send(MESSAGE)

    assert result.provider == "sendgrid"
    assert result.status == "accepted"
    assert result.provider_message_id == sendgrid_server.message_ids[0]


def test_the_request_carries_everything_sendgrid_needs(sendgrid_server: SendGridServer) -> None:
    channel_for(sendgrid_server).send(MESSAGE)

    (mail,) = sendgrid_server.accepted
    assert mail["from"] == {"email": "hello@acme.test", "name": "Acme Analytics"}
    assert mail["personalizations"] == [
        {"to": [{"email": "ada@example.com", "name": "Ada Lovelace"}]}
    ]
    assert mail["subject"] == "Your pricing guide"
    assert mail["content"] == [
        {"type": "text/plain", "value": "Hi Ada"},
        {"type": "text/html", "value": "<p>Hi Ada</p>"},
    ]
    assert mail["custom_args"] == {"delivery_id": MESSAGE.delivery_id}
    assert mail["categories"] == ["drip", "pricing_guide"]
    assert mail["reply_to"] == {"email": "sales@acme.test", "name": "Sales"}
    assert mail["headers"] == {
        "List-Unsubscribe": "<https://acme.test/u/token123>, <mailto:unsubscribe@acme.test>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-Nurture-Delivery-Id": MESSAGE.delivery_id,
    }
    request = sendgrid_server.requests[0]
    assert request.headers["Authorization"] == "Bearer SG.test-key"
    assert request.headers["Content-Type"] == "application/json"


def test_sandbox_mode_is_answered_200_and_sends_nothing(sendgrid_server: SendGridServer) -> None:
    env = {
        "SENDGRID_API_KEY": "SG.test-key",
        "NURTURE_SENDGRID_HOST": sendgrid_server.url,
        "NURTURE_SENDGRID_SANDBOX": "true",
    }
    result = SendGridChannel.from_env(env).send(MESSAGE)

    assert result.status == "accepted"
    assert sendgrid_server.accepted == []


def test_a_wrong_api_key_is_a_configuration_error(sendgrid_server: SendGridServer) -> None:
    env = {"SENDGRID_API_KEY": "SG.wrong", "NURTURE_SENDGRID_HOST": sendgrid_server.url}

    with pytest.raises(ChannelError) as caught:
        SendGridChannel.from_env(env).send(MESSAGE)

    assert caught.value.kind == ErrorKind.CONFIGURATION
    assert caught.value.status == 401
    assert "authorization grant is invalid" in str(caught.value)


def test_more_than_ten_categories_is_refused_naming_the_field(
    sendgrid_server: SendGridServer,
) -> None:
    message = replace(MESSAGE, categories=tuple(f"c{i}" for i in range(11)))

    with pytest.raises(ChannelError) as caught:
        channel_for(sendgrid_server).send(message)

    assert caught.value.kind == ErrorKind.PERMANENT
    assert "categories: You may not have more than 10 categories" in str(caught.value)


def test_an_empty_body_is_refused_as_missing_content(sendgrid_server: SendGridServer) -> None:
    with pytest.raises(ChannelError) as caught:
        channel_for(sendgrid_server).send(replace(MESSAGE, html="", text=""))

    assert caught.value.kind == ErrorKind.PERMANENT
    assert "content:" in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (
            sendgrid_errors(400, ("Does not contain a valid address.", "personalizations.0.to")),
            ErrorKind.PERMANENT,
        ),
        (
            sendgrid_errors(403, ("The from address does not match a verified Sender", "from")),
            ErrorKind.CONFIGURATION,
        ),
        (sendgrid_errors(404, ("not found", None)), ErrorKind.CONFIGURATION),
        (sendgrid_errors(413, ("Payload too large", None)), ErrorKind.PERMANENT),
        (sendgrid_errors(429, ("too many requests", None)), ErrorKind.TRANSIENT),
        (sendgrid_errors(500, ("internal error", None)), ErrorKind.TRANSIENT),
        (Reply(502, b"<html>bad gateway</html>"), ErrorKind.UNKNOWN),  # a gateway: may be sent
        (sendgrid_errors(503, ("unavailable", None)), ErrorKind.TRANSIENT),
        (sendgrid_errors(504, ("timeout", None)), ErrorKind.UNKNOWN),
    ],
    ids=["400-recipient", "403", "404", "413", "429", "500", "502-html", "503", "504"],
)
def test_each_http_error_maps_to_what_the_engine_should_do(
    sendgrid_server: SendGridServer, reply: Reply, kind: str
) -> None:
    sendgrid_server.then(reply)

    with pytest.raises(ChannelError) as caught:
        channel_for(sendgrid_server).send(MESSAGE)

    assert caught.value.kind == kind
    assert caught.value.status == reply.status


def test_a_recipient_error_quotes_the_field_and_message(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.then(
        sendgrid_errors(400, ("Does not contain a valid address.", "personalizations.0.to"))
    )

    with pytest.raises(ChannelError, match=r"400: personalizations\.0\.to: Does not contain"):
        channel_for(sendgrid_server).send(MESSAGE)


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"X-RateLimit-Reset": str(int(NOW.timestamp()) + 42)}, 42.0),
        ({"X-RateLimit-Reset": str(int(NOW.timestamp()) - 5)}, 0.0),
        ({"Retry-After": "17"}, 17.0),
        ({"Retry-After": "Mon, 02 Mar 2026 09:01:00 GMT"}, 60.0),
        ({}, None),
    ],
    ids=["reset-epoch", "reset-past", "retry-after-seconds", "retry-after-date", "no-hint"],
)
def test_a_rate_limit_says_when_to_retry(
    sendgrid_server: SendGridServer, headers: dict[str, str], retry_after: float | None
) -> None:
    sendgrid_server.then(sendgrid_errors(429, ("too many requests", None), headers=headers))

    with pytest.raises(ChannelError) as caught:
        channel_for(sendgrid_server).send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT
    assert caught.value.retry_after == retry_after


def test_a_retry_after_an_outage_goes_through(sendgrid_server: SendGridServer) -> None:
    channel = channel_for(sendgrid_server)
    sendgrid_server.then(sendgrid_errors(503, ("unavailable", None)))

    with pytest.raises(ChannelError):
        channel.send(MESSAGE)
    result = channel.send(MESSAGE)

    assert result.provider_message_id == sendgrid_server.message_ids[0]


def test_a_closed_port_is_transient(local_network: None) -> None:
    env = {"SENDGRID_API_KEY": "k", "NURTURE_SENDGRID_HOST": f"http://127.0.0.1:{free_port()}"}

    with pytest.raises(ChannelError) as caught:
        SendGridChannel.from_env(env).send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_host_that_does_not_resolve_is_transient(
    local_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "*")  # a proxy would answer for the missing host
    channel = SendGridChannel("k", host="http://no-such-host.invalid")

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_slow_answer_after_the_request_arrived_leaves_the_outcome_unknown(
    sendgrid_server: SendGridServer,
) -> None:
    channel = SendGridChannel("SG.test-key", host=sendgrid_server.url, timeout=0.2)
    sendgrid_server.then(Reply(202, delay=1.0))

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.UNKNOWN
    assert len(sendgrid_server.requests) == 1


def test_a_server_that_hangs_up_after_reading_the_request_leaves_the_outcome_unknown(
    local_network: None,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        channel = SendGridChannel("k", host=f"http://127.0.0.1:{listener.getsockname()[1]}")

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(ChannelError) as caught:
            channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.UNKNOWN


@pytest.mark.parametrize("host", ["api.sendgrid.com", "https://api.sendgrid.com/v3", "ftp://x"])
def test_a_host_that_is_not_a_bare_http_url_is_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match="SendGrid host"):
        SendGridChannel("k", host=host)


def test_a_missing_api_key_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="SENDGRID_API_KEY"):
        SendGridChannel.from_env({})


def batch_of(count: int, first: int = 1, **changes: Any) -> list[EmailMessage]:
    """`count` messages numbered from `first`, each to its own lead with its own subject,
    bodies, unsubscribe link and delivery id (non-ASCII and markup included), alike in all
    that is request-wide unless `changes` say otherwise."""
    return [
        replace(
            MESSAGE,
            **{
                "delivery_id": f"delivery-{n}",
                "to_email": f"lead{n}@example.com",
                "to_name": f"Lead Nº{n}",
                "subject": f"Your guide, lead {n} — ready",
                "html": f'<p>Hi lead {n} &amp; co, <a href="https://acme.test/g?l={n}">café</a></p>',
                "text": f"Hi lead {n} & co, café: https://acme.test/g?l={n}",
                "unsubscribe_url": f"https://acme.test/u/token{n}",
            }
            | changes,
        )
        for n in range(first, first + count)
    ]


def kinds(answers: list[SendResult | ChannelError]) -> list[str]:
    return [a.kind if isinstance(a, ChannelError) else a.status for a in answers]


def recipients(request: Request) -> list[str]:
    mail = json.loads(request.body)
    return [p["to"][0]["email"] for p in mail["personalizations"]]


def test_a_batch_is_one_request_and_each_recipient_gets_what_send_alone_would_give(
    sendgrid_server: SendGridServer,
) -> None:
    channel = channel_for(sendgrid_server)
    messages = batch_of(30)

    answers = channel.send_many(messages)

    (mail,) = sendgrid_server.accepted
    assert len(sendgrid_server.requests) == 1
    assert len(mail["personalizations"]) == 30
    assert [a.provider_message_id for a in answers if isinstance(a, SendResult)] == (
        sendgrid_server.message_ids * 30
    )
    batched = list(sendgrid_server.emails)
    for message in messages:
        channel.send(message)
    alone = sendgrid_server.emails[30:]
    assert batched == alone
    seventh = batched[6]
    assert seventh.to == [{"email": "lead7@example.com", "name": "Lead Nº7"}]
    assert seventh.subject == messages[6].subject
    assert seventh.content == [
        {"type": "text/plain", "value": messages[6].text},
        {"type": "text/html", "value": messages[6].html},
    ]
    assert seventh.custom_args == {"delivery_id": "delivery-7"}
    assert seventh.headers["List-Unsubscribe"].startswith("<https://acme.test/u/token7>")
    assert seventh.headers["X-Nurture-Delivery-Id"] == "delivery-7"


def test_a_message_whose_bodies_are_over_the_substitution_limit_is_sent_alone(
    sendgrid_server: SendGridServer,
) -> None:
    messages = batch_of(3)
    messages[1] = replace(messages[1], text="x" * 5_000, html="<p>" + "y" * 5_000 + "</p>")

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted"] * 3
    shared, alone = sendgrid_server.accepted
    assert recipients(sendgrid_server.requests[0]) == ["lead1@example.com", "lead3@example.com"]
    assert "substitutions" not in alone["personalizations"][0]
    assert alone["content"][0]["value"] == "x" * 5_000
    assert [e.content[0]["value"] for e in sendgrid_server.emails] == [
        messages[0].text,
        messages[2].text,
        messages[1].text,
    ]


def test_requests_stay_within_the_substitution_bytes_sendgrid_takes_per_request(
    sendgrid_server: SendGridServer,
) -> None:
    messages = [
        replace(m, text="t" * 4_400, html="h" * 4_400) for m in batch_of(12)
    ]  # about 8,900 bytes each: five to a request

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted"] * 12
    assert [len(m["personalizations"]) for m in sendgrid_server.accepted] == [5, 5, 2]


def test_more_than_1000_alike_messages_go_in_requests_of_at_most_1000(
    sendgrid_server: SendGridServer,
) -> None:
    messages = batch_of(1001, text="Hi", html="")  # small enough for 1000 in one request

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted"] * 1001
    assert [len(m["personalizations"]) for m in sendgrid_server.accepted] == [1000, 1]


def test_two_messages_to_the_same_address_go_in_separate_requests(
    sendgrid_server: SendGridServer,
) -> None:
    messages = batch_of(3)
    messages[2] = replace(messages[2], to_email="LEAD1@example.com")

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted"] * 3
    assert [recipients(r) for r in sendgrid_server.requests] == [
        ["lead1@example.com", "lead2@example.com"],
        ["LEAD1@example.com"],
    ]


def test_messages_that_differ_in_anything_request_wide_go_in_separate_requests(
    sendgrid_server: SendGridServer,
) -> None:
    alike = batch_of(2)
    other_sender = batch_of(2, 3, from_email="news@acme.test")
    other_categories = batch_of(2, 5, categories=("drip",))
    other_reply_to = batch_of(2, 7, reply_to="support@acme.test")
    text_only = batch_of(2, 9, html="")
    groups = [alike, other_sender, other_categories, other_reply_to, text_only]
    messages = [message for pair in zip(*groups, strict=True) for message in pair]

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted"] * 10
    sent = sendgrid_server.accepted
    assert [len(mail["personalizations"]) for mail in sent] == [2] * 5
    assert [mail["from"]["email"] for mail in sent[:2]] == ["hello@acme.test", "news@acme.test"]
    assert sent[2]["categories"] == ["drip"]
    assert sent[3]["reply_to"] == {"email": "support@acme.test"}
    assert [part["type"] for part in sent[4]["content"]] == ["text/plain"]
    ids = dict(zip(sendgrid_server.message_ids, range(5), strict=True))
    assert [ids[a.provider_message_id] for a in answers if isinstance(a, SendResult)] == [
        0, 1, 2, 3, 4, 0, 1, 2, 3, 4
    ]


@pytest.mark.parametrize(
    ("change", "requests"),
    [({"subject": "Hi\r\nBcc: all@example.com"}, 1), ({"html": "", "text": ""}, 2)],
    ids=["header-injection", "no-body"],
)
def test_a_message_that_cannot_be_a_personalization_fails_alone(
    sendgrid_server: SendGridServer, change: dict[str, str], requests: int
) -> None:
    messages = batch_of(3)
    messages[1] = replace(messages[1], **change)

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted", ErrorKind.PERMANENT, "accepted"]
    assert len(sendgrid_server.requests) == requests
    assert recipients(sendgrid_server.requests[0]) == ["lead1@example.com", "lead3@example.com"]


def test_a_400_for_a_batch_is_retried_one_by_one_so_only_the_bad_message_fails(
    sendgrid_server: SendGridServer,
) -> None:
    messages = batch_of(3)
    messages[1] = replace(messages[1], to_email="not-an-address")

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == ["accepted", ErrorKind.PERMANENT, "accepted"]
    assert isinstance(answers[1], ChannelError)
    assert answers[1].status == 400
    assert "personalizations.0.to: Does not contain a valid address" in str(answers[1])
    assert [recipients(r) for r in sendgrid_server.requests] == [
        ["lead1@example.com", "not-an-address", "lead3@example.com"],
        ["lead1@example.com"],
        ["not-an-address"],
        ["lead3@example.com"],
    ]
    assert [e.to[0]["email"] for e in sendgrid_server.emails] == [
        "lead1@example.com",
        "lead3@example.com",
    ]


def test_a_413_for_a_batch_is_retried_one_by_one(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.then(sendgrid_errors(413, ("Payload too large", None)))

    answers = channel_for(sendgrid_server).send_many(batch_of(3))

    assert kinds(answers) == ["accepted"] * 3
    assert len(sendgrid_server.requests) == 4


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (
            sendgrid_errors(429, ("too many requests", None), headers={"Retry-After": "17"}),
            ErrorKind.TRANSIENT,
        ),
        (sendgrid_errors(503, ("unavailable", None)), ErrorKind.TRANSIENT),
        (sendgrid_errors(500, ("internal error", None)), ErrorKind.TRANSIENT),
        (Reply(502, b"<html>bad gateway</html>"), ErrorKind.UNKNOWN),
        (sendgrid_errors(504, ("timeout", None)), ErrorKind.UNKNOWN),
        (sendgrid_errors(401, ("bad key", None)), ErrorKind.CONFIGURATION),
    ],
    ids=["429", "503", "500", "502", "504", "401"],
)
def test_any_other_error_for_a_batch_answers_all_its_messages_and_nothing_is_resent(
    sendgrid_server: SendGridServer, reply: Reply, kind: str
) -> None:
    sendgrid_server.then(reply)

    answers = channel_for(sendgrid_server).send_many(batch_of(3))

    assert kinds(answers) == [kind] * 3
    assert {a.status for a in answers if isinstance(a, ChannelError)} == {reply.status}
    assert len(sendgrid_server.requests) == 1
    if reply.status == 429:
        assert {a.retry_after for a in answers if isinstance(a, ChannelError)} == {17.0}


def test_no_answer_in_time_for_a_batch_leaves_all_its_messages_unknown(
    sendgrid_server: SendGridServer,
) -> None:
    channel = SendGridChannel("SG.test-key", host=sendgrid_server.url, timeout=0.2)
    sendgrid_server.then(Reply(202, delay=1.0))

    answers = channel.send_many(batch_of(3))

    assert kinds(answers) == [ErrorKind.UNKNOWN] * 3
    assert len(sendgrid_server.requests) == 1


def test_an_unexpected_error_in_one_request_answers_its_messages_unknown_and_others_still_go(
    sendgrid_server: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: SendGridChannel, batch: Any, tags: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SendGridChannel, "shared_body", broken)
    messages = [*batch_of(2), replace(MESSAGE, from_email="news@acme.test")]

    answers = channel_for(sendgrid_server).send_many(messages)

    assert kinds(answers) == [ErrorKind.UNKNOWN, ErrorKind.UNKNOWN, "accepted"]
    assert "RuntimeError: a bug" in str(answers[0])
    assert len(sendgrid_server.requests) == 1


def shared_mail(count: int, **substitutions: object) -> dict[str, Any]:
    """A request of `count` personalizations whose content is the tag -body-."""
    return {
        "from": {"email": "hello@acme.test"},
        "content": [{"type": "text/plain", "value": "-body-"}],
        "personalizations": [
            {
                "to": [{"email": f"lead{n}@example.com"}],
                "subject": "Hi",
                "substitutions": {"-body-": f"Hi {n}"} | substitutions,
            }
            for n in range(count)
        ],
    }


@pytest.mark.parametrize(
    ("mail", "field"),
    [
        (shared_mail(1001), "personalizations"),
        (shared_mail(2, **{"-body-": "x" * 9_995}), "personalizations.0.substitutions"),
        (shared_mail(6, **{"-body-": "x" * 9_000}), "personalizations"),
        (shared_mail(1, **{"-body-": 1}), "personalizations.0.substitutions"),
    ],
    ids=["1001-personalizations", "10001-bytes", "54000-bytes-in-all", "not-a-string"],
)
def test_the_stand_in_refuses_personalizations_past_sendgrid_limits(
    sendgrid_server: SendGridServer, mail: dict[str, Any], field: str
) -> None:
    with pytest.raises(BadRequestsError) as caught:
        SendGridAPIClient("SG.test-key", host=sendgrid_server.url).send(mail)

    assert field in {e["field"] for e in json.loads(caught.value.body)["errors"]}


def test_the_stand_in_fills_each_personalization_with_its_own_substitutions(
    sendgrid_server: SendGridServer,
) -> None:
    SendGridAPIClient("SG.test-key", host=sendgrid_server.url).send(shared_mail(3))

    assert [e.content[0]["value"] for e in sendgrid_server.emails] == ["Hi 0", "Hi 1", "Hi 2"]
