"""The Twilio adapter, with the real twilio SDK talking to a local Twilio stand-in."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from channels.base import SmsMessage
from channels.twilio import TwilioChannel
from engine.errors import ChannelError, ConfigurationError, ErrorKind
from tests.channels.servers import Reply, TwilioServer, free_port, twilio_error

MESSAGE = SmsMessage(
    delivery_id="d-1",
    to_phone="+14155550100",
    from_phone="+14155550199",
    body="Hi Ada, got 10 minutes this week? Reply STOP to opt out.",
    status_callback="https://acme.test/webhooks/twilio/status?delivery_id=d-1",
)


def channel_for(server: TwilioServer, **extra: str) -> TwilioChannel:
    env = {
        "TWILIO_ACCOUNT_SID": server.account_sid,
        "TWILIO_AUTH_TOKEN": server.auth_token,
        "NURTURE_TWILIO_BASE_URL": server.url,
    }
    return TwilioChannel.from_env(env | extra)


def test_a_message_is_queued_with_its_sm_sid(twilio_server: TwilioServer) -> None:
    result = channel_for(twilio_server).send(MESSAGE)

    assert result.provider == "twilio"
    assert result.status == "queued"
    assert re.fullmatch(r"SM[0-9a-f]{32}", result.provider_message_id or "")
    assert result.provider_message_id == twilio_server.accepted[0]["sid"]


def test_the_request_is_the_form_twilio_expects(twilio_server: TwilioServer) -> None:
    channel_for(twilio_server).send(MESSAGE)

    (sent,) = twilio_server.accepted
    assert (sent["to"], sent["from"], sent["body"]) == (
        MESSAGE.to_phone,
        MESSAGE.from_phone,
        MESSAGE.body,
    )
    assert sent["status_callback"] == MESSAGE.status_callback
    assert sent["num_segments"] == "1"
    assert twilio_server.requests[0].path == (
        f"/2010-04-01/Accounts/{twilio_server.account_sid}/Messages.json"
    )


def test_a_messaging_service_sid_is_sent_as_the_sender(twilio_server: TwilioServer) -> None:
    service = "MG" + "a" * 32

    result = channel_for(twilio_server).send(
        SmsMessage(delivery_id="d-2", to_phone="+14155550100", from_phone=service, body="Hi")
    )

    assert result.status == "accepted"
    assert twilio_server.accepted[0]["messaging_service_sid"] == service
    assert twilio_server.accepted[0]["status_callback"] is None


def test_a_wrong_auth_token_is_a_configuration_error(twilio_server: TwilioServer) -> None:
    with pytest.raises(ChannelError) as caught:
        channel_for(twilio_server, TWILIO_AUTH_TOKEN="wrong").send(MESSAGE)

    assert caught.value.kind == ErrorKind.CONFIGURATION
    assert (caught.value.status, caught.value.code) == (401, "20003")


def test_an_invalid_number_is_permanent(twilio_server: TwilioServer) -> None:
    with pytest.raises(ChannelError) as caught:
        channel_for(twilio_server).send(SmsMessage("d-3", "555-0100", "+14155550199", "Hi"))

    assert caught.value.kind == ErrorKind.PERMANENT
    assert caught.value.code == "21211"
    assert "Invalid 'To' Phone Number" in str(caught.value)


def test_a_number_that_replied_stop_is_opted_out(twilio_server: TwilioServer) -> None:
    twilio_server.opted_out.add(MESSAGE.to_phone)

    with pytest.raises(ChannelError) as caught:
        channel_for(twilio_server).send(MESSAGE)

    assert caught.value.kind == ErrorKind.OPTED_OUT
    assert caught.value.code == "21610"


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (twilio_error(400, 21211, "Invalid 'To' Phone Number"), ErrorKind.PERMANENT),
        (
            twilio_error(400, 21614, "'To' number is not a valid mobile number"),
            ErrorKind.PERMANENT,
        ),
        (
            twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"),
            ErrorKind.OPTED_OUT,
        ),
        (twilio_error(401, 20003, "Authenticate"), ErrorKind.CONFIGURATION),
        (twilio_error(403, 20008, "Forbidden"), ErrorKind.CONFIGURATION),
        (twilio_error(429, 20429, "Too Many Requests"), ErrorKind.TRANSIENT),
        (twilio_error(400, 20429, "Too Many Requests"), ErrorKind.TRANSIENT),
        (twilio_error(500, 20500, "Internal Server Error"), ErrorKind.TRANSIENT),
        (Reply(503, b"<html>down</html>"), ErrorKind.TRANSIENT),
        (Reply(504, b"<html>gateway timeout</html>"), ErrorKind.UNKNOWN),
        (twilio_error(404, 20404, "Not found"), ErrorKind.PERMANENT),
        (twilio_error(400, 30007, "Message filtered"), ErrorKind.PERMANENT),
        (
            Reply.json(
                400,
                {
                    "type": "https://www.twilio.com/docs/errors/21211",
                    "title": "Invalid To",
                    "status": 400,
                    "code": 21211,
                },
            ),
            ErrorKind.PERMANENT,
        ),
        (
            Reply.json(
                429,
                {
                    "type": "https://www.twilio.com/docs/errors/20429",
                    "title": "Too many",
                    "status": 429,
                    "code": 20429,
                },
            ),
            ErrorKind.TRANSIENT,
        ),
    ],
    ids=[
        "21211",
        "21614",
        "21610",
        "20003",
        "403",
        "429",
        "20429-code",
        "500",
        "503-html",
        "504-gateway",
        "404",
        "other-4xx",
        "rfc9457-21211",
        "rfc9457-429",
    ],
)
def test_each_error_maps_to_what_the_engine_should_do(
    twilio_server: TwilioServer, reply: Reply, kind: str
) -> None:
    twilio_server.then(reply)

    with pytest.raises(ChannelError) as caught:
        channel_for(twilio_server).send(MESSAGE)

    assert caught.value.kind == kind
    assert caught.value.status == reply.status


def test_a_rate_limit_has_no_retry_hint_since_the_sdk_hides_headers(
    twilio_server: TwilioServer,
) -> None:
    twilio_server.then(twilio_error(429, 20429, "Too Many Requests"))

    with pytest.raises(ChannelError) as caught:
        channel_for(twilio_server).send(MESSAGE)

    assert caught.value.retry_after is None


def test_the_server_rate_limit_refuses_sends_past_n_per_second_per_sender(
    local_network: None,
) -> None:
    with TwilioServer(rate_limit=3) as server:
        channel = channel_for(server)
        for _ in range(3):
            channel.send(MESSAGE)
        with pytest.raises(ChannelError) as caught:
            channel.send(MESSAGE)
        other_sender = SmsMessage("d-4", "+14155550100", "+14155550177", "Hi")
        channel.send(other_sender)

    assert caught.value.kind == ErrorKind.TRANSIENT
    assert caught.value.code == "20429"
    assert len(server.accepted) == 4


def test_closing_releases_connections_without_breaking_later_sends(
    twilio_server: TwilioServer,
) -> None:
    channel = channel_for(twilio_server)
    channel.send(MESSAGE)

    channel.close()

    assert channel.send(MESSAGE).provider_message_id == twilio_server.accepted[1]["sid"]


def test_a_closed_port_is_transient(local_network: None) -> None:
    channel = TwilioChannel("AC" + "0" * 32, "t", base_url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_host_that_does_not_resolve_is_transient(
    local_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "*")  # a proxy would answer for the missing host
    channel = TwilioChannel("AC" + "0" * 32, "t", base_url="http://no-such-host.invalid")

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_slow_answer_after_the_request_arrived_leaves_the_outcome_unknown(
    twilio_server: TwilioServer,
) -> None:
    channel = TwilioChannel(
        twilio_server.account_sid,
        twilio_server.auth_token,
        base_url=twilio_server.url,
        timeout=0.2,
    )
    twilio_server.then(Reply(201, delay=1.0))

    with pytest.raises(ChannelError) as caught:
        channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.UNKNOWN
    assert len(twilio_server.requests) == 1


def test_a_server_that_hangs_up_after_reading_the_request_leaves_the_outcome_unknown(
    local_network: None,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        channel = TwilioChannel("AC" + "0" * 32, "t", base_url=base_url)

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(ChannelError) as caught:
            channel.send(MESSAGE)

    assert caught.value.kind == ErrorKind.UNKNOWN


def test_an_edge_setting_with_a_redirected_base_url_is_refused(twilio_server: TwilioServer) -> None:
    with pytest.raises(ConfigurationError, match="TWILIO_EDGE"):
        channel_for(twilio_server, TWILIO_EDGE="sydney")


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"])
def test_missing_credentials_name_the_variable(missing: str) -> None:
    env = {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t"}
    del env[missing]

    with pytest.raises(ConfigurationError, match=missing):
        TwilioChannel.from_env(env)
