"""Send-time guards: send windows and quiet hours in the lead's time zone, and frequency caps.

Guards defer, they never drop: each answers with the next moment a send is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.workflow.spec import Window


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


@dataclass(frozen=True)
class SendPolicy:
    """Rules across all sequences: quiet hours and caps per channel, retries, the send lease."""

    quiet_hours: Mapping[str, QuietHours] = field(default_factory=dict)
    caps: Mapping[str, Cap] = field(default_factory=dict)
    default_timezone: str = "UTC"
    max_attempts: int = 6
    backoff: timedelta = timedelta(seconds=30)
    lease: timedelta = timedelta(minutes=10)
    rates: Mapping[str, float] = field(default_factory=dict)  # per sender or channel, msg/s
    pace_timeout: float = 1.0  # longest a worker waits for a send slot before re-planning
    # Pace a little under each provider limit: the slot-to-provider jitter of tens of ms would
    # otherwise push some sends inside a strict one-second window (bench/egress.py).
    pace_headroom: float = 0.95

    def open_slot(
        self, now: datetime, timezone: str | None, window: Window | None, channel: str
    ) -> datetime:
        """The first moment at or after `now` that the window and quiet hours allow (UTC)."""
        tz = zone(timezone, self.default_timezone)
        return next_open_slot(now, tz, window, self.quiet_hours.get(channel))

    def retry_delay(self, attempts: int, hint: float | None) -> timedelta:
        """Exponential backoff from the attempt count, never sooner than the provider's hint."""
        delay = self.backoff * (2 ** max(attempts - 1, 0))
        return max(delay, timedelta(seconds=hint)) if hint else delay
