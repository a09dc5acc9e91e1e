"""Email through any SMTP relay with smtplib: the same MIME message the outbox writes."""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable, Mapping, Sequence
from email.message import Message
from typing import TYPE_CHECKING

from channels.base import (
    ACCEPTED,
    EMAIL,
    BatchChannel,
    EmailMessage,
    SendResult,
    build_mime,
    env_flag,
    require_env,
    smtputf8_address,
)
from engine.clock import Clock, SystemClock
from engine.errors import ChannelError, ConfigurationError, ErrorKind

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)


class SmtpChannel(BatchChannel):
    """One SMTP session per batch of messages (connect, STARTTLS and login once); each call
    opens its own, so worker threads never share a session."""

    name = "smtp"
    channel = EMAIL
    smtputf8 = True  # where the relay offers it; a message that needs it fails alone where not

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

    def send_many(self, messages: Sequence[EmailMessage]) -> list[SendResult | ChannelError]:
        """Relay the messages over one session, each answered on its own terms.

        At most once, per message: the relay takes responsibility only with its reply to the
        end of DATA, so a lost connection or a time-out before the message went out is
        TRANSIENT, and one after it, with no reply, is UNKNOWN (never resent). A refusal
        leaves the session usable for the next message (smtplib sends RSET); a lost session
        is reopened for the messages after it, and if that fails they answer that failure
        (they never went out). Errors after the relay accepted a message (on QUIT) are not
        failures. A message to or from an address that is not ASCII goes with SMTPUTF8, or,
        where the relay does not offer it, fails PERMANENT before anything of it is sent.
        """
        session = _Session(self._connect)
        try:
            return [self._relay(session, message) for message in messages]
        finally:
            session.close()

    def _relay(self, session: _Session, message: EmailMessage) -> SendResult | ChannelError:
        """One message's answer; an unexpected error answers it UNKNOWN and ends the session,
        whose state it leaves unknown, so that it strands no other message."""
        try:
            mime = build_mime(message, self._clock.now())
            refusal = session.relay(mime, message)
        except ChannelError as error:
            return error
        except Exception as error:  # noqa: BLE001 - a bug on one message strands no other
            log.exception("smtp: sending %s failed", message.delivery_id)
            session.close()
            return ChannelError(f"smtp: {type(error).__name__}: {error}", ErrorKind.UNKNOWN)
        if refusal is not None:
            return refusal
        return SendResult(self.name, mime["Message-ID"], ACCEPTED)

    def _connect(self) -> _Client:
        """A connected, secured and logged-in client; hung up again if any step fails."""
        smtp = _Client(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=self._ssl_context)
            if self.user:
                smtp.login(self.user, self._password)
        except Exception:
            _quit(smtp)
            raise
        return smtp


class _Session:
    """A batch's one connection: opened when first needed and again after it was lost (smtplib
    closes it on any connection failure or 421); once opening fails, the rest of the batch
    answers that failure rather than waiting on a relay that is not there."""

    def __init__(self, connect: Callable[[], _Client]) -> None:
        self._connect = connect
        self._client: _Client | None = None
        self._refused: ChannelError | None = None

    def relay(self, mime: Message, message: EmailMessage) -> ChannelError | None:
        """Send one message: None when the relay took it, else what its failure means."""
        if self._refused is not None:
            return self._refused
        if self._client is None or self._client.sock is None:
            try:
                self._client = self._connect()
            except (smtplib.SMTPException, OSError) as err:
                self._refused = _failure(err, message_sent=False)
                return self._refused
        return _send(self._client, mime, message)

    def close(self) -> None:
        """Say goodbye on the open connection, if there is one."""
        if self._client is not None:
            _quit(self._client)
            self._client = None


def _send(client: _Client, mime: Message, message: EmailMessage) -> ChannelError | None:
    """One message over an open session; smtplib answers a refusal with RSET (with a close
    on 421), so the session is usable, or visibly closed, afterwards. One that needs SMTPUTF8
    goes with it, or, where the relay does not offer it, not at all."""
    client.message_sent = False
    address = smtputf8_address(message)
    try:
        if address and not _offers_smtputf8(client):
            reason = f"smtp: the relay does not offer SMTPUTF8, which the address {address} needs"
            return ChannelError(reason, ErrorKind.PERMANENT)
        options = _SMTPUTF8_OPTIONS if address else ()
        client.sendmail(message.from_email, [message.to_email], _wire(mime), options)
    except (smtplib.SMTPException, OSError) as err:
        return _failure(err, client.message_sent)
    return None


# RFC 6531: UTF-8 in the envelope and headers; a relay offering SMTPUTF8 takes 8BITMIME too.
_SMTPUTF8_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


def _offers_smtputf8(client: _Client) -> bool:
    """Whether the relay's EHLO answer lists SMTPUTF8 (asked first, when nothing was yet)."""
    client.ehlo_or_helo_if_needed()
    return client.has_extn("smtputf8")


def _wire(mime: Message) -> bytes:
    """The message as SMTP carries it: CRLF line ends, and a body line that begins "From "
    left as written (smtplib's send_message would make it ">From ", an mbox habit)."""
    return mime.as_bytes(policy=mime.policy.clone(linesep="\r\n"))


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


def _failure(err: smtplib.SMTPException | OSError, message_sent: bool) -> ChannelError:
    """The error a failure answers its message with, keeping the failure as its cause."""
    error = _channel_error(err, message_sent)
    error.__cause__ = err
    return error


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
