"""Pacing: each sender gets its provider's rate, enforced across every worker that sends for it.

Providers throttle per sender, so a burst of due messages is spread over time here rather than
thrown at the provider to collect 429s. Both pacers are "next free slot" schedulers (GCRA with
no burst): per key they keep the theoretical arrival time (TAT) of the next message; a caller
reserves slot = max(now, TAT), moves TAT to slot + 1/rate and sleeps until its slot. Concurrent
callers therefore get distinct slots exactly 1/rate apart. A caller whose slot lies beyond its
timeout reserves nothing and gets `PacingTimeout` so it can re-plan the delivery instead of
holding a worker thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from engine.errors import ConfigurationError, NurtureError

if TYPE_CHECKING:
    from redis import Redis

# Defaults per channel when `rates` names neither the sender nor the channel (messages/second).
LONG_CODE_RATE = 1.0  # Twilio: a US long code sends 1 message/s
TOLL_FREE_RATE = 3.0  # Twilio: a toll-free number sends 3 messages/s
SHORT_CODE_RATE = 100.0  # Twilio: a short code sends 100 messages/s
EMAIL_RATE = 10.0  # SendGrid mail send requests/s; plans differ, so set it in `rates`

_PRUNE_AT = 10_000  # keys a LocalPacer holds before it drops those whose slot is free anyway
_SHORT_CODE = re.compile(r"\d{5,6}")
_TOLL_FREE = re.compile(r"\+1(?:800|833|844|855|866|877|888)\d{7}")

# KEYS[1]: the TAT key. ARGV[1]: interval between slots, ARGV[2]: timeout, both microseconds.
# Returns {reserved (1|0), delay to the slot in microseconds}. Integer microseconds keep epoch
# times exact in Lua's doubles; the server's TIME makes processes with skewed clocks agree.
# The key expires when its TAT passes: a missing key and a past TAT both mean "free now".
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
local slot = math.max(now, tat)
local delay = slot - now
if delay > tonumber(ARGV[2]) then
  return {0, delay}
end
local next_tat = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, delay}
"""


class PacingTimeout(NurtureError):
    """Raised when a sender's next free slot is further away than the caller may wait."""

    def __init__(self, key: str, retry_after: float) -> None:
        self.key = key
        self.retry_after = retry_after
        super().__init__(f"{key}: next send slot in {retry_after:.3f}s")


class Pacer(Protocol):
    """Hands out send slots per key ("sms:+15005550006", "email:sendgrid") at a given rate."""

    def reserve(self, key: str, rate: float, *, timeout: float) -> float:
        """Reserve the next slot for `key` without waiting; return the seconds until it.

        A slot further than `timeout` away raises PacingTimeout and reserves nothing, so with a
        timeout of n/rate this is a rate limit that lets bursts of about n through.
        """
        ...

    def acquire(self, key: str, rate: float, *, timeout: float) -> float:
        """Block until one message for `key` may go; return the seconds waited."""
        ...


def _wait(delay: float) -> float:
    """Sleep until a reserved slot, returning the delay (acquire = reserve, then wait)."""
    if delay > 0:
        time.sleep(delay)
    return delay


def _interval(rate: float) -> float:
    """Seconds between two slots; a rate that is not positive is a configuration mistake."""
    if not rate > 0:
        raise ConfigurationError(f"send rate must be positive, got {rate!r}")
    return 1.0 / rate


class LocalPacer:
    """The in-process pacer for the embedded default: one lock, the monotonic clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve(self, key: str, rate: float, *, timeout: float) -> float:
        """Reserve the next slot for `key`; PacingTimeout past `timeout`."""
        interval = _interval(rate)
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._tat.get(key, now))
            delay = slot - now
            if delay > timeout:
                raise PacingTimeout(key, delay)
            if len(self._tat) >= _PRUNE_AT:  # keys of many clients: forget those now free
                self._tat = {k: tat for k, tat in self._tat.items() if tat > now}
            self._tat[key] = slot + interval
        return delay

    def acquire(self, key: str, rate: float, *, timeout: float) -> float:
        """Reserve the next slot for `key` and sleep until it; PacingTimeout past `timeout`."""
        return _wait(self.reserve(key, rate, timeout=timeout))


class RedisPacer:
    """The pacer shared by every process: one atomic Lua script per slot on Redis server time."""

    def __init__(self, client: Redis, *, prefix: str = "nurture:pace:") -> None:
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, key: str, rate: float, *, timeout: float) -> float:
        """Reserve the next slot for `key`; PacingTimeout past `timeout`."""
        interval_us = max(round(_interval(rate) * 1_000_000), 1)
        timeout_us = int(timeout * 1_000_000)
        reserved, delay_us = self._reserve(
            keys=[self._prefix + key], args=[interval_us, timeout_us]
        )
        delay = int(delay_us) / 1_000_000
        if not reserved:
            raise PacingTimeout(key, delay)
        return delay

    def acquire(self, key: str, rate: float, *, timeout: float) -> float:
        """Reserve the next slot for `key` and sleep until it; PacingTimeout past `timeout`."""
        return _wait(self.reserve(key, rate, timeout=timeout))


def rate_for(channel: str, sender: str, rates: Mapping[str, float]) -> float:
    """The send rate (messages/second) for one sender, so each provider limit is respected.

    In order: `rates[sender]` (e.g. {"+15005550006": 3} or {"sendgrid": 100}), then
    `rates[channel]` (e.g. {"sms": 1, "email": 50}), then the built-in defaults:
    SMS from a 5-6 digit short code 100/s, from a US toll-free number (+1 800, 833, 844, 855,
    866, 877, 888) 3/s, from anything else (a long code, a Messaging Service) 1/s; email 10/s.
    """
    for name in (sender, channel):
        if name in rates:
            _interval(rates[name])
            return float(rates[name])
    if channel == "sms":
        if _SHORT_CODE.fullmatch(sender):
            return SHORT_CODE_RATE
        if _TOLL_FREE.fullmatch(sender):
            return TOLL_FREE_RATE
        return LONG_CODE_RATE
    if channel == "email":
        return EMAIL_RATE
    raise ConfigurationError(f"no send rate for channel {channel!r}; set one in rates")
