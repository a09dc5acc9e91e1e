"""The outbox and console channels: what a local run produces with no provider configured."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage as Parsed
from pathlib import Path

import pytest

from channels.base import EmailMessage, SmsMessage
from channels.console import ConsoleChannel
from channels.outbox import OutboxChannel
from engine.clock import FrozenClock
from engine.errors import ChannelError, ErrorKind

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

EMAIL = EmailMessage(
    delivery_id="0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e",
    to_email="zoe@example.com",
    to_name="Zoë Müller",
    from_email="hello@acme.test",
    from_name="Acme Analytics",
    subject="Grüße from Acme",
    html="<p>Hallo Zoë</p>",
    text="Hallo Zoë",
    reply_to="sales@acme.test",
    unsubscribe_url="https://acme.test/u/token123",
    headers={"X-Campaign": "spring"},
)
SMS = SmsMessage(
    delivery_id="sms-1", to_phone="+14155550100", from_phone="+14155550199", body="Hi Zoë"
)


def test_an_email_is_written_as_an_eml_that_parses_back(tmp_path: Path) -> None:
    result = OutboxChannel(tmp_path, clock=FrozenClock(NOW)).send(EMAIL)

    path = tmp_path / "email" / f"{EMAIL.delivery_id}.eml"
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, Parsed)
    assert message["To"] == "Zoë Müller <zoe@example.com>"
    assert message["From"] == "Acme Analytics <hello@acme.test>"
    assert message["Reply-To"] == "sales@acme.test"
    assert message["Subject"] == "Grüße from Acme"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"] == f"<{EMAIL.delivery_id}@acme.test>"
    assert message["List-Unsubscribe"] == "<https://acme.test/u/token123>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Nurture-Delivery-Id"] == EMAIL.delivery_id
    assert message["X-Campaign"] == "spring"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and plain.get_content().strip() == "Hallo Zoë"
    assert html is not None and html.get_content().strip() == "<p>Hallo Zoë</p>"
    assert (result.provider, result.provider_message_id, result.status) == (
        "outbox",
        f"outbox-{EMAIL.delivery_id}",
        "sent",
    )


def test_non_ascii_bodies_are_7bit_safe(tmp_path: Path) -> None:
    OutboxChannel(tmp_path).send(EMAIL)

    raw = (tmp_path / "email" / f"{EMAIL.delivery_id}.eml").read_bytes()
    assert raw.isascii()


# What the outbox wrote for EMAIL before it carried addresses that need SMTPUTF8.
ASCII_EML = b"""\
Content-Type: multipart/alternative;
 boundary="=_0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e"
MIME-Version: 1.0
From: Acme Analytics <hello@acme.test>
To: =?utf-8?b?Wm/DqyBNw7xsbGVy?= <zoe@example.com>
Reply-To: sales@acme.test
Subject: =?utf-8?b?R3LDvMOfZSBmcm9tIEFjbWU=?=
Date: Mon, 02 Mar 2026 09:00:00 +0000
Message-ID: <0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e@acme.test>
X-Campaign: spring
List-Unsubscribe: <https://acme.test/u/token123>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
X-Nurture-Delivery-Id: 0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e

--=_0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e
Content-Type: text/plain; charset="utf-8"
MIME-Version: 1.0
Content-Transfer-Encoding: quoted-printable

Hallo Zo=C3=AB
--=_0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e
Content-Type: text/html; charset="utf-8"
MIME-Version: 1.0
Content-Transfer-Encoding: quoted-printable

<p>Hallo Zo=C3=AB</p>
--=_0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e--
"""


def test_a_message_to_an_ascii_address_is_written_byte_for_byte_as_before(
    tmp_path: Path,
) -> None:
    OutboxChannel(tmp_path, clock=FrozenClock(NOW)).send(EMAIL)

    assert (tmp_path / "email" / f"{EMAIL.delivery_id}.eml").read_bytes() == ASCII_EML


@pytest.mark.parametrize("address", ["иван@пример.рф", "Jens.Hansen@blåbær.dk"])
def test_a_message_to_an_address_only_smtputf8_carries_is_written_in_utf8_as_addressed(
    tmp_path: Path, address: str
) -> None:
    OutboxChannel(tmp_path, clock=FrozenClock(NOW)).send(replace(EMAIL, to_email=address))

    raw = (tmp_path / "email" / f"{EMAIL.delivery_id}.eml").read_bytes()
    assert f"\nTo: Zoë Müller <{address}>\n".encode() in raw  # readable in the file itself
    message = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert isinstance(message, Parsed)
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Zoë Müller", address)
    assert message["Subject"] == "Grüße from Acme"
    plain = message.get_body(("plain",))
    assert plain is not None and plain.get_content().strip() == "Hallo Zoë"


def test_an_sms_is_written_as_text_with_its_segments(tmp_path: Path) -> None:
    result = OutboxChannel(tmp_path, channel="sms", clock=FrozenClock(NOW)).send(SMS)

    text = (tmp_path / "sms" / "sms-1.txt").read_text(encoding="utf-8")
    assert text.startswith("To: +14155550100\nFrom: +14155550199\n")
    assert "Segments: 1 (UCS-2)" in text  # ë is not in the GSM-7 alphabet
    assert text.endswith("\n\nHi Zoë\n")
    assert result.provider_message_id == "outbox-sms-1"


def test_writing_leaves_no_temporary_files_behind(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path)
    outbox.send(EMAIL)
    outbox.send(EMAIL)

    assert [p.name for p in (tmp_path / "email").iterdir()] == [f"{EMAIL.delivery_id}.eml"]


def test_the_directory_comes_from_nurture_outbox_dir(tmp_path: Path) -> None:
    outbox = OutboxChannel.from_env({"NURTURE_OUTBOX_DIR": str(tmp_path / "box")})

    assert outbox.directory == tmp_path / "box"
    assert OutboxChannel.from_env({}).directory == Path("outbox")


@pytest.mark.parametrize("delivery_id", ["../escape", "a/b", "", ".hidden", "a b"])
def test_a_delivery_id_that_is_not_a_plain_file_name_is_refused(
    tmp_path: Path, delivery_id: str
) -> None:
    with pytest.raises(ChannelError) as caught:
        OutboxChannel(tmp_path).send(replace(EMAIL, delivery_id=delivery_id))

    assert caught.value.kind == ErrorKind.PERMANENT
    assert not (tmp_path / "email").exists()


@pytest.mark.parametrize("address", ["", "@", "a b@c.test", "a@b@c", "a,b@c.test"])
def test_an_unusable_address_is_permanent(tmp_path: Path, address: str) -> None:
    with pytest.raises(ChannelError) as caught:
        OutboxChannel(tmp_path).send(replace(EMAIL, to_email=address))

    assert caught.value.kind == ErrorKind.PERMANENT


def test_an_unwritable_outbox_is_transient(tmp_path: Path) -> None:
    (tmp_path / "email").write_text("a file where the directory should be")

    with pytest.raises(ChannelError) as caught:
        OutboxChannel(tmp_path).send(EMAIL)

    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_message_of_the_other_channel_is_a_wiring_mistake(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="email outbox cannot send SmsMessage"):
        OutboxChannel(tmp_path).send(SMS)


def test_the_console_prints_one_line_per_message(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleChannel().send(EMAIL)
    result = ConsoleChannel("sms").send(SMS)

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"email {EMAIL.delivery_id} to zoe@example.com: Grüße from Acme",
        "sms sms-1 to +14155550100: Hi Zoë",
    ]
    assert result.provider_message_id == "console-sms-1"
