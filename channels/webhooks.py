"""Provider feedback (SendGrid events, Twilio status callbacks and inbound SMS) as DeliveryEvents.

Decisions: SendGrid `processed` and `deferred` and Twilio `queued`/`sent`-like states change
nothing for a lead and produce no event; `group_resubscribe` is `opted_in` (email). A bounce of
type `blocked` is still `bounced`, with the type in `detail` so suppression can tell them apart.
A `dropped` is `failed` (the message was refused) unless its reason says the address itself is
refused (bounced before, invalid, reported spam, unsubscribed): then it is the kind of that
refusal, so the address is suppressed here too; `detail["event"]` still says `dropped`.
Malformed SendGrid items are skipped and logged (one bad item must not make SendGrid retry the
whole batch for a day); a body that is not a JSON array raises PayloadError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.base import EMAIL, SMS, DeliveryEvent, sdk_missing
from engine.errors import ConfigurationError, NurtureError

log = logging.getLogger(__name__)

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"

SENDGRID_KINDS = {
    "processed": "accepted",
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "dropped": "failed",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "group_resubscribe": "opted_in",
}
SENDGRID_IGNORED = frozenset({"deferred"})
# `dropped` reasons that are about the address, not the message (SendGrid drops to addresses
# on its suppression lists); any other reason (spam content, an invalid SMTPAPI header, the
# plan's quota) refuses only this message.
SENDGRID_ADDRESS_DROPS = {
    "bounced address": "bounced",
    "invalid": "bounced",
    "invalid address": "bounced",
    "spam reporting address": "complained",
    "unsubscribed address": "unsubscribed",
}
_SENDGRID_DETAIL = (
    "response",
    "attempt",
    "status",
    "type",
    "useragent",
    "ip",
    "sg_machine_open",
    "asm_group_id",
    "category",
)

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})
_OPT_OUT_TYPES = {"STOP": "opted_out", "START": "opted_in", "HELP": "help"}

TWILIO_OPTED_OUT_CODES = frozenset({"21610"})
TWILIO_ERRORS = {
    "21610": "recipient unsubscribed (replied STOP)",
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "carrier filtered the message",
    "30008": "unknown error",
}


class SignatureError(NurtureError):
    """Raised when a webhook signature is missing or wrong: the request is not from the provider."""


class PayloadError(NurtureError, ValueError):
    """Raised when a webhook body is not the shape the provider sends."""


def parse_sendgrid_events(
    raw_body: bytes, *, signature: str | None, timestamp: str | None, public_key: str | None
) -> list[DeliveryEvent]:
    """Verify (when a public key is configured) and normalise one Event Webhook batch."""
    try:
        text = raw_body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError("SendGrid event body is not UTF-8") from err
    if public_key:
        _verify_sendgrid(text, signature, timestamp, public_key)
    try:
        items = json.loads(text)
    except ValueError as err:
        raise PayloadError(f"SendGrid event body is not JSON: {err}") from err
    if not isinstance(items, list):
        raise PayloadError(f"SendGrid event body must be a JSON array, not {type(items).__name__}")
    events = []
    for index, item in enumerate(items):
        try:
            event = _sendgrid_event(item)
        except (KeyError, TypeError, ValueError, OverflowError, OSError) as err:
            log.warning("skipping malformed SendGrid event #%d (%s): %.200r", index, err, item)
            continue
        if event is not None:
            events.append(event)
    return events


def check_sendgrid_key(key: str) -> None:
    """Fail at start-up, not on the first webhook, when the public key does not load."""
    try:
        # the optional provider SDK (extra `providers`) loads only when this adapter is used
        from sendgrid.helpers.eventwebhook import EventWebhook
    except ImportError as error:
        raise sdk_missing("sendgrid") from error
    try:
        EventWebhook(key)
    except (ValueError, TypeError) as error:
        raise ConfigurationError(f"SENDGRID_WEBHOOK_PUBLIC_KEY does not load: {error}") from error


def _verify_sendgrid(text: str, signature: str | None, timestamp: str | None, key: str) -> None:
    """ECDSA P-256 over timestamp + raw body, checked by the SDK's own verifier."""
    try:
        # the optional provider SDK (extra `providers`) loads only when this adapter is used
        from sendgrid.helpers.eventwebhook import EventWebhook
    except ImportError as err:
        raise sdk_missing("sendgrid") from err
    if not signature or not timestamp:
        raise SignatureError("SendGrid event webhook request is not signed")
    try:
        verifier = EventWebhook(key)
    except (ValueError, TypeError) as err:
        raise ConfigurationError(f"the SendGrid webhook public key does not load: {err}") from err
    try:
        valid = verifier.verify_signature(text, signature, timestamp)
    except (ValueError, TypeError) as err:  # not base64, not DER
        raise SignatureError(f"SendGrid event webhook signature is unreadable: {err}") from err
    if not valid:
        raise SignatureError("SendGrid event webhook signature does not match")


def _sendgrid_event(item: Any) -> DeliveryEvent | None:
    """One SendGrid event, None for events that change nothing; raises on a malformed item."""
    if not isinstance(item, dict):
        raise TypeError(f"an event is a JSON object, not {type(item).__name__}")
    name = item["event"]
    if name in SENDGRID_IGNORED:
        return None
    kind = SENDGRID_KINDS.get(name)
    if kind is None:
        log.info("ignoring SendGrid event type %r", name)
        return None
    event_id, recipient, stamp = item["sg_event_id"], item["email"], item["timestamp"]
    if not (isinstance(event_id, str) and event_id and isinstance(recipient, str) and recipient):
        raise ValueError("sg_event_id and email must be non-empty strings")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise ValueError(f"timestamp must be unix seconds, not {stamp!r}")
    message_id = item.get("sg_message_id")
    delivery_id = item.get("delivery_id")
    reason = item.get("reason")
    if name == "dropped":
        kind = SENDGRID_ADDRESS_DROPS.get(str(reason or "").strip().lower(), kind)
    return DeliveryEvent(
        kind=kind,
        channel=EMAIL,
        provider="sendgrid",
        provider_event_id=event_id,
        occurred_at=datetime.fromtimestamp(stamp, UTC),
        delivery_id=delivery_id if isinstance(delivery_id, str) and delivery_id else None,
        # X-Message-Id from the send is the part of sg_message_id before the first dot.
        provider_message_id=message_id.split(".", 1)[0] if isinstance(message_id, str) else None,
        recipient=recipient,
        url=item.get("url") if kind == "clicked" else None,
        reason=str(reason) if reason is not None else None,
        detail={"event": name, "sg_message_id": message_id}
        | {key: item[key] for key in _SENDGRID_DETAIL if key in item},
    )


def _verify_twilio(url: str, params: Mapping[str, str], signature: str | None, token: str) -> None:
    """HMAC-SHA1 over the public URL and sorted params, checked by the SDK's RequestValidator."""
    try:
        # the optional provider SDK (extra `providers`) loads only when this adapter is used
        from twilio.request_validator import RequestValidator
    except ImportError as err:
        raise sdk_missing("twilio") from err
    if not token:
        raise ConfigurationError("TWILIO_AUTH_TOKEN is not set")
    if not signature:
        raise SignatureError(f"Twilio request is not signed ({TWILIO_SIGNATURE_HEADER} missing)")
    if not RequestValidator(token).validate(url, dict(params), signature):
        raise SignatureError("Twilio request signature does not match (check the public URL)")


def _required(params: Mapping[str, str], *names: str) -> list[str]:
    """The named form fields, or a PayloadError naming the missing ones."""
    missing = [name for name in names if not params.get(name)]
    if missing:
        raise PayloadError(f"Twilio webhook is missing {', '.join(missing)}")
    return [params[name] for name in names]


def parse_twilio_status(
    url: str,
    params: Mapping[str, str],
    signature: str | None,
    auth_token: str,
    *,
    received_at: datetime | None = None,
) -> DeliveryEvent | None:
    """A status callback as `accepted`/`delivered`/`failed`/`opted_out`, or None otherwise.

    Twilio sends no event time, so `received_at` (default now) stands in. The delivery id is
    read from a `delivery_id` query parameter of the callback URL when the sender put one there.
    """
    _verify_twilio(url, params, signature, auth_token)
    sid, status, recipient = _required(params, "MessageSid", "MessageStatus", "To")
    error_code = params.get("ErrorCode") or None
    if status == "delivered":
        kind = "delivered"
    elif status in ("undelivered", "failed"):
        kind = "opted_out" if error_code in TWILIO_OPTED_OUT_CODES else "failed"
    elif status in ("queued", "sent"):
        kind = "accepted"  # Twilio has the message: settles a send whose answer was lost
    else:
        return None  # accepted, sending, scheduled, read, canceled: nothing to do
    reason = None
    if error_code:
        reason = f"{error_code}: {TWILIO_ERRORS.get(error_code, 'see twilio.com/docs/errors')}"
    delivery_ids = parse_qs(urlsplit(url).query).get("delivery_id")
    return DeliveryEvent(
        kind=kind,
        channel=SMS,
        provider="twilio",
        provider_event_id=f"{sid}:{status}",
        occurred_at=received_at or datetime.now(UTC),
        delivery_id=delivery_ids[0] if delivery_ids else None,
        provider_message_id=sid,
        recipient=recipient,
        reason=reason,
        detail={"status": status, "error_code": error_code, "from": params.get("From")},
    )


def sms_keyword_kind(body: str, opt_out_type: str | None = None) -> str:
    """What an inbound SMS means: the whole trimmed body is a keyword, or it is a reply.

    Twilio's Advanced Opt-Out names the keyword type itself (it may have custom keywords).
    """
    if opt_out_type and opt_out_type.upper() in _OPT_OUT_TYPES:
        return _OPT_OUT_TYPES[opt_out_type.upper()]
    word = body.strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return "opted_out"
    if word in OPT_IN_KEYWORDS:
        return "opted_in"
    if word in HELP_KEYWORDS:
        return "help"
    return "replied"


def parse_twilio_inbound(
    url: str,
    params: Mapping[str, str],
    signature: str | None,
    auth_token: str,
    *,
    received_at: datetime | None = None,
) -> DeliveryEvent:
    """An inbound SMS: `opted_out`/`opted_in`/`help` for keywords, else `replied` with the body."""
    _verify_twilio(url, params, signature, auth_token)
    sid, sender = _required(params, "MessageSid", "From")
    body = params.get("Body", "")
    return DeliveryEvent(
        kind=sms_keyword_kind(body, params.get("OptOutType")),
        channel=SMS,
        provider="twilio",
        provider_event_id=sid,
        occurred_at=received_at or datetime.now(UTC),
        delivery_id=None,
        provider_message_id=None,
        recipient=sender,
        body=body,
        detail={
            "to": params.get("To"),
            "messaging_service_sid": params.get("MessagingServiceSid"),
            "num_media": params.get("NumMedia"),
        },
    )
