"""Send windows and quiet hours are kept in the lead's own time zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time

from engine.workflow.spec import QuietHours, SendPolicy, Window
from engine.workflow.windows import deferral, next_open_slot, open_slot, zone

OFFICE = Window(days=frozenset(range(5)), start=time(9), end=time(18))
SMS_QUIET = QuietHours(start=time(21), end=time(8))


def test_inside_the_window_a_send_goes_now() -> None:
    now = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)  # Wednesday 10:00 in New York
    assert next_open_slot(now, zone("America/New_York"), OFFICE, None) == now


def test_after_hours_on_friday_a_send_waits_for_monday_morning_local_time() -> None:
    now = datetime(2026, 3, 6, 23, 30, tzinfo=UTC)  # Friday 18:30 in New York (EST)
    slot = next_open_slot(now, zone("America/New_York"), OFFICE, None)
    assert slot == datetime(2026, 3, 9, 13, 0, tzinfo=UTC)  # Monday 09:00 EDT (DST began Sun)


def test_the_same_moment_is_open_in_one_time_zone_and_closed_in_another() -> None:
    now = datetime(2026, 6, 3, 8, 0, tzinfo=UTC)  # Wednesday: 10:00 Berlin, 01:00 Los Angeles
    assert next_open_slot(now, zone("Europe/Berlin"), OFFICE, None) == now
    slot = next_open_slot(now, zone("America/Los_Angeles"), OFFICE, None)
    assert slot == datetime(2026, 6, 3, 16, 0, tzinfo=UTC)


def test_quiet_hours_wrap_midnight_and_defer_to_their_end() -> None:
    now = datetime(2026, 10, 24, 21, 30, tzinfo=UTC)  # Saturday 23:30 in London (BST)
    slot = next_open_slot(now, zone("Europe/London"), None, SMS_QUIET)
    # The clocks go back on Sunday 25 October: 08:00 local is then GMT, 08:00 UTC.
    assert slot == datetime(2026, 10, 25, 8, 0, tzinfo=UTC)


def test_a_window_opening_inside_a_dst_gap_still_yields_an_open_time() -> None:
    gap = Window(days=frozenset(range(7)), start=time(2, 30), end=time(4))
    now = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # Sunday 00:00 EST; 02:30 does not exist today
    slot = next_open_slot(now, zone("America/New_York"), gap, None)
    local = slot.astimezone(zone("America/New_York"))
    assert time(2, 30) <= local.time() < time(4) and slot > now


def test_an_unknown_time_zone_falls_back_to_the_default() -> None:
    assert zone("Mars/Olympus", default="Europe/Paris").key == "Europe/Paris"
    assert zone(None).key == "UTC"


def test_a_send_outside_its_window_says_which_window_and_when_it_opens_locally() -> None:
    friday_evening = datetime(2026, 3, 6, 23, 0, tzinfo=UTC)  # 18:00 in New York
    policy = SendPolicy(quiet_hours={"sms": SMS_QUIET})  # quiet hours of SMS: not this email
    slot = open_slot(policy, friday_evening, "America/New_York", OFFICE, "email")
    assert deferral(policy, friday_evening, slot, "America/New_York", OFFICE, "email") == (
        "deferred to 2026-03-09T13:00:00+00:00 (Mon 09:00 America/New_York): "
        "send window Mon,Tue,Wed,Thu,Fri 09:00-18:00"
    )
