"""SMS through the Twilio Messages API with the official `twilio` SDK."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from channels.base import (
    ACCEPTED,
    QUEUED,
    SMS,
    Channel,
    SendResult,
    SmsMessage,
    require_env,
    sdk_missing,
)
from engine.errors import ChannelError, ConfigurationError, ErrorKind

OPTED_OUT_CODES = frozenset({21610})  # the recipient replied STOP: suppress the number
AUTH_CODES = frozenset({20003})
RATE_LIMIT_CODES = frozenset({20429})
_MESSAGING_SERVICE = re.compile(r"MG[0-9a-fA-F]{32}")


class TwilioChannel(Channel):
    """Sends from a number, or from a Messaging Service when `from_phone` is its MG sid."""

    name = "twilio"
    channel = SMS

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        try:
            # the optional provider SDK (extra `providers`) loads only when this adapter is used
            from twilio.http.http_client import TwilioHttpClient
            from twilio.rest import Client
        except ImportError as err:
            raise sdk_missing("twilio") from err
        self._http = TwilioHttpClient(timeout=timeout)
        self._client = Client(
            account_sid,
            auth_token,
            http_client=self._http,
            environment=None if environment is None else dict(environment),
        )
        if base_url:
            if self._client.edge or self._client.region:
                raise ConfigurationError(
                    "TWILIO_EDGE/TWILIO_REGION rewrite the host of NURTURE_TWILIO_BASE_URL; "
                    "unset them when redirecting the API"
                )
            self._client.api.base_url = base_url.rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TwilioChannel:
        """TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (required), NURTURE_TWILIO_BASE_URL."""
        return cls(
            require_env(environ, "TWILIO_ACCOUNT_SID"),
            require_env(environ, "TWILIO_AUTH_TOKEN"),
            base_url=environ.get("NURTURE_TWILIO_BASE_URL") or None,
            environment=environ,
        )

    def send(self, message: SmsMessage) -> SendResult:
        """Create the message; its SM sid is what status callbacks report on."""
        # the optional provider SDK (extra `providers`, with its requests) loads only when used
        import requests
        from twilio.base.exceptions import TwilioRestException, TwilioServiceException

        sender = (
            {"messaging_service_sid": message.from_phone}
            if _MESSAGING_SERVICE.fullmatch(message.from_phone)
            else {"from_": message.from_phone}
        )
        extra = {"status_callback": message.status_callback} if message.status_callback else {}
        try:
            created = self._client.messages.create(
                to=message.to_phone, body=message.body, **sender, **extra
            )
        except (TwilioRestException, TwilioServiceException) as err:
            raise _rest_error(err) from err
        except (requests.ConnectionError, requests.Timeout) as err:
            raise ChannelError(f"twilio: {err}", ErrorKind.TRANSIENT) from err
        except requests.RequestException as err:
            raise ChannelError(f"twilio: {err}", ErrorKind.CONFIGURATION) from err
        status = ACCEPTED if created.status == "accepted" else QUEUED
        return SendResult(self.name, created.sid, status)

    def close(self) -> None:
        """Close the pooled HTTP session the SDK keeps between sends."""
        if self._http.session is not None:
            self._http.session.close()


def _rest_error(err: Any) -> ChannelError:
    """Classify by Twilio error code family first, then by HTTP status.

    The SDK does not expose response headers on its exceptions, so a 429 has no retry hint.
    """
    status = int(err.status)
    code = int(err.code) if err.code is not None else None
    text = getattr(err, "msg", None) or getattr(err, "detail", None) or getattr(err, "title", "")
    if code in OPTED_OUT_CODES:
        kind = ErrorKind.OPTED_OUT
    elif code in AUTH_CODES or status in (401, 403):
        kind = ErrorKind.CONFIGURATION
    elif code in RATE_LIMIT_CODES or status == 429 or status >= 500:
        kind = ErrorKind.TRANSIENT
    else:
        kind = ErrorKind.PERMANENT  # 21xxx recipient/number errors and other 4xx
    return ChannelError(
        f"twilio {status} ({code}): {text}",
        kind,
        status=status,
        code=None if code is None else str(code),
    )
