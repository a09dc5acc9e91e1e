"""Durations as marketers write them in YAML and conditions: `30m`, `12h`, `2d`, `1w`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^(\d+)([smhdw])$")
# Durations are added to and taken from dates at run time; a century keeps that well away
# from the calendar's end (year 9999) and allows anything a sequence could mean.
MAX_DURATION = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """Turn `2d` into a timedelta; raises ValueError with the accepted forms otherwise, and
    OverflowError for more than MAX_DURATION."""
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"bad duration {text!r}: use a positive whole number and a unit, e.g. 30m, 12h, 2d, 1w"
        )
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if delta > MAX_DURATION:
        raise OverflowError(f"duration {text!r} is longer than 100 years")
    return delta


def format_duration(delta: timedelta) -> str:
    """Write a timedelta back in the shortest YAML form, for messages and timelines."""
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
