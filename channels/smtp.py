"""Email through any SMTP relay with smtplib: the same MIME message the outbox writes."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

from channels.base import (
    ACCEPTED,
    EMAIL,
    Channel,
    EmailMessage,
    SendResult,
    build_mime,
    env_flag,
    require_env,
)
from engine.clock import Clock, SystemClock
from engine.errors import ChannelError, ConfigurationError, ErrorKind

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class SmtpChannel(Channel):
    """One connection per message, so worker threads never share an SMTP session."""

    name = "smtp"
    channel = EMAIL

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        user: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password or ""
        self.starttls = starttls
        self.timeout = timeout
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._clock = clock or SystemClock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], clock: Clock | None = None) -> SmtpChannel:
        """NURTURE_SMTP_HOST/_PORT/_USER/_PASSWORD/_STARTTLS; port 587 with STARTTLS, else 25."""
        host = require_env(environ, "NURTURE_SMTP_HOST")
        starttls = env_flag(environ, "NURTURE_SMTP_STARTTLS")
        port_text = environ.get("NURTURE_SMTP_PORT") or ("587" if starttls else "25")
        if not port_text.isdigit():
            raise ConfigurationError(f"NURTURE_SMTP_PORT is not a port number: {port_text!r}")
        user = environ.get("NURTURE_SMTP_USER") or None
        password = require_env(environ, "NURTURE_SMTP_PASSWORD") if user else None
        return cls(
            host, int(port_text), user=user, password=password, starttls=starttls, clock=clock
        )

    def send(self, message: EmailMessage) -> SendResult:
        """Relay the message; errors after the relay accepted it (on QUIT) are not failures.

        At most once: the relay takes responsibility only with its reply to the end of DATA,
        so a lost connection or a time-out before the message went out is TRANSIENT, and
        one after it, with no reply, is UNKNOWN (never resent).
        """
        mime = build_mime(message, self._clock.now())
        smtp: _Client | None = None
        try:
            smtp = _Client(self.host, self.port, timeout=self.timeout)
            try:
                if self.starttls:
                    smtp.starttls(context=self._ssl_context)
                if self.user:
                    smtp.login(self.user, self._password)
                smtp.send_message(mime, message.from_email, [message.to_email])
            finally:
                _quit(smtp)
        except (smtplib.SMTPException, OSError) as err:
            raise _channel_error(err, smtp is not None and smtp.message_sent) from err
        return SendResult(self.name, mime["Message-ID"], ACCEPTED)


class _Client(smtplib.SMTP):
    """smtplib's client, noting when the message itself went out: DATA's payload, which alone
    ends with CRLF "." CRLF (commands are single lines). Past that, only the relay's reply
    says whether it took the message."""

    message_sent = False

    def send(self, s: ReadableBuffer | str) -> None:
        super().send(s)
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.message_sent = True


def _quit(smtp: smtplib.SMTP) -> None:
    """Say goodbye politely, or just hang up when the server is already gone."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _channel_error(err: smtplib.SMTPException | OSError, message_sent: bool) -> ChannelError:
    """What an SMTP failure means: 4xx and lost connections pass, 5xx stay, ours to fix; a
    connection lost or timed out after the message went out, with no reply, is unknown."""
    if message_sent and not isinstance(err, smtplib.SMTPResponseException):
        reason = f"{type(err).__name__}: {err}"
        return ChannelError(f"smtp: outcome unknown after DATA: {reason}", ErrorKind.UNKNOWN)
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(err.recipients.values()))
        kind = ErrorKind.TRANSIENT if 400 <= code < 500 else ErrorKind.PERMANENT
        return ChannelError(f"smtp: recipient refused: {code} {_text(reply)}", kind, status=code)
    if isinstance(err, smtplib.SMTPResponseException):
        code = err.smtp_code
        if 400 <= code < 500:
            kind = ErrorKind.TRANSIENT
        elif isinstance(err, smtplib.SMTPAuthenticationError | smtplib.SMTPSenderRefused):
            kind = ErrorKind.CONFIGURATION
        else:
            kind = ErrorKind.PERMANENT
        reason = f"{type(err).__name__}: {code} {_text(err.smtp_error)}"
        return ChannelError(f"smtp: {reason}", kind, status=code)
    if isinstance(err, smtplib.SMTPServerDisconnected):
        return ChannelError(f"smtp: {err}", ErrorKind.TRANSIENT)
    if isinstance(err, smtplib.SMTPException | ssl.SSLCertVerificationError):
        return ChannelError(f"smtp: {err}", ErrorKind.CONFIGURATION)
    return ChannelError(f"smtp: {type(err).__name__}: {err}", ErrorKind.TRANSIENT)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
