"""Channel adapters by name, built from environment variables; provider SDKs load on first use."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from channels.base import EMAIL, SMS, Channel
from channels.console import ConsoleChannel
from channels.outbox import OutboxChannel
from channels.sendgrid import SendGridChannel
from channels.smtp import SmtpChannel
from channels.twilio import TwilioChannel
from engine.clock import Clock
from engine.errors import ConfigurationError

__all__ = ["ADAPTERS", "Channel", "build_channel", "build_channels"]


def _outbox(environ: Mapping[str, str], channel: str | None, clock: Clock | None) -> Channel:
    return OutboxChannel.from_env(environ, channel or EMAIL, clock)


def _console(environ: Mapping[str, str], channel: str | None, clock: Clock | None) -> Channel:
    return ConsoleChannel(channel or EMAIL)


def _smtp(environ: Mapping[str, str], channel: str | None, clock: Clock | None) -> Channel:
    return SmtpChannel.from_env(environ, clock)


def _sendgrid(environ: Mapping[str, str], channel: str | None, clock: Clock | None) -> Channel:
    return SendGridChannel.from_env(environ, clock)


def _twilio(environ: Mapping[str, str], channel: str | None, clock: Clock | None) -> Channel:
    return TwilioChannel.from_env(environ)


ADAPTERS: dict[str, Callable[[Mapping[str, str], str | None, Clock | None], Channel]] = {
    "outbox": _outbox,
    "console": _console,
    "smtp": _smtp,
    "sendgrid": _sendgrid,
    "twilio": _twilio,
}


def build_channel(
    name: str,
    environ: Mapping[str, str],
    *,
    channel: str | None = None,
    clock: Clock | None = None,
) -> Channel:
    """The adapter called `name`; outbox and console serve `channel` (email when not given)."""
    factory = ADAPTERS.get(name.strip().lower())
    if factory is None:
        raise ConfigurationError(
            f"unknown channel adapter {name!r}; choose one of {', '.join(sorted(ADAPTERS))}"
        )
    adapter = factory(environ, channel, clock)
    if channel is not None and adapter.channel != channel:
        raise ConfigurationError(f"{name} sends {adapter.channel}, not {channel}")
    return adapter


def build_channels(environ: Mapping[str, str], *, clock: Clock | None = None) -> dict[str, Channel]:
    """Adapters by channel: NURTURE_{EMAIL,SMS}_CHANNEL, else configured providers, else outbox."""
    if environ.get("NURTURE_EMAIL_CHANNEL"):
        email = environ["NURTURE_EMAIL_CHANNEL"]
    elif environ.get("SENDGRID_API_KEY"):
        email = "sendgrid"
    elif environ.get("NURTURE_SMTP_HOST"):
        email = "smtp"
    else:
        email = "outbox"
    sms = environ.get("NURTURE_SMS_CHANNEL") or (
        "twilio" if environ.get("TWILIO_ACCOUNT_SID") else "outbox"
    )
    return {
        EMAIL: build_channel(email, environ, channel=EMAIL, clock=clock),
        SMS: build_channel(sms, environ, channel=SMS, clock=clock),
    }
