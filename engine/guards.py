"""Send-time guards: send windows and quiet hours in the lead's time zone, and frequency caps.

Guards defer, they never drop: each answers with the next moment a send is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.spec import Window


@dataclass(frozen=True)
class QuietHours:
    """Local hours during which nothing is sent on a channel, e.g. 21:00-08:00 for SMS."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        """True inside the quiet span; spans may wrap midnight."""
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True)
class Cap:
    """At most `count` sends on a channel to one lead within `per`, across all sequences."""

    count: int
    per: timedelta


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
