"""When a send may go: send windows and quiet hours in the lead's time zone.

These rules defer, they never drop: each answers with the next moment a send is allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.workflow.durations import format_duration
from engine.workflow.spec import Cap, QuietHours, SendPolicy, Window


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The lead's time zone, or the default when it is missing or unknown."""
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _closed(local: datetime, window: Window | None, quiet: QuietHours | None) -> str | None:
    """Why nothing may be sent at this local moment (quiet hours, then the window), or None."""
    moment = local.timetz().replace(tzinfo=None)
    if quiet is not None and quiet.contains(moment):
        return f"quiet hours {quiet.start:%H:%M}-{quiet.end:%H:%M}"
    if window is None or (local.weekday() in window.days and window.start <= moment < window.end):
        return None
    days = ",".join(DAYS[d] for d in sorted(window.days))
    return f"send window {days} {window.start:%H:%M}-{window.end:%H:%M}"


def _allowed(local: datetime, window: Window | None, quiet: QuietHours | None) -> bool:
    return _closed(local, window, quiet) is None


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


def deferral(
    policy: SendPolicy,
    now: datetime,
    slot: datetime,
    timezone: str | None,
    window: Window | None,
    channel: str,
    cap: Cap | None = None,
) -> str:
    """Why a send waits and until when, in the lead's own time: what a marketer reads on a
    delivery ("deferred to ... (Tue 08:00 Europe/Berlin): quiet hours 21:00-08:00")."""
    tz = zone(timezone, policy.default_timezone)
    if cap is not None:
        reason = f"frequency cap {cap.count} {channel} per {format_duration(cap.per)}"
    else:
        reason = _closed(now.astimezone(tz), window, policy.quiet_hours.get(channel)) or "closed"
    local = slot.astimezone(tz)
    return (
        f"deferred to {slot.isoformat()} ({DAYS[local.weekday()]} {local:%H:%M} {tz.key}): {reason}"
    )
