"""Per-client request limits for the public endpoints (tracking beacons, form posts).

One limiter per process, on the pacer's `reserve`: shared by every API process through Redis
when NURTURE_REDIS_URL is set, else kept in this process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis
from fastapi import HTTPException

from engine.app import App
from engine.delivery.pacing import LocalPacer, Pacer, PacingTimeout, RedisPacer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quota:
    """What a client address may send: `rate` requests a second, in bursts of `burst`."""

    rate: float
    burst: int


def limiter(app: App) -> Pacer:
    """The per-client limiter: on Redis when the deployment has one, else in this process."""
    if app.settings.redis_url:
        return RedisPacer(redis.Redis.from_url(app.settings.redis_url), prefix="nurture:limit:")
    return LocalPacer()


def throttle(limit: Pacer, key: str, quota: Quota, what: str) -> None:
    """429 with Retry-After for a client over its quota; a limiter
    that fails (Redis down) lets the request in, as losing what it carries is worse than a
    burst the database takes anyway."""
    try:
        limit.reserve(key, quota.rate, timeout=quota.burst / quota.rate)
    except PacingTimeout as error:
        raise HTTPException(
            429,
            f"too many {what} from this address",
            headers={"Retry-After": str(math.ceil(error.retry_after))},
        ) from error
    except redis.RedisError as error:
        log.warning("%s rate limit unavailable, request let through: %s", what, error)
