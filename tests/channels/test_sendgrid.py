"""The SendGrid adapter, with the real sendgrid SDK talking to a local SendGrid stand-in."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from channels.base import EmailMessage
from channels.sendgrid import SendGridChannel
from engine.clock import FrozenClock
from engine.errors import ChannelError, ConfigurationError, ErrorKind
from tests.channels.servers import Reply, SendGridServer, free_port, sendgrid_errors

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
