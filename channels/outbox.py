"""The default channel: every message becomes a file, so a local run needs no provider at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from channels.base import (
    EMAIL,
    SENT,
    SMS,
    Channel,
    EmailMessage,
    SendResult,
    SmsMessage,
    build_mime,
    check_delivery_id,
)
from channels.sms import segments
from engine.clock import Clock, SystemClock
from engine.errors import ChannelError, ConfigurationError, ErrorKind


class OutboxChannel(Channel):
    """Writes email as `<dir>/email/<delivery_id>.eml` and SMS as `<dir>/sms/<delivery_id>.txt`."""

    name = "outbox"
    paced = False
    smtputf8 = True  # a file carries any address; the message is UTF-8 where one needs it

    def __init__(self, directory: Path | str, channel: str = EMAIL, clock: Clock | None = None):
        if channel not in (EMAIL, SMS):
            raise ConfigurationError(f"the outbox writes email or sms, not {channel!r}")
        self.channel = channel
        self.directory = Path(directory)
        self._clock = clock or SystemClock()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], channel: str = EMAIL, clock: Clock | None = None
    ) -> OutboxChannel:
        """NURTURE_OUTBOX_DIR, ./outbox when unset."""
        return cls(environ.get("NURTURE_OUTBOX_DIR") or "outbox", channel, clock)

    def send(self, message: EmailMessage | SmsMessage) -> SendResult:
        """Write the message file atomically; the file name is the delivery id."""
        delivery_id = check_delivery_id(message.delivery_id)
        if self.channel == EMAIL and isinstance(message, EmailMessage):
            content = build_mime(message, self._clock.now()).as_bytes()
            path = self.directory / EMAIL / f"{delivery_id}.eml"
        elif self.channel == SMS and isinstance(message, SmsMessage):
            content = self._sms_text(message).encode()
            path = self.directory / SMS / f"{delivery_id}.txt"
        else:
            raise self.wrong_message(message)
        try:
            _write_atomically(path, content)
        except OSError as err:
            reason = f"outbox: cannot write {path}: {err}"
            raise ChannelError(reason, ErrorKind.TRANSIENT) from err
        return SendResult(self.name, f"outbox-{delivery_id}", SENT)

    def _sms_text(self, message: SmsMessage) -> str:
        """To/From/Body as a person reads them, with what the body costs in segments."""
        count, encoding = segments(message.body)
        lines = [
            f"To: {message.to_phone}",
            f"From: {message.from_phone}",
            f"Delivery-Id: {message.delivery_id}",
            f"Date: {self._clock.now().isoformat()}",
            f"Segments: {count} ({encoding})",
        ]
        if message.status_callback:
            lines.append(f"Status-Callback: {message.status_callback}")
        return "\n".join(lines) + "\n\n" + message.body + "\n"


def _write_atomically(path: Path, content: bytes) -> None:
    """Write to a temporary file beside the target and rename it, so readers never see half.

    No fsync: the outbox is for development and demos, where a thousand messages a minute
    matter more than surviving a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
