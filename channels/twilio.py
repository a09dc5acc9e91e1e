"""SMS through the Twilio Messages API with the official `twilio` SDK."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator, Mapping
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
    status_kind,
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
        """Create the message; its SM sid is what status callbacks report on.

        At most once: only a failure that proves Twilio did not take the message (no
        connection made, 429, 500, 503) is TRANSIENT; a read time-out or a connection lost
        after the request went out is UNKNOWN and is never resent.
        """
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
        except requests.RequestException as err:
            raise _transport_error(err) from err
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
    elif code in RATE_LIMIT_CODES:
        kind = ErrorKind.TRANSIENT
    else:
        kind = status_kind(status)  # 21xxx recipient/number errors and other 4xx: permanent
    return ChannelError(
        f"twilio {status} ({code}): {text}",
        kind,
        status=status,
        code=None if code is None else str(code),
    )


def _transport_error(err: Exception) -> ChannelError:
    """What a failure without an answer means for the message.

    requests raises ConnectionError both for a connection never made and for one lost after
    the request went out ("Connection aborted"), so the urllib3 reason decides: only a
    connection that was never made (refused, DNS, connect time-out) proves nothing was sent.
    """
    # the optional provider SDK's requests and urllib3 load only when this adapter is used
    import requests
    from urllib3.exceptions import ConnectTimeoutError

    causes = list(_causes(err))
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes):
        return ChannelError(f"twilio: {err}", ErrorKind.CONFIGURATION)  # refused at handshake
    if isinstance(err, requests.ConnectTimeout) or any(
        isinstance(e, ConnectTimeoutError) for e in causes  # NewConnectionError is one too
    ):
        return ChannelError(f"twilio: {err}", ErrorKind.TRANSIENT)
    not_made = (
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidHeader,
        requests.exceptions.URLRequired,
    )
    if isinstance(err, not_made):  # refused before any connection: a bad base URL or header
        return ChannelError(f"twilio: {err}", ErrorKind.CONFIGURATION)
    return ChannelError(f"twilio: outcome unknown: {err}", ErrorKind.UNKNOWN)


def _causes(err: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: urllib3 reasons, exception arguments, causes, contexts."""
    seen: set[int] = set()
    pending = [err]
    while pending and len(seen) < 20:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [getattr(current, "reason", None), current.__cause__, current.__context__]
        wrapped += list(current.args)
        pending += [e for e in wrapped if isinstance(e, BaseException)]
