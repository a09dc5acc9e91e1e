"""The channel adapter surface: messages in, normalised send results and delivery events out.

Every adapter takes an `EmailMessage` or `SmsMessage`, returns a `SendResult` or raises a
`ChannelError` whose kind tells the engine what to do; provider feedback (webhooks) comes back
as `DeliveryEvent`s. Email headers and the MIME message are built here once, for every adapter.
"""

from __future__ import annotations

import binascii
import email.errors
import email.policy
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.charset import QP, Charset
from email.header import Header
from email.headerregistry import Address
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import Compat32
from email.utils import format_datetime, formataddr, parseaddr, quote
from typing import Any, ClassVar

import email_validator

from engine.errors import ChannelError, ConfigurationError, ErrorKind

log = logging.getLogger(__name__)

EMAIL = "email"
SMS = "sms"

# SendResult.status: "accepted" = a provider or relay took it and delivers asynchronously;
# "queued" = the provider queued it (Twilio); "sent" = the adapter's job is done (outbox, console).
ACCEPTED, QUEUED, SENT = "accepted", "queued", "sent"

# What provider feedback normalises to. `accepted` (SendGrid processed, Twilio queued/sent)
# changes nothing for a lead; it only proves the provider took a send whose answer was lost.
# SendGrid deferred and Twilio's other in-flight states produce no event at all.
EVENT_KINDS = frozenset(
    {
        "accepted",
        "delivered",
        "opened",
        "clicked",
        "bounced",
        "complained",
        "unsubscribed",
        "failed",
        "replied",
        "opted_out",
        "opted_in",
        "help",
    }
)

# Headers that come from message fields or the transport, never from `EmailMessage.headers`
# (SendGrid refuses most of them too).
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "date",
        "message-id",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
        "received",
        "dkim-signature",
        "x-sg-id",
        "x-sg-eid",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "x-nurture-delivery-id",
    }
)
DELIVERY_ID_HEADER = "X-Nurture-Delivery-Id"


class _QuotedPrintable(Charset):
    """UTF-8 bodies quoted-printable, so relays without 8BITMIME take non-ASCII text too,
    encoded by binascii's C encoder (the email package's own is pure Python, and a fifth of
    a millisecond per body)."""

    def __init__(self) -> None:
        super().__init__("utf-8")
        self.body_encoding = QP

    def body_encode(self, string: Any) -> Any:
        if not string:
            return string
        data = string.encode("utf-8") if isinstance(string, str) else string
        return binascii.b2a_qp(data, istext=True).decode("ascii")


class _Unfolded(Compat32):
    """The classic policy, writing a header that fits on its line as it is: folding it would
    change nothing, and the email package's folder costs a tenth of a millisecond a header."""

    def fold(self, name: str, value: str) -> str:
        return self._as_is(name, value) or super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        line = self._as_is(name, value)
        return line.encode("utf-8") if line else super().fold_binary(name, value)

    def _as_is(self, name: str, value: object) -> str | None:
        """The header line as it stands, when it is plain ASCII text that fits; else None."""
        if (
            isinstance(value, str)
            and value.isascii()
            and "\r" not in value
            and "\n" not in value
            and len(name) + len(value) + 2 <= (self.max_line_length or 0)
        ):
            return f"{name}: {value}{self.linesep}"
        return None


class _Utf8Headers(_Unfolded):
    """For a message only SMTPUTF8 carries (RFC 6532): header text that is not ASCII written as
    UTF-8, where the classic policy would make RFC 2047 words of it, which an address may not
    be. A line past the 998-octet limit still gets the classic words."""

    def _as_is(self, name: str, value: object) -> str | None:
        if (
            isinstance(value, str)
            and not value.isascii()
            and "\r" not in value
            and "\n" not in value
            and len(name) + len(value.encode("utf-8")) + 2 <= _LINE_LIMIT
        ):
            return f"{name}: {value}{self.linesep}"
        return super()._as_is(name, value)


_LINE_LIMIT = 998  # RFC 5322: octets in a header line, whatever the policy prefers
_UTF8 = _QuotedPrintable()
_POLICY = _Unfolded()
_UTF8_POLICY = _Utf8Headers()
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII except ":"
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # a display name with one of these is quoted
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class EmailMessage:
    """One rendered email for one lead, with the delivery id that maps feedback back to it."""

    delivery_id: str
    to_email: str
    to_name: str
    from_email: str
    from_name: str
    subject: str
    html: str
    text: str
    reply_to: str | None = None
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class SmsMessage:
    """One rendered SMS for one lead; `status_callback` is where the provider reports delivery."""

    delivery_id: str
    to_phone: str
    from_phone: str
    body: str
    status_callback: str | None = None


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it took a message: its id for the message, and how far it got."""

    provider: str
    provider_message_id: str | None
    status: str


@dataclass(frozen=True)
class DeliveryEvent:
    """Provider feedback in one shape, whichever provider sent it; dedupe on provider_event_id."""

    kind: str
    channel: str
    provider: str
    provider_event_id: str
    occurred_at: datetime
    delivery_id: str | None
    provider_message_id: str | None
    recipient: str
    url: str | None = None
    reason: str | None = None
    body: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown delivery event kind {self.kind!r}")
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")


class Channel(ABC):
    """One way to send: a provider adapter for one channel ("email" or "sms")."""

    name: ClassVar[str]
    # False for adapters that reach no provider (outbox, console): nothing to pace.
    paced: ClassVar[bool] = True
    # True where the provider's rate limit counts requests, not messages: a batch handed to
    # `send_many` then takes one send slot, not one per message.
    paced_per_request: ClassVar[bool] = False
    # True where the adapter carries an address whose local part is not ASCII (SMTPUTF8,
    # RFC 6531); others get an internationalised domain in its ASCII (IDNA) form only.
    smtputf8: ClassVar[bool] = False
    channel: str

    @abstractmethod
    def send(self, message: Any) -> SendResult:
        """Hand one message to the provider; raises ChannelError saying what to do on failure."""

    def send_many(self, messages: Sequence[Any]) -> list[SendResult | ChannelError]:
        """Hand several messages over, each answered in order; adapters whose provider takes
        a batch in one call (one SMTP session, SendGrid personalizations) override this."""
        answers: list[SendResult | ChannelError] = []
        for message in messages:
            try:
                answers.append(self.send(message))
            except ChannelError as error:
                answers.append(error)
            except Exception as error:  # noqa: BLE001 - a bug on one message strands no other
                log.exception("%s: sending %s failed", self.name, message.delivery_id)
                # it may have reached the provider: never resent, like any unknown outcome
                answers.append(ChannelError(f"{type(error).__name__}: {error}", ErrorKind.UNKNOWN))
        return answers

    def close(self) -> None:  # noqa: B027 - a hook: most adapters hold nothing open
        """Release what the adapter holds open; the default holds nothing."""

    def wrong_message(self, message: object) -> TypeError:
        """The error for a message of the other channel: a wiring mistake, not a send failure."""
        return TypeError(f"the {self.channel} {self.name} cannot send {type(message).__name__}")


class BatchChannel(Channel):
    """An adapter whose provider takes a batch in one call: `send_many` is its own, and
    `send` a batch of one, so single and batched sends share one path."""

    def send(self, message: Any) -> SendResult:
        answer = self.send_many([message])[0]
        if isinstance(answer, ChannelError):
            raise answer
        return answer

    @abstractmethod
    def send_many(self, messages: Sequence[Any]) -> list[SendResult | ChannelError]:
        """Hand the messages over in as few provider calls as they allow, each answered."""


# A provider API's own answers that it took nothing (retry later). Another 5xx (a gateway's
# 502/504) does not prove the API behind it did not take the message.
RETRY_STATUSES = frozenset({429, 500, 503})


def status_kind(status: int) -> ErrorKind:
    """What an HTTP error answer means once the provider's own cases are ruled out: retry
    only what the provider says it did not take, never resend what it may have taken."""
    if status in RETRY_STATUSES:
        return ErrorKind.TRANSIENT
    return ErrorKind.UNKNOWN if status >= 500 else ErrorKind.PERMANENT


def sdk_missing(package: str) -> ConfigurationError:
    """The error for an adapter whose provider SDK is not installed, naming the extra."""
    return ConfigurationError(
        f"the {package} package is not installed: pip install 'nurture[providers]'"
    )


def require_env(environ: Mapping[str, str], name: str) -> str:
    """A variable that must be set, or a ConfigurationError naming it."""
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"{name} is not set")
    return value


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """A yes/no variable: 1, true, yes, on (any case) mean yes; unset means no."""
    return environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def check_delivery_id(delivery_id: str) -> str:
    """Delivery ids become file names and Message-IDs, so only plain characters are accepted."""
    if not _SAFE_ID.fullmatch(delivery_id):
        raise ChannelError(f"unusable delivery id {delivery_id!r}", ErrorKind.PERMANENT)
    return delivery_id


def _no_line_breaks(what: str, value: str) -> str:
    """Header injection guard: a CR or LF in a header value would start a new header."""
    if "\r" in value or "\n" in value:
        raise ChannelError(f"line break in {what}: {value!r}", ErrorKind.PERMANENT)
    return value


def email_headers(message: EmailMessage) -> dict[str, str]:
    """The extra headers every adapter sends: one-click unsubscribe, delivery id, custom ones.

    RFC 8058 one-click (`List-Unsubscribe-Post`) needs an HTTPS URI; an http:// link (local
    development) still gets `List-Unsubscribe`, but no one-click promise it cannot keep.
    """
    _no_line_breaks("subject", message.subject)
    for what in ("to_email", "to_name", "from_email", "from_name", "reply_to"):
        _no_line_breaks(what, getattr(message, what) or "")
    headers: dict[str, str] = {}
    for name, value in message.headers.items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() in RESERVED_HEADERS:
            raise ChannelError(f"header {name!r} may not be set", ErrorKind.PERMANENT)
        headers[name] = _no_line_breaks(f"header {name}", value)
    targets = []
    if message.unsubscribe_url:
        targets.append(f"<{_no_line_breaks('unsubscribe_url', message.unsubscribe_url)}>")
    if message.unsubscribe_mailto:
        mailto = _no_line_breaks("unsubscribe_mailto", message.unsubscribe_mailto)
        targets.append(f"<{mailto if mailto.startswith('mailto:') else 'mailto:' + mailto}>")
    if targets:
        headers["List-Unsubscribe"] = ", ".join(targets)
    if message.unsubscribe_url and message.unsubscribe_url.lower().startswith("https://"):
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    headers[DELIVERY_ID_HEADER] = _no_line_breaks("delivery_id", message.delivery_id)
    return headers


def smtputf8_address(message: EmailMessage) -> str | None:
    """The message's first address that is not ASCII, which only SMTPUTF8 (RFC 6531) carries,
    or None when plain SMTP carries them all; names and subjects never need it (RFC 2047)."""
    reply_to = (parseaddr(message.reply_to)[1] or message.reply_to) if message.reply_to else ""
    for address in (message.to_email, message.from_email, reply_to):
        if not address.isascii():
            return address
    return None


def _address(name: str, addr: str) -> Address:
    """A header address; an address the email package cannot split is the caller's mistake.

    The email package refuses a mailbox that is not ASCII, so an address with any letter
    outside ASCII is checked by email-validator, and kept as given."""
    try:
        if addr.isascii():
            return Address(display_name=name, addr_spec=addr)
        email_validator.validate_email(addr, check_deliverability=False, test_environment=True)
    except (ValueError, IndexError, email.errors.HeaderParseError) as err:
        raise ChannelError(f"invalid email address {addr!r}", ErrorKind.PERMANENT) from err
    local, _, domain = addr.rpartition("@")  # checked: a dot-atom mailbox, without an "@"
    return Address(display_name=name, username=local, domain=domain)


def build_mime(message: EmailMessage, sent_at: datetime) -> Message:
    """The RFC 5322 message (multipart/alternative text + html) the outbox writes and SMTP sends.

    Built with the classic email API (RFC 2047 words for non-ASCII headers, quoted-printable
    bodies so 7-bit relays take them), about four times faster than the modern policy's
    re-parsing of every header; addresses are still checked and line breaks refused. A message
    to or from an address that is not ASCII needs SMTPUTF8 anyway: its headers are UTF-8 as
    written (RFC 6532), the modern policy's SMTPUTF8 form, but without its decoding of text
    that looks like RFC 2047 words, which would let a name write a header of its own.
    """
    extra = email_headers(message)
    delivery_id = check_delivery_id(message.delivery_id)
    utf8 = smtputf8_address(message) is not None
    sender = _address(message.from_name, message.from_email)
    recipient = _address(message.to_name, message.to_email)
    policy = _UTF8_POLICY if utf8 else _POLICY
    # "=_" never occurs in quoted-printable text, so the boundary needs no search of the
    # bodies (the email package compiles a pattern per message to make one up).
    mime = MIMEMultipart("alternative", boundary=f"=_{delivery_id}", policy=policy)
    mime["From"] = _mailbox(sender, utf8)
    mime["To"] = _mailbox(recipient, utf8)
    if message.reply_to:
        reply_name, reply_addr = parseaddr(message.reply_to)
        mime["Reply-To"] = _mailbox(_address(reply_name, reply_addr or message.reply_to), utf8)
    mime["Subject"] = _header_text(message.subject, utf8)  # type: ignore[assignment] # Header is taken
    mime["Date"] = format_datetime(sent_at)
    mime["Message-ID"] = f"<{delivery_id}@{sender.domain or 'nurture.invalid'}>"
    for name, value in extra.items():
        mime[name] = _header_text(value, utf8)  # type: ignore[assignment]
    # The stubs say str, but MIMEText takes a Charset, which is how QP bodies are asked for.
    mime.attach(MIMEText(message.text, "plain", _UTF8, policy=policy))  # type: ignore[arg-type]
    mime.attach(MIMEText(message.html, "html", _UTF8, policy=policy))  # type: ignore[arg-type]
    return mime


def _mailbox(address: Address, utf8: bool) -> str:
    """`Name <addr>`, the name RFC 2047-encoded when it is not ASCII (outside a UTF-8 message),
    or when it would read as encoded words itself (lead data like `=?utf-8?q?=0D=0ABcc:...?=`
    decodes to line breaks)."""
    name, spec = address.display_name, address.addr_spec
    if "=?" in name:
        return f"{Header(name, 'utf-8').encode()} <{spec}>"
    if not utf8:
        return formataddr((name, spec), charset="utf-8")
    # quoted where formataddr quotes it, but written as UTF-8 rather than encoded
    shown = f'"{quote(name)}"' if _SPECIALS.search(name) else name
    return f"{shown} <{spec}>" if name else spec


def _header_text(value: str, utf8: bool) -> str | Header:
    """ASCII text as is (any text, in a UTF-8 message); anything else, or text containing `=?`,
    as RFC 2047 encoded words (so that text which looks like an encoded word stays that text
    when read)."""
    if "=?" in value or not (utf8 or value.isascii()):
        return Header(value, "utf-8")
    return value
