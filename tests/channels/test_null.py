"""The null channel: what a backtest sends through, so that no message leaves the process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from channels.base import EMAIL, SMS, EmailMessage, SmsMessage
from channels.null import NullChannel
from engine.errors import ChannelError

MESSAGE = EmailMessage(
    delivery_id="0b6f3c1e-7a52-4c1d-9d0e-3f1a2b4c5d6e",
    to_email="zoe@example.com",
    to_name="Zoe",
    from_email="hello@acme.test",
    from_name="Acme",
    subject="Hello",
    html="<p>Hello</p>",
    text="Hello",
)
TEXT = SmsMessage(delivery_id="sms-1", to_phone="+14155550100", from_phone="+1415555", body="Hi")


def test_a_message_is_answered_as_sent_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert NullChannel(EMAIL).send(MESSAGE).status == "sent"
    assert NullChannel(SMS).send(TEXT).provider_message_id == "null-sms-1"
    assert list(tmp_path.iterdir()) == []


def test_an_email_a_real_send_would_refuse_is_refused_too() -> None:
    with pytest.raises(ChannelError, match="line break in subject"):
        NullChannel(EMAIL).send(replace(MESSAGE, subject="Hi\r\nBcc: all@acme.test"))


def test_a_message_of_the_other_channel_is_a_wiring_mistake() -> None:
    with pytest.raises(TypeError):
        NullChannel(SMS).send(MESSAGE)
