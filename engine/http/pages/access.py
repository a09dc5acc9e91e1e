"""Who may see the dashboard: a login with an API key, a signed session cookie, CSRF tokens.

With `NURTURE_API_KEYS` set, a visitor signs in once with a key and gets a session cookie
(signed with `NURTURE_SECRET_KEY`, HttpOnly, SameSite=Strict, Secure over HTTPS) that names
the key only by a fingerprint, so rotating a key out signs its sessions out. Without keys the
dashboard is open: `nurture run` then listens on loopback only. Either way every session
carries a random CSRF token that each form posts back, so another site cannot make a browser
act on a lead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "nurture_session"
MAX_AGE_SECONDS = 12 * 3600  # a working day, then sign in again


@dataclass(frozen=True)
class Visit:
    """One browser's session: whether it signed in, and the token its forms must post back."""

    signed_in: bool
    csrf: str
    fresh: bool  # made for this request: the response must set the cookie


class Access:
    """Signs and checks dashboard sessions against the configured API keys."""

    def __init__(self, keys: Sequence[str], secret: str) -> None:
        self.keys = [key.encode() for key in keys]
        self.required = bool(keys)
        self._serializer = URLSafeTimedSerializer(secret, salt="nurture-dashboard")

    def visit(self, request: Request) -> Visit:
        """The session the request's cookie carries, or a fresh anonymous one."""
        data = self._load(request.cookies.get(COOKIE))
        if data is None:
            return Visit(signed_in=not self.required, csrf=secrets.token_urlsafe(24), fresh=True)
        fingerprint = str(data.get("k", ""))
        signed_in = not self.required or any(
            hmac.compare_digest(fingerprint, _fingerprint(key)) for key in self.keys
        )
        return Visit(signed_in=signed_in, csrf=str(data.get("c", "")), fresh=False)

    def sign_in(self, given: str) -> str | None:
        """The cookie value for a session signed in with `given`; None when no key matches."""
        token = given.strip().encode()
        # Compare with every key (no short cut), so timing says nothing about which is close.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        if not any(matches):
            return None
        key = self.keys[matches.index(True)]
        return self._dump(_fingerprint(key), secrets.token_urlsafe(24))

    def anonymous(self, visit: Visit) -> str:
        """The cookie value of a session not signed in, keeping its CSRF token."""
        return self._dump("", visit.csrf)

    def check_csrf(self, visit: Visit, posted: str | None) -> None:
        """403 unless the form posted the session's own token."""
        if visit.fresh or not posted or not hmac.compare_digest(posted, visit.csrf):
            raise HTTPException(403, "the form's security token is missing or stale: reload")

    @staticmethod
    def set_cookie(response: Response, request: Request, value: str) -> None:
        """Attach the session cookie, HttpOnly and SameSite=Strict, Secure over HTTPS."""
        response.set_cookie(
            COOKIE,
            value,
            max_age=MAX_AGE_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )

    def _dump(self, fingerprint: str, csrf: str) -> str:
        return self._serializer.dumps({"k": fingerprint, "c": csrf})

    def _load(self, value: str | None) -> dict[str, object] | None:
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=MAX_AGE_SECONDS)
        except BadSignature:  # forged, tampered with or expired (SignatureExpired is one)
            return None
        return data if isinstance(data, dict) else None


def _fingerprint(key: bytes) -> str:
    """What a cookie says of its key: enough to tell keys apart, useless to sign in with."""
    return hashlib.sha256(b"nurture-dashboard:" + key).hexdigest()[:32]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only, never another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
