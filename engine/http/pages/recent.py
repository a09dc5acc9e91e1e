"""Figures over a whole history, computed at most once per interval per process: a sequence's
counts read every delivery and visit it ever made, too much to recount on every page view."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Generic, TypeVar

V = TypeVar("V")


class Recent(Generic[V]):
    """Values by key, each recomputed once it is `seconds` old; one computation at a time."""

    def __init__(self, seconds: float, now: Callable[[], datetime]) -> None:
        self.seconds = seconds
        self._now = now
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[float, datetime, V]] = {}

    def get(self, key: Hashable, compute: Callable[[], V]) -> tuple[V, datetime]:
        """The value for `key` and when it was computed: kept, or computed now."""
        with self._lock:  # a second viewer waits for the first one's figures, not a recount
            kept = self._values.get(key)
            if kept is not None and time.monotonic() - kept[0] < self.seconds:
                return kept[2], kept[1]
            value = compute()
            self._values[key] = (time.monotonic(), self._now(), value)
            return value, self._values[key][1]
