"""A channel that prints a one-line summary per message, for demos and watching a worker run."""

from __future__ import annotations

import sys
from typing import TextIO

from channels.base import (
    EMAIL,
    SENT,
    SMS,
    Channel,
    EmailMessage,
    SendResult,
    SmsMessage,
    check_delivery_id,
    email_headers,
)
from engine.errors import ConfigurationError

_PREVIEW = 70


class ConsoleChannel(Channel):
    """Prints who gets what; nothing leaves the machine."""

    name = "console"
    paced = False
    smtputf8 = True  # it prints the address; nothing has to carry it

    def __init__(self, channel: str = EMAIL, stream: TextIO | None = None) -> None:
        if channel not in (EMAIL, SMS):
            raise ConfigurationError(f"the console prints email or sms, not {channel!r}")
        self.channel = channel
        self._stream = stream

    def send(self, message: EmailMessage | SmsMessage) -> SendResult:
        """Print the summary; the same header checks as a real send apply to email."""
        delivery_id = check_delivery_id(message.delivery_id)
        if self.channel == EMAIL and isinstance(message, EmailMessage):
            email_headers(message)
            line = f"email {delivery_id} to {message.to_email}: {message.subject}"
        elif self.channel == SMS and isinstance(message, SmsMessage):
            body = " ".join(message.body.split())
            preview = body if len(body) <= _PREVIEW else body[: _PREVIEW - 3] + "..."
            line = f"sms {delivery_id} to {message.to_phone}: {preview}"
        else:
            raise self.wrong_message(message)
        print(line, file=self._stream or sys.stdout, flush=True)
        return SendResult(self.name, f"console-{delivery_id}", SENT)
