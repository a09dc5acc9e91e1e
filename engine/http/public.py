"""What the public endpoints (tracking beacons, form posts) share besides their rate limit
(`throttle.py`): the client's address, the check of a browser's `Origin`, the CORS headers."""

from __future__ import annotations

from collections.abc import Collection

from fastapi import HTTPException, Request

from engine.origins import origin


def client_address(request: Request) -> str:
    """The client's address: what its rate limit is keyed on and what a consent records."""
    return request.client.host if request.client else "unknown"


def names_one_of(header: str | None, origins: Collection[str | None]) -> bool:
    """True when an `Origin` header names one of `origins` (as `engine.origins.origin` spells
    them), however it spells the case or the default port; never for `null` or a URL."""
    found = origin(header, exact=True) if header else None
    return found is not None and found in origins


def site_origin(request: Request, sites: Collection[str]) -> str:
    """The request's `Origin` header as sent; 403 unless it names one of NURTURE_SITE_ORIGINS."""
    header = request.headers.get("origin", "")
    if not names_one_of(header, sites):
        raise HTTPException(403, f"origin {header[:200]!r} is not in NURTURE_SITE_ORIGINS")
    return header


def cors(header: str) -> dict[str, str]:
    """The headers that let a script on the site that sent `Origin: header` read the answer
    (browsers compare it with the origin they sent, so it goes back as sent)."""
    return {"Access-Control-Allow-Origin": header, "Vary": "Origin"}
