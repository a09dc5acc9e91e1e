"""Sends to international contact data: mailboxes a channel can carry, fixed lines, zones."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from channels.outbox import OutboxChannel
from engine.clock import FrozenClock
from engine.funnel.service import track
from engine.workflow.runtime import Runtime
from engine.workflow.spec import QuietHours, SendPolicy
from tests.engine.delivery.test_sending import Sender


def _sent(sender: Sender, clock: FrozenClock, channel: str) -> list[tuple[str, str | None]]:
    """Run the welcome sequence's first days; (status, detail) of its sends on `channel`."""
    for days in (0, 2, 3):
        clock.advance(timedelta(days=days))
        sender.due()
    return [(d.status, d.detail) for d in sender.deliveries() if d.channel == channel]


def test_an_address_on_an_internationalised_domain_is_sent_in_its_ascii_form(
    sessions: sessionmaker[Session], rt: Runtime, tmp_path: Path
) -> None:
    sender = Sender(sessions, rt, tmp_path, SendPolicy())
    with sessions.begin() as s:
        lead = {"email": "Soren.B@Blåbær.dk", "first_name": "Søren", "last_name": "Bækgaard"}
        track(s, rt, lead, "form_submitted")
    assert sender.due() == ["sent"]
    (delivery,) = sender.deliveries()
    raw = (sender.outbox / "email" / f"{delivery.id}.eml").read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Søren Bækgaard", "Soren.B@xn--blbr-roah.dk")


class _NoSmtputf8(OutboxChannel):
    """An email channel that cannot carry a mailbox name outside ASCII, as SendGrid's."""

    smtputf8 = False


def test_a_mailbox_that_is_not_ascii_goes_out_where_the_channel_carries_smtputf8(
    sessions: sessionmaker[Session], rt: Runtime, tmp_path: Path
) -> None:
    sender = Sender(sessions, rt, tmp_path, SendPolicy())
    with sessions.begin() as s:
        track(s, rt, {"email": "дмитрий@сталь.рф", "first_name": "Дмитрий"}, "form_submitted")
    assert sender.due() == ["sent"]
    (delivery,) = sender.deliveries()
    raw = (sender.outbox / "email" / f"{delivery.id}.eml").read_text("utf-8")  # SMTPUTF8
    message = email.message_from_string(raw, policy=email.policy.default)
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Дмитрий", "дмитрий@сталь.рф")


def test_a_mailbox_that_is_not_ascii_is_skipped_where_the_channel_cannot_carry_it(
    sessions: sessionmaker[Session], rt: Runtime, tmp_path: Path
) -> None:
    sender = Sender(sessions, rt, tmp_path, SendPolicy())
    sender.channels["email"] = _NoSmtputf8(tmp_path, "email", rt.clock)
    with sessions.begin() as s:
        track(s, rt, {"email": "дмитрий@сталь.рф"}, "form_submitted")
    sender.due()
    assert [(d.status, d.detail) for d in sender.deliveries()] == [
        (
            "skipped",
            "дмитрий@сталь.рф: a mailbox name in other letters than ASCII needs SMTPUTF8, "
            "which the email channel does not carry",
        )
    ]


def test_sms_skips_a_fixed_line_saying_so_and_reaches_a_mobile(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    sender = Sender(sessions, rt, tmp_path, SendPolicy())
    with sessions.begin() as s:
        office = {"email": "anna@firma.de", "phone": "+49 30 1234567", "sms_consent": True}
        mobile = {"email": "jan@firma.de", "phone": "+49 151 23456789", "sms_consent": True}
        track(s, rt, office, "form_submitted")
        track(s, rt, mobile, "form_submitted")
    assert sorted(_sent(sender, clock, "sms")) == [
        ("sent", None),
        ("skipped", "+49301234567 is a fixed line: SMS cannot reach it"),
    ]


def test_quiet_hours_follow_the_phone_numbers_zone_when_the_lead_has_none(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    # The SMS step falls due on Saturday 09:00 UTC: open in UTC, 10:00 and quiet in Warsaw.
    policy = SendPolicy(quiet_hours={"sms": QuietHours(time(9, 30), time(12))})
    sender = Sender(sessions, rt, tmp_path, policy)
    with sessions.begin() as s:
        zofia = {"email": "zofia@firma.pl", "phone": "512 345 678", "country": "PL"}
        track(s, rt, {**zofia, "sms_consent": True}, "form_submitted")
    _sent(sender, clock, "sms")
    (sms,) = [d for d in sender.deliveries() if d.channel == "sms"]
    assert (sms.status, sms.due_at) == ("planned", datetime(2026, 3, 7, 11, 0, tzinfo=UTC))
    assert "(Sat 12:00 Europe/Warsaw): quiet hours 09:30-12:00" in (sms.detail or "")
