"""Email through the SendGrid v3 mail send API with the official `sendgrid` SDK."""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import ssl
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from channels.base import (
    ACCEPTED,
    EMAIL,
    BatchChannel,
    EmailMessage,
    SendResult,
    email_headers,
    env_flag,
    require_env,
    sdk_missing,
    status_kind,
)
from engine.clock import Clock, SystemClock
from engine.errors import ChannelError, ConfigurationError, ErrorKind

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.sendgrid.com"
# The mail send API reference: at most 1000 personalizations per request, and "the total
# collective size of your substitutions may not exceed 10,000 bytes per personalization object".
# Its errors page also limits substitutions to 50,000 bytes per request: both are kept.
MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_REQUEST_SUBSTITUTION_BYTES = 50_000
# Answers that refuse a whole request before SendGrid takes any of it: its messages may go again.
_REFUSED_WHOLE = frozenset({400, 413})


class SendGridChannel(BatchChannel):
    """Sends a batch as few requests as it can, one personalization per message, each with
    its delivery id as a custom argument; a message that cannot share a request goes alone."""

    name = "sendgrid"
    channel = EMAIL
    # SendGrid's v3 limits are "a fixed number of requests per refresh period" (its rate
    # limits page): a batch of personalizations is one request.
    paced_per_request = True

    def __init__(
        self,
        api_key: str,
        *,
        host: str = DEFAULT_HOST,
        sandbox: bool = False,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        try:
            # the optional provider SDK (extra `providers`) loads only when this adapter is used
            from sendgrid import SendGridAPIClient
        except ImportError as err:
            raise sdk_missing("sendgrid") from err
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise ConfigurationError(
                f"SendGrid host must look like https://api.sendgrid.com (no path): {host!r}"
            )
        # The SDK builds its HTTP client in the constructor and has no timeout by default.
        self._api = SendGridAPIClient(api_key, host=host.rstrip("/"))
        self._api.client.timeout = timeout
        self.sandbox = sandbox
        self._clock = clock or SystemClock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], clock: Clock | None = None) -> SendGridChannel:
        """SENDGRID_API_KEY (required), NURTURE_SENDGRID_HOST (EU/tests), _SANDBOX (yes/no)."""
        return cls(
            require_env(environ, "SENDGRID_API_KEY"),
            host=environ.get("NURTURE_SENDGRID_HOST") or DEFAULT_HOST,
            sandbox=env_flag(environ, "NURTURE_SENDGRID_SANDBOX"),
            clock=clock,
        )

    def send_many(self, messages: Sequence[EmailMessage]) -> list[SendResult | ChannelError]:
        """One POST /v3/mail/send per group of messages alike in all that is request-wide,
        each message a personalization whose substitutions carry its own bodies.

        A 2xx answers every message of its request. A 400 or 413 means SendGrid took none of
        the request, so its messages go again one by one and only a bad one fails; any other
        error is every message's (429/503 TRANSIENT, no answer in time UNKNOWN, never resent).
        """
        tags = _Tags.new()
        answers: dict[int, SendResult | ChannelError] = {}
        for indices in _requests(messages, tags):
            batch = [messages[index] for index in indices]
            answers.update(zip(indices, self._send_request(batch, tags), strict=True))
        return [answers[index] for index in range(len(messages))]

    def _send_request(
        self, batch: Sequence[EmailMessage], tags: _Tags
    ) -> list[SendResult | ChannelError]:
        """The answers for one request's messages; an unexpected error answers them UNKNOWN
        (the request may have gone out), so that it strands no other request."""
        try:
            if len(batch) == 1:
                return [self._send_alone(batch[0])]
            return self._send_shared(batch, tags)
        except Exception as error:  # noqa: BLE001 - a bug on one request strands no other
            log.exception("sendgrid: a request for %d messages failed", len(batch))
            unknown = ChannelError(f"sendgrid: {type(error).__name__}: {error}", ErrorKind.UNKNOWN)
            return [unknown] * len(batch)

    def _send_alone(self, message: EmailMessage) -> SendResult | ChannelError:
        """The message in a request of its own, the one `send` has always made."""
        try:
            return self._post(self.request_body(message))
        except ChannelError as error:
            return error

    def _send_shared(
        self, batch: Sequence[EmailMessage], tags: _Tags
    ) -> list[SendResult | ChannelError]:
        """One request for the batch: its answer is every message's, unless it refused the
        request as a whole, when each message goes again alone."""
        try:
            result = self._post(self.shared_body(batch, tags))
        except ChannelError as error:
            if error.status in _REFUSED_WHOLE:
                return [self._send_alone(message) for message in batch]
            return [error] * len(batch)
        return [result] * len(batch)

    def _post(self, body: dict[str, Any]) -> SendResult:
        """POST /v3/mail/send; 202 (200 in sandbox mode) carries the id in X-Message-Id.

        At most once: only a failure that proves SendGrid did not take the request is
        TRANSIENT; one after the request went out whole (no answer in time, connection reset
        or closed while waiting) is UNKNOWN, and is never resent.
        """
        # the optional provider SDK (extra `providers`) loads only when this adapter is used
        from python_http_client.exceptions import HTTPError

        try:
            response = self._api.send(body)
        except HTTPError as err:
            raise self._http_error(err) from err
        except urllib.error.URLError as err:
            # urllib wraps in URLError only what fails before the request is written whole
            # (DNS, connecting, TLS, sending): SendGrid cannot have taken the message.
            reason = err.reason
            kind = (
                ErrorKind.CONFIGURATION
                if isinstance(reason, ssl.SSLCertVerificationError)
                else ErrorKind.TRANSIENT
            )
            raise ChannelError(f"sendgrid: {reason}", kind) from err
        except (http.client.HTTPException, OSError) as err:
            # Raised waiting for or reading the answer: the request went out, SendGrid may
            # have taken it.
            reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            raise ChannelError(f"sendgrid: outcome unknown: {reason}", ErrorKind.UNKNOWN) from err
        return SendResult(self.name, response.headers.get("X-Message-Id"), ACCEPTED)

    def request_body(self, message: EmailMessage) -> dict[str, Any]:
        """The mail send JSON for one message alone: its parts at the top level."""
        return self._request_wide(message) | {
            "personalizations": [{"to": [_address(message.to_email, message.to_name)]}],
            "subject": message.subject,
            "content": _content(message.text, message.html),
            "headers": email_headers(message),
            "custom_args": _custom_args(message),
        }

    def shared_body(self, batch: Sequence[EmailMessage], tags: _Tags) -> dict[str, Any]:
        """The mail send JSON for messages alike in all that is request-wide: the content is
        substitution tags, each personalization fills them with its message's own bodies."""
        first = batch[0]
        return self._request_wide(first) | {
            "personalizations": [_personalization(message, tags) for message in batch],
            "content": _content(first.text and tags.text, first.html and tags.html),
        }

    def _request_wide(self, message: EmailMessage) -> dict[str, Any]:
        """What one request says for all its messages: sender, reply-to, categories, sandbox."""
        body: dict[str, Any] = {"from": _address(message.from_email, message.from_name)}
        if message.categories:
            body["categories"] = list(message.categories)
        if message.reply_to:
            name, addr = parseaddr(message.reply_to)
            body["reply_to"] = _address(addr or message.reply_to, name)
        if self.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    def _http_error(self, err: Any) -> ChannelError:
        """Map a python-http-client error by status, quoting SendGrid's errors[] in the message."""
        status = int(err.status_code)
        message = f"sendgrid {status}: {_describe(err.body)}"
        retry_after = None
        if status in (401, 403, 404):
            kind = ErrorKind.CONFIGURATION  # bad key, unverified sender, or a wrong host
        elif status == 429:
            kind = ErrorKind.TRANSIENT
            retry_after = self._retry_after(err.headers)
        else:
            kind = status_kind(status)
        return ChannelError(message, kind, status=status, retry_after=retry_after)

    def _retry_after(self, headers: Any) -> float | None:
        """Seconds until X-RateLimit-Reset (epoch seconds), else Retry-After, else unknown."""
        if headers is None:
            return None
        now = self._clock.now()
        reset = headers.get("X-RateLimit-Reset")
        if reset and reset.strip().isdigit():
            return max(0.0, int(reset) - now.timestamp())
        retry = (headers.get("Retry-After") or "").strip()
        if retry.isdigit():
            return float(retry)
        if retry:
            try:
                return max(0.0, (parsedate_to_datetime(retry) - now).total_seconds())
            except (TypeError, ValueError):
                return None
        return None


@dataclass(frozen=True)
class _Tags:
    """The substitution tags a shared request's content is made of: new for every batch, so
    no message's text can contain them (SendGrid also substitutes in values and subjects)."""

    text: str
    html: str

    @classmethod
    def new(cls) -> _Tags:
        """Fresh tags of letters, digits and hyphens: nothing HTML escaping would change."""
        token = secrets.token_hex(8)
        return cls(f"-text{token}-", f"-html{token}-")


@dataclass
class _Request:
    """The messages (by index) one request carries, with what limits how many more it takes:
    its recipients (an address may appear once) and the bytes of its substitutions."""

    indices: list[int] = field(default_factory=list)
    recipients: set[str] = field(default_factory=set)
    substitution_bytes: int = 0

    def takes(self, recipient: str, size: int) -> bool:
        """Whether a message for this recipient, with substitutions of this size, can join."""
        return (
            len(self.indices) < MAX_PERSONALIZATIONS
            and recipient not in self.recipients
            and self.substitution_bytes + size <= MAX_REQUEST_SUBSTITUTION_BYTES
        )

    def add(self, index: int, recipient: str, size: int) -> None:
        self.indices.append(index)
        self.recipients.add(recipient)
        self.substitution_bytes += size


def _requests(messages: Sequence[EmailMessage], tags: _Tags) -> list[list[int]]:
    """The messages each request carries, in order of their first message: alike ones share
    a request; one that cannot be a personalization goes alone."""
    requests: list[_Request] = []
    shared: dict[tuple[object, ...], list[_Request]] = {}
    for index, message in enumerate(messages):
        size = _shared_size(message, tags)
        if size is None:
            requests.append(_Request([index]))
            continue
        recipient = message.to_email.lower()
        alike = shared.setdefault(_request_key(message), [])
        request = next((r for r in alike if r.takes(recipient, size)), None)
        if request is None:
            request = _Request()
            requests.append(request)
            alike.append(request)
        request.add(index, recipient, size)
    return [request.indices for request in requests]


def _request_key(message: EmailMessage) -> tuple[object, ...]:
    """What `send` puts at the top level of a request: messages that differ in it cannot
    share one (the content parts present too, since the content is request-wide)."""
    return (
        message.from_email,
        message.from_name,
        message.reply_to,
        message.categories,
        bool(message.text),
        bool(message.html),
    )


def _shared_size(message: EmailMessage, tags: _Tags) -> int | None:
    """The bytes of the message's substitutions, or None when it cannot be one personalization
    of many: no body, bodies over the limit, or invalid headers (`send`'s refusal answers it).

    Counted as sent, in the SDK's JSON (non-ASCII escaped): no fewer bytes than any other
    reading of SendGrid's "total collective size".
    """
    if not (message.text or message.html):
        return None
    try:
        email_headers(message)
    except ChannelError:
        return None
    size = len(json.dumps(_substitutions(message, tags)).encode())
    return size if size <= MAX_SUBSTITUTION_BYTES else None


def _substitutions(message: EmailMessage, tags: _Tags) -> dict[str, str]:
    """The message's bodies as the values of the tags that stand for them."""
    bodies = ((tags.text, message.text), (tags.html, message.html))
    return {tag: value for tag, value in bodies if value}


def _personalization(message: EmailMessage, tags: _Tags) -> dict[str, Any]:
    """The message as one personalization: all that `send` puts at the top level for it alone."""
    return {
        "to": [_address(message.to_email, message.to_name)],
        "subject": message.subject,
        "headers": email_headers(message),
        "custom_args": _custom_args(message),
        "substitutions": _substitutions(message, tags),
    }


def _content(text: str, html: str) -> list[dict[str, str]]:
    """The content parts present, text/plain before text/html as SendGrid requires."""
    parts = (("text/plain", text), ("text/html", html))
    return [{"type": kind, "value": value} for kind, value in parts if value]


def _custom_args(message: EmailMessage) -> dict[str, str]:
    """The delivery id, which comes back on every webhook event for the message."""
    return {"delivery_id": message.delivery_id}


def _address(email: str, name: str) -> dict[str, str]:
    """SendGrid's {email, name} object; an empty name is left out rather than sent blank."""
    return {"email": email, "name": name} if name else {"email": email}


def _describe(body: bytes | str | None) -> str:
    """SendGrid's `errors[].field: message` list, or the raw body when it is not that shape."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        errors = json.loads(text)["errors"]
        parts = [
            f"{e['field']}: {e['message']}" if e.get("field") else str(e["message"]) for e in errors
        ]
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or "(empty body)"
    return "; ".join(parts)
