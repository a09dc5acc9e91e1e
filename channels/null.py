"""A channel that takes every message and keeps none: backtests guard and render each send as
a real one, and nothing leaves the process, not even a file."""

from __future__ import annotations

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


class NullChannel(Channel):
    """Answers every send as done, after the same checks a real send makes."""

    name = "null"
    paced = False

    def __init__(self, channel: str = EMAIL) -> None:
        if channel not in (EMAIL, SMS):
            raise ConfigurationError(f"the null channel takes email or sms, not {channel!r}")
        self.channel = channel

    def send(self, message: EmailMessage | SmsMessage) -> SendResult:
        """Check the message as a provider would (headers of an email), then drop it."""
        delivery_id = check_delivery_id(message.delivery_id)
        if self.channel == EMAIL and isinstance(message, EmailMessage):
            email_headers(message)
        elif not (self.channel == SMS and isinstance(message, SmsMessage)):
            raise self.wrong_message(message)
        return SendResult(self.name, f"null-{delivery_id}", SENT)
