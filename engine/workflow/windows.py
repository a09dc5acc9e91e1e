"""When a send may go: send windows and quiet hours in the lead's time zone.

These rules defer, they never drop: each answers with the next moment a send is allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.workflow.spec import QuietHours, SendPolicy, Window


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The lead's time zone, or the default when it is missing or unknown."""
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _allowed(local: datetime, window: Window | None, quiet: QuietHours | None) -> bool:
    moment = local.timetz().replace(tzinfo=None)
    if quiet is not None and quiet.contains(moment):
        return False
    if window is None:
        return True
    return local.weekday() in window.days and window.start <= moment < window.end


def next_open_slot(
    now: datetime, tz: ZoneInfo, window: Window | None, quiet: QuietHours | None
) -> datetime:
    """`now` when sending is allowed, else the earliest later moment that is (UTC).

    Candidates are the openings of the window and the ends of quiet hours on the next eight
    local days; each is checked again in local time, so DST shifts cannot slip a send into
    a closed hour.
    """
    local_now = now.astimezone(tz)
    if _allowed(local_now, window, quiet):
        return now
    openings = [t for t in (window.start if window else None, quiet.end if quiet else None) if t]
    candidates = []
    for offset in range(9):
        day = (local_now + timedelta(days=offset)).date()
        for opening in openings:
            local = datetime.combine(day, opening, tzinfo=tz)
            local = local.astimezone(UTC).astimezone(tz)  # normalise times that DST skipped
            if local > local_now and _allowed(local, window, quiet):
                candidates.append(local.astimezone(UTC))
    if not candidates:
        raise ValueError("the send window and quiet hours leave no time to send in a week")
    return min(candidates)


def open_slot(
    policy: SendPolicy, now: datetime, timezone: str | None, window: Window | None, channel: str
) -> datetime:
    """The first moment at or after `now` that the window and the channel's quiet hours allow."""
    tz = zone(timezone, policy.default_timezone)
    return next_open_slot(now, tz, window, policy.quiet_hours.get(channel))
