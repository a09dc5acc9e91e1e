"""Channel fixtures: local SendGrid, Twilio and SMTP servers, started and stopped per test."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.channels.servers import SendGridServer, SmtpServer, TwilioServer, self_signed_certificate


@pytest.fixture
def local_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep SDK traffic off any proxy and stop Twilio edge/region settings mangling the host."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sendgrid_server(local_network: None) -> Iterator[SendGridServer]:
    """A SendGrid stand-in accepting the key SG.test-key."""
    with SendGridServer() as server:
        yield server


@pytest.fixture
def twilio_server(local_network: None) -> Iterator[TwilioServer]:
    """A Twilio stand-in for account AC000... with auth token test-auth-token."""
    with TwilioServer() as server:
        yield server


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A plain SMTP relay that accepts everything unless told otherwise."""
    with SmtpServer() as server:
        yield server


@pytest.fixture
def smtputf8_server() -> Iterator[SmtpServer]:
    """A plain SMTP relay that offers SMTPUTF8 (RFC 6531) and accepts everything."""
    with SmtpServer(smtputf8=True) as server:
        yield server


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate and key for 127.0.0.1."""
    return self_signed_certificate(tmp_path)


@pytest.fixture
def secure_smtp_server(tls_files: tuple[str, str]) -> Iterator[SmtpServer]:
    """An SMTP relay that requires STARTTLS and then AUTH as mailer / s3cret."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    with SmtpServer(tls_context=context, logins={"mailer": "s3cret"}) as server:
        yield server


@pytest.fixture
def client_tls(tls_files: tuple[str, str]) -> ssl.SSLContext:
    """A client TLS context that trusts the test certificate and nothing else."""
    return ssl.create_default_context(cafile=tls_files[0])
