"""Email through the SendGrid v3 mail send API with the official `sendgrid` SDK."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
from collections.abc import Mapping
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from channels.base import (
    ACCEPTED,
    EMAIL,
    Channel,
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

DEFAULT_HOST = "https://api.sendgrid.com"


class SendGridChannel(Channel):
    """Sends one personalization per message, with the delivery id as a custom argument."""

    name = "sendgrid"
    channel = EMAIL

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

    def send(self, message: EmailMessage) -> SendResult:
        """POST /v3/mail/send; 202 (200 in sandbox mode) carries the id in X-Message-Id.

        At most once: only a failure that proves SendGrid did not take the message is
        TRANSIENT; one after the request went out whole (no answer in time, connection reset
        or closed while waiting) is UNKNOWN, and is never resent.
        """
        # the optional provider SDK (extra `providers`) loads only when this adapter is used
        from python_http_client.exceptions import HTTPError

        body = self.request_body(message)
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
        """The mail send JSON: text/plain before text/html, as SendGrid requires."""
        content = [
            {"type": kind, "value": value}
            for kind, value in (("text/plain", message.text), ("text/html", message.html))
            if value
        ]
        body: dict[str, Any] = {
            "from": _address(message.from_email, message.from_name),
            "personalizations": [{"to": [_address(message.to_email, message.to_name)]}],
            "subject": message.subject,
            "content": content,
            "headers": email_headers(message),
            "custom_args": {"delivery_id": message.delivery_id},
        }
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
