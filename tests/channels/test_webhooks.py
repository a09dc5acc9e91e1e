"""Provider feedback into DeliveryEvents: signed SendGrid batches, Twilio callbacks and replies."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from channels.webhooks import (
    PayloadError,
    SignatureError,
    parse_sendgrid_events,
    parse_twilio_inbound,
    parse_twilio_status,
)
from engine.errors import ConfigurationError
from tests.channels.servers import SendGridSigner

STAMP = 1772442000  # 2026-03-02 09:00:00 UTC
AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TOKEN = "test-auth-token"
STATUS_URL = "https://nurture.acme.test/webhooks/twilio/status?delivery_id=d-9"
INBOUND_URL = "https://nurture.acme.test/webhooks/twilio/inbound"


def sg_event(event: str, **extra: Any) -> dict[str, Any]:
    base = {
        "email": "ada@example.com",
        "timestamp": STAMP,
        "event": event,
        "sg_event_id": f"evt-{event}",
        "sg_message_id": "W86EgYT6SQKk0lRflfLRsA.filterdrecv-5645d9c87f-78xgx-1-5E0E2E2E-4.0",
        "smtp-id": "<W86EgYT6SQKk0lRflfLRsA@ismtpd0001p1iad1.sendgrid.net>",
        "category": ["drip", "welcome"],
        "delivery_id": "d-1",
    }
    return base | extra


@pytest.fixture(scope="module")
def signer() -> SendGridSigner:
    return SendGridSigner()


def signed(signer: SendGridSigner, items: list[Any]) -> dict[str, Any]:
    body = json.dumps(items).encode()
    timestamp = str(STAMP)
    return {
        "raw_body": body,
        "signature": signer.sign(timestamp, body),
        "timestamp": timestamp,
        "public_key": signer.public_key,
    }


def test_a_signed_batch_maps_every_event_name(signer: SendGridSigner) -> None:
    items = [
        sg_event("delivered", response="250 OK"),
        sg_event("open", useragent="Mozilla", ip="203.0.113.7"),
        sg_event("click", url="https://acme.test/pricing"),
        sg_event("bounce", reason="550 5.1.1 no such user", status="5.1.1", type="bounce"),
        sg_event("dropped", reason="Spam Content (if spam checker app enabled)"),
        sg_event("spamreport"),
        sg_event("unsubscribe"),
        sg_event("group_unsubscribe", asm_group_id=42),
        sg_event("group_resubscribe", asm_group_id=42),
    ]

    events = parse_sendgrid_events(**signed(signer, items))

    assert [(e.provider_event_id, e.kind) for e in events] == [
        ("evt-delivered", "delivered"),
        ("evt-open", "opened"),
        ("evt-click", "clicked"),
        ("evt-bounce", "bounced"),
        ("evt-dropped", "failed"),
        ("evt-spamreport", "complained"),
        ("evt-unsubscribe", "unsubscribed"),
        ("evt-group_unsubscribe", "unsubscribed"),
        ("evt-group_resubscribe", "opted_in"),
    ]
    click, bounce, dropped = events[2], events[3], events[4]
    assert click.url == "https://acme.test/pricing"
    assert bounce.reason == "550 5.1.1 no such user"
    assert dropped.reason == "Spam Content (if spam checker app enabled)"
    for event in events:
        assert (event.channel, event.provider) == ("email", "sendgrid")
        assert event.delivery_id == "d-1"
        assert event.recipient == "ada@example.com"
        assert event.occurred_at == AT
        assert event.provider_message_id == "W86EgYT6SQKk0lRflfLRsA"


def test_a_blocked_bounce_is_a_bounce_that_keeps_its_type_and_reason(
    signer: SendGridSigner,
) -> None:
    item = sg_event("bounce", type="blocked", reason="IP blocklisted", status="5.7.1")

    (event,) = parse_sendgrid_events(**signed(signer, [item]))

    assert event.kind == "bounced"
    assert event.reason == "IP blocklisted"
    assert event.detail["type"] == "blocked"


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("Bounced Address", "bounced"),
        ("Invalid", "bounced"),
        ("Spam Reporting Address", "complained"),
        ("Unsubscribed Address", "unsubscribed"),
        ("Invalid SMTPAPI header", "failed"),
        ("Spam Content (if spam checker app enabled)", "failed"),
        ("Recipient List over Package Quota", "failed"),
        (None, "failed"),
    ],
)
def test_a_drop_refusing_the_address_is_that_refusal_and_one_refusing_the_message_a_failure(
    signer: SendGridSigner, reason: str | None, kind: str
) -> None:
    item = sg_event("dropped") | ({"reason": reason} if reason else {})

    (event,) = parse_sendgrid_events(**signed(signer, [item]))

    assert (event.kind, event.reason, event.detail["event"]) == (kind, reason, "dropped")


def test_deferred_and_unknown_events_produce_nothing(signer: SendGridSigner) -> None:
    items = [sg_event("deferred", attempt="2"), sg_event("machine_open")]

    assert parse_sendgrid_events(**signed(signer, items)) == []


def test_processed_is_an_accepted_event(signer: SendGridSigner) -> None:
    (event,) = parse_sendgrid_events(**signed(signer, [sg_event("processed")]))

    assert (event.kind, event.detail["event"]) == ("accepted", "processed")


def test_malformed_items_are_skipped_and_logged(
    signer: SendGridSigner, caplog: pytest.LogCaptureFixture
) -> None:
    items: list[Any] = [
        "not an object",
        {"event": "open"},
        sg_event("open", timestamp="yesterday"),
        sg_event("open", email=""),
        sg_event("click", sg_event_id="good"),
    ]

    with caplog.at_level(logging.WARNING, logger="channels.webhooks"):
        events = parse_sendgrid_events(**signed(signer, items))

    assert [e.provider_event_id for e in events] == ["good"]
    skipped = [r for r in caplog.records if "malformed SendGrid event" in r.getMessage()]
    assert len(skipped) == 4


def test_a_missing_delivery_id_is_none_not_an_error(signer: SendGridSigner) -> None:
    item = sg_event("open")
    del item["delivery_id"]

    (event,) = parse_sendgrid_events(**signed(signer, [item]))

    assert event.delivery_id is None


def test_a_forged_signature_is_refused(signer: SendGridSigner) -> None:
    request = signed(signer, [sg_event("open")])
    request["signature"] = SendGridSigner().sign(request["timestamp"], request["raw_body"])

    with pytest.raises(SignatureError, match="does not match"):
        parse_sendgrid_events(**request)


def test_a_tampered_body_is_refused(signer: SendGridSigner) -> None:
    request = signed(signer, [sg_event("open")])
    request["raw_body"] = request["raw_body"].replace(b"ada@", b"eve@")

    with pytest.raises(SignatureError):
        parse_sendgrid_events(**request)


def test_a_replayed_signature_with_another_timestamp_is_refused(signer: SendGridSigner) -> None:
    request = signed(signer, [sg_event("open")])
    request["timestamp"] = str(STAMP + 60)

    with pytest.raises(SignatureError):
        parse_sendgrid_events(**request)


@pytest.mark.parametrize(
    ("signature", "timestamp"),
    [(None, str(STAMP)), ("", str(STAMP)), ("sig", None), ("!!not base64!!", str(STAMP))],
    ids=["no-signature", "empty-signature", "no-timestamp", "garbage"],
)
def test_a_missing_or_unreadable_signature_is_refused(
    signer: SendGridSigner, signature: str | None, timestamp: str | None
) -> None:
    request = signed(signer, [sg_event("open")]) | {"signature": signature, "timestamp": timestamp}

    with pytest.raises(SignatureError):
        parse_sendgrid_events(**request)


def test_an_unloadable_public_key_is_a_configuration_error(signer: SendGridSigner) -> None:
    request = signed(signer, [sg_event("open")]) | {"public_key": "bm90IGEga2V5"}

    with pytest.raises(ConfigurationError, match="public key"):
        parse_sendgrid_events(**request)


def test_without_a_public_key_unsigned_batches_are_accepted() -> None:
    body = json.dumps([sg_event("open")]).encode()

    events = parse_sendgrid_events(body, signature=None, timestamp=None, public_key=None)

    assert [e.kind for e in events] == ["opened"]


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'{"event": "open"}', "JSON array"), (b"not json", "not JSON"), (b"\xff\xfe", "UTF-8")],
)
def test_a_body_that_is_not_a_json_array_is_a_value_error(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_sendgrid_events(body, signature=None, timestamp=None, public_key=None)

    assert isinstance(caught.value, PayloadError)


def twilio_signature(url: str, params: dict[str, str]) -> str:
    return RequestValidator(TOKEN).compute_signature(url, params)


def status_params(status: str, error_code: str | None = None) -> dict[str, str]:
    params = {
        "MessageSid": "SM" + "1" * 32,
        "AccountSid": "AC" + "0" * 32,
        "From": "+14155550199",
        "To": "+14155550100",
        "MessageStatus": status,
        "SmsStatus": status,
    }
    return params | ({"ErrorCode": error_code} if error_code else {})


def test_a_delivered_status_callback_is_a_delivered_event() -> None:
    params = status_params("delivered")

    event = parse_twilio_status(
        STATUS_URL, params, twilio_signature(STATUS_URL, params), TOKEN, received_at=AT
    )

    assert event is not None
    assert (event.kind, event.channel, event.provider) == ("delivered", "sms", "twilio")
    assert event.provider_event_id == f"{'SM' + '1' * 32}:delivered"
    assert event.provider_message_id == "SM" + "1" * 32
    assert event.delivery_id == "d-9"
    assert event.recipient == "+14155550100"
    assert event.occurred_at == AT


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason"),
    [
        ("undelivered", "30007", "failed", "30007: carrier filtered the message"),
        ("failed", "30003", "failed", "30003: unreachable destination handset"),
        ("undelivered", "21610", "opted_out", "21610: recipient unsubscribed (replied STOP)"),
        ("failed", "39999", "failed", "39999: see twilio.com/docs/errors"),
        ("failed", None, "failed", None),
    ],
)
def test_failed_deliveries_carry_their_error(
    status: str, code: str | None, kind: str, reason: str | None
) -> None:
    params = status_params(status, code)

    event = parse_twilio_status(STATUS_URL, params, twilio_signature(STATUS_URL, params), TOKEN)

    assert event is not None
    assert (event.kind, event.reason) == (kind, reason)


@pytest.mark.parametrize("status", ["queued", "sent"])
def test_statuses_after_twilio_took_the_message_are_accepted_events(status: str) -> None:
    params = status_params(status)

    event = parse_twilio_status(STATUS_URL, params, twilio_signature(STATUS_URL, params), TOKEN)

    assert event is not None and event.kind == "accepted"


@pytest.mark.parametrize("status", ["accepted", "sending", "read", "canceled"])
def test_in_flight_statuses_produce_no_event(status: str) -> None:
    params = status_params(status)

    assert (
        parse_twilio_status(STATUS_URL, params, twilio_signature(STATUS_URL, params), TOKEN) is None
    )


def test_a_status_callback_without_a_delivery_id_in_its_url_has_none() -> None:
    url = "https://nurture.acme.test/webhooks/twilio/status"
    params = status_params("delivered")

    event = parse_twilio_status(url, params, twilio_signature(url, params), TOKEN)

    assert event is not None and event.delivery_id is None


@pytest.mark.parametrize(
    "tamper",
    ["signature", "url", "param", "missing", "token"],
)
def test_a_twilio_request_that_is_not_signed_by_twilio_is_refused(tamper: str) -> None:
    params = status_params("delivered")
    signature: str | None = twilio_signature(STATUS_URL, params)
    url, token = STATUS_URL, TOKEN
    if tamper == "signature":
        signature = RequestValidator("other-token").compute_signature(url, params)
    elif tamper == "url":
        url = "https://evil.test/webhooks/twilio/status?delivery_id=d-9"
    elif tamper == "param":
        params = params | {"MessageStatus": "failed"}
    elif tamper == "missing":
        signature = None
    else:
        token = "rotated-token"

    with pytest.raises(SignatureError):
        parse_twilio_status(url, params, signature, token)
    with pytest.raises(SignatureError):
        parse_twilio_inbound(url, params, signature, token)


def test_a_status_callback_missing_fields_is_a_payload_error() -> None:
    params = {"MessageSid": "SM1", "To": "+14155550100"}

    with pytest.raises(PayloadError, match="MessageStatus"):
        parse_twilio_status(STATUS_URL, params, twilio_signature(STATUS_URL, params), TOKEN)


def inbound(body: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": "SM" + "2" * 32,
        "AccountSid": "AC" + "0" * 32,
        "MessagingServiceSid": "MG" + "3" * 32,
        "From": "+14155550100",
        "To": "+14155550199",
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
    } | extra


def parse_inbound(params: dict[str, str]) -> tuple[str, str | None]:
    event = parse_twilio_inbound(
        INBOUND_URL, params, twilio_signature(INBOUND_URL, params), TOKEN, received_at=AT
    )
    return event.kind, event.body


@pytest.mark.parametrize(
    "word", ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
)
def test_every_opt_out_keyword_opts_out(word: str) -> None:
    assert parse_inbound(inbound(word))[0] == "opted_out"


@pytest.mark.parametrize("word", ["START", "YES", "UNSTOP"])
def test_every_opt_in_keyword_opts_in(word: str) -> None:
    assert parse_inbound(inbound(word))[0] == "opted_in"


@pytest.mark.parametrize("word", ["HELP", "INFO"])
def test_every_help_keyword_asks_for_help(word: str) -> None:
    assert parse_inbound(inbound(word))[0] == "help"


@pytest.mark.parametrize("body", ["stop", "  Stop \n", "\tsToP"])
def test_keywords_ignore_case_and_surrounding_whitespace(body: str) -> None:
    assert parse_inbound(inbound(body))[0] == "opted_out"


@pytest.mark.parametrize("body", ["stop please", "Please STOP", "STOP!", "yes, call me", ""])
def test_anything_but_a_whole_keyword_is_a_reply_with_its_body(body: str) -> None:
    assert parse_inbound(inbound(body)) == ("replied", body)


def test_advanced_opt_out_names_the_keyword_type_itself() -> None:
    assert parse_inbound(inbound("ARRET", OptOutType="STOP"))[0] == "opted_out"


def test_an_inbound_message_is_keyed_by_its_sid_and_comes_from_the_lead() -> None:
    params = inbound("Tuesday works")

    event = parse_twilio_inbound(
        INBOUND_URL, params, twilio_signature(INBOUND_URL, params), TOKEN, received_at=AT
    )

    assert event.provider_event_id == "SM" + "2" * 32
    assert event.recipient == "+14155550100"
    assert (event.kind, event.body, event.channel) == ("replied", "Tuesday works", "sms")
    assert event.delivery_id is None
    assert event.occurred_at == AT
