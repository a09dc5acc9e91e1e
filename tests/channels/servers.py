"""Local stand-ins for SendGrid, Twilio and an SMTP relay that check requests as the providers do.

The real SDKs talk to these over HTTP on 127.0.0.1, so the tests exercise the SDKs' own request
building and error handling. Each server records what it accepted and can be scripted to give
the next answers (429, 500, ...). Nothing here imports pytest: benchmarks use these too.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from channels.sms import segments


@dataclass(frozen=True)
class Request:
    """One HTTP request as the server saw it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What the server answers: status, body, headers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering, to make clients time out

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
        """A JSON answer, the only kind both providers give."""
        return cls(
            status,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json"} | dict(headers or {}),
        )


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the FakeProvider that owns the server, and writes its reply."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            self.command, self.path, dict(self.headers.items()), self.rfile.read(length)
        )
        reply = self.server.provider.answer(request)
        time.sleep(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output is for failures."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, provider: FakeProvider, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.provider = provider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timed out, hung up) is expected here; anything else is not."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeProvider:
    """A threaded HTTP server on a free port (or `port`) with a queue of scripted next answers."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._script: collections.deque[Reply] = collections.deque()
        self.requests: list[Request] = []
        self._server = _Server(self, port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def then(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, before any checks."""
        with self._lock:
            self._script.extend(replies)

    def answer(self, request: Request) -> Reply:
        """A scripted reply when one is queued, else what the provider would say."""
        with self._lock:
            self.requests.append(request)
            scripted = self._script.popleft() if self._script else None
        return scripted or self.handle(request)

    def handle(self, request: Request) -> Reply:
        """The provider's own behaviour; subclasses implement it."""
        raise NotImplementedError


# --- SendGrid --------------------------------------------------------------------------------

SENDGRID_FORBIDDEN_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)


def sendgrid_errors(
    status: int, *errors: tuple[str, str | None], headers: Mapping[str, str] | None = None
) -> Reply:
    """SendGrid's error shape: {"errors": [{message, field, help}]}."""
    body = {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}
    return Reply.json(status, body, headers)


class SendGridServer(FakeProvider):
    """POST /v3/mail/send with the checks of the real API; 202 + X-Message-Id when valid."""

    def __init__(self, api_key: str = "SG.test-key", port: int = 0) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.accepted: list[dict[str, Any]] = []
        self.message_ids: list[str] = []
        self.emails: list[SentEmail] = []

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/v3/mail/send":
            return sendgrid_errors(404, ("not found", None))
        if _header(request, "Authorization") != f"Bearer {self.api_key}":
            return sendgrid_errors(
                401, ("The provided authorization grant is invalid, expired, or revoked", None)
            )
        try:
            mail = json.loads(request.body)
        except ValueError:
            return sendgrid_errors(400, ("Bad Request", None))
        problems = validate_mail(mail) if isinstance(mail, dict) else [("Bad Request", None)]
        if problems:
            return sendgrid_errors(400, *problems)
        if mail.get("mail_settings", {}).get("sandbox_mode", {}).get("enable"):
            return Reply(200)
        message_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        with self._lock:
            self.accepted.append(mail)
            self.message_ids.append(message_id)
            self.emails.extend(sent_emails(mail, message_id))
        return Reply(202, b"", {"X-Message-Id": message_id})


@dataclass(frozen=True)
class SentEmail:
    """What the recipients of one personalization of an accepted request get."""

    message_id: str = field(compare=False)  # the request's X-Message-Id
    to: list[dict[str, str]] = field(default_factory=list)
    sender: dict[str, str] = field(default_factory=dict)
    reply_to: dict[str, str] | None = None
    subject: str = ""
    content: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)


def sent_emails(mail: dict[str, Any], message_id: str) -> list[SentEmail]:
    """Each personalization as the email SendGrid makes of it: its subject, headers and custom
    args over the request's, its substitutions made in the subject, reply-to and content."""
    return [_sent_email(mail, p, message_id) for p in mail["personalizations"]]


def _sent_email(
    mail: dict[str, Any], personalization: dict[str, Any], message_id: str
) -> SentEmail:
    substitutions = personalization.get("substitutions", {})

    def made(text: str) -> str:
        return substitute(text, substitutions)

    reply_to = mail.get("reply_to")
    return SentEmail(
        message_id=message_id,
        to=personalization["to"],
        sender=mail["from"],
        reply_to={key: made(value) for key, value in reply_to.items()} if reply_to else None,
        subject=made(personalization.get("subject") or mail["subject"]),
        content=[{"type": c["type"], "value": made(c["value"])} for c in mail.get("content", [])],
        headers=mail.get("headers", {}) | personalization.get("headers", {}),
        custom_args=mail.get("custom_args", {}) | personalization.get("custom_args", {}),
        categories=mail.get("categories", []),
    )


def substitute(text: str, substitutions: Mapping[str, str]) -> str:
    """Every substitution tag in the text replaced by its value, in one pass (SendGrid also
    substitutes tags inside values, up to 4 deep; nothing here relies on that)."""
    if not substitutions:
        return text
    tags = sorted(substitutions, key=len, reverse=True)  # the longest tag wins
    pattern = re.compile("|".join(re.escape(tag) for tag in tags))
    return pattern.sub(lambda match: substitutions[match.group()], text)


def validate_mail(mail: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The mail send checks the tests rely on, as (message, field) pairs."""
    problems: list[tuple[str, str | None]] = []
    sender = mail.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        problems.append(("The from object must be provided for every email send.", "from.email"))
    personalizations = mail.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(
            (
                "The personalizations field is required and must have at least one.",
                "personalizations",
            )
        )
        personalizations = []
    elif len(personalizations) > 1000:
        message = (
            "The personalization block is limited to 1000 personalizations per API request."
            f" You have provided {len(personalizations)} personalizations. Please consider"
            " splitting this into multiple requests and resending your request."
        )
        problems.append((message, "personalizations"))
    problems.extend(validate_personalizations(personalizations[:1000]))
    for index, personalization in enumerate(personalizations[:1000]):
        to = personalization.get("to") if isinstance(personalization, dict) else None
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(t, dict) and t.get("email") for t in to)
        ):
            problems.append(
                (
                    "The to array is required for all personalization objects.",
                    f"personalizations.{index}.to",
                )
            )
        elif (
            not mail.get("subject")
            and not personalization.get("subject")
            and not mail.get("template_id")
        ):
            problems.append(
                (
                    "The subject is required unless a template or every personalization has one.",
                    "subject",
                )
            )
    content = mail.get("content")
    if not mail.get("template_id"):
        if not isinstance(content, list) or not content:
            problems.append(
                (
                    "Unless a valid template_id is provided, the content parameter is required.",
                    "content",
                )
            )
        else:
            for index, part in enumerate(content):
                if not isinstance(part, dict) or not part.get("type") or not part.get("value"):
                    problems.append(
                        (
                            "The content value must be a string at least one character in length.",
                            f"content.{index}.value",
                        )
                    )
            types = [part.get("type") for part in content if isinstance(part, dict)]
            if "text/plain" in types and types[0] != "text/plain":
                problems.append(("If present, text/plain content must be first.", "content"))
    categories = mail.get("categories", [])
    if not isinstance(categories, list) or len(categories) > 10:
        problems.append(("You may not have more than 10 categories per request.", "categories"))
    elif any(not isinstance(c, str) or len(c) > 255 for c in categories):
        problems.append(("A category cannot have more than 255 characters.", "categories"))
    custom_args = mail.get("custom_args", {})
    if not isinstance(custom_args, dict) or any(
        not isinstance(v, str) for v in custom_args.values()
    ):
        problems.append(("Custom arg values must be strings.", "custom_args"))
    elif len(json.dumps(custom_args).encode()) > 10_000:
        problems.append(("The custom_args may not exceed 10,000 bytes.", "custom_args"))
    problems.extend(_header_problems(mail.get("headers", {}), "headers"))
    send_at = mail.get("send_at")
    if send_at is not None and (not isinstance(send_at, int) or send_at > time.time() + 72 * 3600):
        problems.append(("send_at may not be more than 72 hours in the future.", "send_at"))
    if "asm" in mail and not (isinstance(mail["asm"], dict) and mail["asm"].get("group_id")):
        problems.append(("The asm group_id is required.", "asm.group_id"))
    return problems


# Substitutions: at most 10,000 bytes per personalization (mail send API reference) and
# 50,000 bytes per request (mail send errors page, "You are limited to 10,000 substitutions.").
SUBSTITUTION_BYTES, REQUEST_SUBSTITUTION_BYTES = 10_000, 50_000
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def validate_personalizations(personalizations: list[Any]) -> list[tuple[str, str | None]]:
    """Checks across personalizations: addresses valid and each in the request once, headers
    and substitutions of the right types, substitutions within their limits."""
    problems: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    total = 0
    for index, personalization in enumerate(personalizations):
        if not isinstance(personalization, dict):
            continue
        field = f"personalizations.{index}"
        for to in personalization.get("to") or []:
            address = str(to.get("email") or "") if isinstance(to, dict) else ""
            if address and not _EMAIL.fullmatch(address):
                problems.append(("Does not contain a valid address.", f"{field}.to"))
            elif address.lower() in seen:
                message = (
                    "Each unique email address in the personalizations array should only be"
                    f" included once. You have included {address} more than once."
                )
                problems.append((message, f"{field}.to"))
            seen.add(address.lower())
        problems.extend(_header_problems(personalization.get("headers", {}), f"{field}.headers"))
        size = _substitution_bytes(personalization.get("substitutions", {}))
        if size is None:
            message = (
                "The substitution values must be an object of key/value pairs,"
                " where the values are all strings."
            )
            problems.append((message, f"{field}.substitutions"))
        elif size > SUBSTITUTION_BYTES:
            message = (
                "The total collective size of your substitutions may not exceed 10,000 bytes"
                " per personalization object."
            )
            problems.append((message, f"{field}.substitutions"))
        total += size or 0
    if total > REQUEST_SUBSTITUTION_BYTES:
        problems.append(("You are limited to 10,000 substitutions.", "personalizations"))
    return problems


def _substitution_bytes(substitutions: object) -> int | None:
    """Their total collective size (UTF-8 bytes of tags and values), None when not strings."""
    if not isinstance(substitutions, dict) or not all(
        isinstance(value, str) for value in substitutions.values()
    ):
        return None
    return sum(len(tag.encode()) + len(value.encode()) for tag, value in substitutions.items())


def _header_problems(headers: object, field: str) -> list[tuple[str, str | None]]:
    """Header values must be strings, and some headers are SendGrid's alone."""
    if not isinstance(headers, dict) or any(not isinstance(v, str) for v in headers.values()):
        return [("Header values must be strings.", field)]
    return [
        (f"The header {name} may not be overridden.", field)
        for name in headers
        if name.lower() in SENDGRID_FORBIDDEN_HEADERS
    ]


# --- Twilio ----------------------------------------------------------------------------------

_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/(?P<sid>AC[0-9a-zA-Z]+)/Messages\.json")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def twilio_error(status: int, code: int, message: str) -> Reply:
    """Twilio's legacy error shape, which the SDK raises as TwilioRestException."""
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return Reply.json(
        status, {"code": code, "message": message, "more_info": more_info, "status": status}
    )


class TwilioServer(FakeProvider):
    """POST /2010-04-01/Accounts/{sid}/Messages.json with Basic auth; 201 + the message JSON.

    `rate_limit` (messages per second per From number) answers 429/20429 past the limit;
    numbers in `opted_out` answer 21610 as after a STOP.
    """

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-auth-token",
        rate_limit: float | None = None,
    ) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.rate_limit = rate_limit
        self.opted_out: set[str] = set()
        self.accepted: list[dict[str, Any]] = []
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )

    def handle(self, request: Request) -> Reply:
        match = _MESSAGES_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if (
            _header(request, "Authorization") != f"Basic {expected}"
            or match["sid"] != self.account_sid
        ):
            return twilio_error(401, 20003, "Authenticate")
        form = {
            k: v[-1] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()
        }
        to, body = form.get("To"), form.get("Body")
        sender = form.get("From") or form.get("MessagingServiceSid")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not sender:
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        if not _E164.fullmatch(to):
            return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if len(body) > 1600:
            return twilio_error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if to in self.opted_out:
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        if not self._within_rate(sender):
            return twilio_error(429, 20429, "Too Many Requests")
        return Reply.json(201, self._message(form, to, sender, body))

    def _within_rate(self, sender: str) -> bool:
        """A sliding one-second window per sender."""
        if self.rate_limit is None:
            return True
        now = time.monotonic()
        with self._lock:
            recent = self._recent[sender]
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) >= self.rate_limit:
                return False
            recent.append(now)
        return True

    def _message(self, form: dict[str, str], to: str, sender: str, body: str) -> dict[str, Any]:
        """The Message resource as Twilio returns it on create, and records it."""
        sid = "SM" + secrets.token_hex(16)
        created = format_datetime(datetime.now(UTC).replace(microsecond=0), usegmt=True)
        service = form.get("MessagingServiceSid")
        message: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": form.get("From"),
            "messaging_service_sid": service,
            "body": body,
            "status": "accepted" if service else "queued",
            "num_segments": str(segments(body)[0]),
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": created,
            "date_updated": created,
            "date_sent": None,
            "error_code": None,
            "error_message": None,
            "price": None,
            "price_unit": "USD",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {},
        }
        with self._lock:
            self.accepted.append(message | {"status_callback": form.get("StatusCallback")})
        return message


def _header(request: Request, name: str) -> str | None:
    """A request header by case-insensitive name."""
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), None)


class SendGridSigner:
    """Signs Event Webhook batches as SendGrid does: ECDSA P-256 / SHA-256 over timestamp + body."""

    def __init__(self) -> None:

        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """Base64 DER SubjectPublicKeyInfo, as SendGrid shows it in the settings."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, timestamp: str, body: bytes) -> str:
        """The X-Twilio-Email-Event-Webhook-Signature header value: base64 DER signature."""
        signature = self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()


# --- SMTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message the SMTP server accepted: the envelope and the raw bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    smtputf8: bool = False  # MAIL FROM asked for SMTPUTF8


class _SmtpHandler:
    """Records messages; scripted replies answer RCPT or DATA first (e.g. "550 ...", "421 ..."),
    and `refusals` answer RCPT for the addresses they name, every time.

    Scripted faults, taken one per command in turn ("none" lets that one pass): `rcpt_faults`
    ("hang up") drop the connection before any message was sent; `data_faults` take the
    message (it is recorded as received), then "stall" (answer after `stall` seconds, past a
    client's time-out) or "hang up" without answering.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refusals: dict[str, str] = {}
        self.rcpt_replies: collections.deque[str] = collections.deque()
        self.data_replies: collections.deque[str] = collections.deque()
        self.rcpt_faults: collections.deque[str] = collections.deque()
        self.data_faults: collections.deque[str] = collections.deque()
        self.stall = 1.0

    async def _fault(self, server: SMTP, fault: str) -> None:
        if fault == "stall":
            await asyncio.sleep(self.stall)
        elif fault == "hang up":
            assert server.transport is not None
            server.transport.close()
        elif fault != "none":
            raise ValueError(f"unknown SMTP fault {fault!r}")

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_faults:
            await self._fault(server, self.rcpt_faults.popleft())
        if self.rcpt_replies:
            return self.rcpt_replies.popleft()
        if address in self.refusals:
            return self.refusals[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.popleft()
        content = envelope.original_content or b""
        self.received.append(
            Received(
                envelope.mail_from or "", tuple(envelope.rcpt_tos), content, envelope.smtp_utf8
            )
        )
        if self.data_faults:
            await self._fault(server, self.data_faults.popleft())
        return "250 Message accepted for delivery"


class _Busy(asyncio.Protocol):
    """A relay at its connection limit: greets with 421 and hangs up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
        transport.close()


class _Controller(Controller):
    """aiosmtpd's controller, counting connections and refusing those past `max_connections`."""

    def __init__(self, relay: SmtpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relay = relay

    def factory(self) -> SMTP | _Busy:
        """A session for each new connection (this runs once per connection)."""
        self.relay.connections += 1
        limit = self.relay.max_connections
        if limit is not None and self.relay.connections > limit:
            return _Busy()
        return super().factory()


class SmtpServer:
    """An aiosmtpd relay on 127.0.0.1; `tls_context` and `logins` make it demand STARTTLS, AUTH,
    and `smtputf8` offer SMTPUTF8 (RFC 6531).

    `connections` counts the connections made; past `max_connections` (when set) a new one is
    greeted with 421 and closed, as a busy relay does.
    """

    def __init__(
        self,
        tls_context: Any = None,
        logins: Mapping[str, str] | None = None,
        *,
        smtputf8: bool = False,
    ) -> None:
        self.handler = _SmtpHandler()
        self.port = free_port()
        self.logins = dict(logins or {})
        self.connections = 0
        self.max_connections: int | None = None
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if tls_context is not None:
            kwargs |= {"tls_context": tls_context, "require_starttls": True}
        if self.logins:
            kwargs |= {"authenticator": self._authenticate, "auth_required": True}
        self._controller = _Controller(
            self, self.handler, hostname="127.0.0.1", port=self.port, **kwargs
        )

    @property
    def received(self) -> list[Received]:
        """Messages accepted so far."""
        return self.handler.received

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.logins.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False)  # unhandled: the server answers 535

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        self.connections = 0  # start() made one to check that the server answers
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


def free_port() -> int:
    """A port nobody listens on right now (aiosmtpd cannot bind port 0 itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1, written as PEM files: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)
