"""Pacing: per-sender slots 1/rate apart across threads and processes; timeouts take no slot."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from engine.delivery.pacing import LocalPacer, Pacer, PacingTimeout, RedisPacer, rate_for
from engine.errors import ConfigurationError

TOLERANCE = 0.01  # rounding allowed on a computed delay, in seconds
JITTER = 0.05  # how late a thread on a busy machine may see its slot, in seconds


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the Redis test database, its keys removed afterwards."""
    prefix = f"nurture-pace-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_pacers(redis_url: str, redis_prefix: str) -> Iterator[Callable[[], RedisPacer]]:
    """Makes RedisPacers on one prefix, each with its own client, as separate processes would."""
    clients: list[redis.Redis] = []

    def make() -> RedisPacer:
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        return RedisPacer(client, prefix=redis_prefix)

    yield make
    for client in clients:
        client.close()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def pacer(request: pytest.FixtureRequest) -> Pacer:
    """Each pacer in turn: the in-process one, then the Redis one."""
    if request.param == "local":
        return LocalPacer()
    make: Callable[[], RedisPacer] = request.getfixturevalue("redis_pacers")
    return make()


def _granted_times(pacers: list[Pacer], key: str, rate: float, per_thread: int) -> list[float]:
    """Run one thread per pacer acquiring `per_thread` slots; the sorted slot times granted."""
    granted: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(pacers))

    def work(p: Pacer) -> None:
        start.wait()
        for _ in range(per_thread):
            asked = time.monotonic()
            at = asked + p.acquire(key, rate, timeout=10)  # the slot, not when the sleep woke
            with lock:
                granted.append(at)

    threads = [threading.Thread(target=work, args=(p,)) for p in pacers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(granted)


def test_concurrent_acquisitions_get_distinct_slots_one_interval_apart(pacer: Pacer) -> None:
    times = _granted_times([pacer] * 4, "sms:+15005550006", rate=5, per_thread=3)
    assert len(times) == 12
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.2 - JITTER, gaps  # two slots handed out together would show ~0
    assert times[-1] - times[0] >= 11 * 0.2 - TOLERANCE


def test_different_keys_do_not_throttle_each_other(pacer: Pacer) -> None:
    assert pacer.acquire("sms:+15005550006", 1, timeout=0) == pytest.approx(0, abs=TOLERANCE)
    assert pacer.acquire("sms:+15005550007", 1, timeout=0) == pytest.approx(0, abs=TOLERANCE)
    assert pacer.acquire("email:sendgrid", 1, timeout=0) == pytest.approx(0, abs=TOLERANCE)
    with pytest.raises(PacingTimeout):
        pacer.acquire("sms:+15005550006", 1, timeout=0)


def test_a_wait_beyond_the_timeout_raises_and_reserves_no_slot(pacer: Pacer) -> None:
    key = "sms:+18005550006"
    first = time.monotonic()
    pacer.acquire(key, 10, timeout=0)
    with pytest.raises(PacingTimeout) as caught:
        pacer.acquire(key, 10, timeout=0.05)
    assert caught.value.key == key
    assert caught.value.retry_after == pytest.approx(0.1, abs=TOLERANCE)
    waited = pacer.acquire(key, 10, timeout=10)
    assert waited == pytest.approx(0.1, abs=TOLERANCE)  # not 0.2: the failed call took no slot
    assert time.monotonic() - first == pytest.approx(0.1, abs=JITTER)


def test_a_non_positive_rate_is_a_configuration_error(pacer: Pacer) -> None:
    with pytest.raises(ConfigurationError):
        pacer.acquire("sms:+15005550006", 0, timeout=1)


@pytest.mark.redis
def test_redis_pacers_on_separate_clients_still_space_their_slots(
    redis_pacers: Callable[[], RedisPacer],
) -> None:
    two_processes: list[Pacer] = [redis_pacers(), redis_pacers()]
    times = _granted_times(two_processes, "email:sendgrid", rate=5, per_thread=3)
    assert len(times) == 6
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.2 - JITTER, gaps
    assert times[-1] - times[0] >= 5 * 0.2 - TOLERANCE


def test_rate_for_prefers_an_explicit_sender_rate_then_a_channel_rate() -> None:
    rates = {"+15005550006": 3, "sendgrid": 100, "sms": 2}
    assert rate_for("sms", "+15005550006", rates) == 3
    assert rate_for("email", "sendgrid", rates) == 100
    assert rate_for("sms", "+15005550007", rates) == 2
    assert rate_for("email", "smtp", {"email": 25}) == 25


def test_rate_for_defaults_by_kind_of_sender() -> None:
    assert rate_for("sms", "12345", {}) == 100  # short code
    assert rate_for("sms", "123456", {}) == 100
    assert rate_for("sms", "+18885550006", {}) == 3  # toll-free
    assert rate_for("sms", "+18335550006", {}) == 3
    assert rate_for("sms", "+18105550006", {}) == 1  # 810 is a Michigan long code
    assert rate_for("sms", "+15005550006", {}) == 1  # long code
    assert rate_for("sms", "MG0123456789abcdef0123456789abcdef", {}) == 1  # messaging service
    assert rate_for("email", "sendgrid", {}) == 10


def test_rate_for_refuses_an_unknown_channel_and_a_non_positive_rate() -> None:
    with pytest.raises(ConfigurationError):
        rate_for("push", "app", {})
    with pytest.raises(ConfigurationError):
        rate_for("sms", "+15005550006", {"+15005550006": 0})


def test_reserving_without_waiting_lets_a_burst_through_and_refuses_the_rest(pacer: Pacer) -> None:
    key = f"collect:{uuid.uuid4().hex}"
    started = time.monotonic()
    delays = [pacer.reserve(key, 10, timeout=0.45) for _ in range(5)]
    assert time.monotonic() - started < 0.2  # nothing slept
    assert delays == pytest.approx([0, 0.1, 0.2, 0.3, 0.4], abs=JITTER)
    with pytest.raises(PacingTimeout):
        pacer.reserve(key, 10, timeout=0.45)
    time.sleep(0.15)  # 1.5 slots pass: one more is free, half an interval sooner
    expected = 0.5 - (time.monotonic() - started)
    assert pacer.reserve(key, 10, timeout=0.45) == pytest.approx(expected, abs=JITTER)
