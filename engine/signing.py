"""Signed link tokens: URL-safe fields joined by dots, then an HMAC-SHA256 of them.

One scheme for every link nurture signs with NURTURE_SECRET_KEY: unsubscribe links, click
redirects and the lead token a tracked link to the website carries for the tracking snippet.
A token's purpose is signed with its fields (unsubscribe links, the first, sign none, so the
links already sent stay valid), so a token issued for one purpose never passes for another.
A token is compared as issued: other spellings of the same bytes are not further valid tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from engine.errors import NurtureError

# The query parameter of a tracked link to one of NURTURE_SITE_ORIGINS: the lead's token,
# read by the tracking snippet (engine/http/t.js) and sent back with its page views.
LEAD_PARAM = "nurture_lead"
# How long after the click a lead token identifies a visitor: long enough for the page to load
# behind a consent banner, short enough that a shared or bookmarked URL soon stops naming them.
LEAD_TOKEN_MAX_AGE = timedelta(days=7)
_SKEW = timedelta(minutes=5)  # between the clocks of the API processes issuing and reading
_SIGNATURE_BYTES = 16
_FIELD = re.compile(r"[A-Za-z0-9_-]*")


class InvalidTokenError(NurtureError):
    """Raised when a signed token is malformed, expired, or its signature does not match."""


def b64(data: bytes) -> str:
    """URL-safe base64 without padding: a token field that may hold any bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """The bytes of a `b64` field; ValueError (binascii.Error) when it is not base64."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str, purpose: str) -> str:
    message = f"{purpose}:{payload}" if purpose else payload
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return b64(digest[:_SIGNATURE_BYTES])


def sign(secret: str, fields: Sequence[str], purpose: str = "") -> str:
    """`<field>.<field>...<signature>`; each field URL-safe text without dots (`b64` others)."""
    for field in fields:
        if not _FIELD.fullmatch(field):
            raise ValueError(f"a token field must be URL-safe text without dots: {field!r}")
    payload = ".".join(fields)
    return f"{payload}.{_signature(secret, payload, purpose)}"


def unsign(secret: str, token: str, count: int, purpose: str = "") -> list[str]:
    """The `count` fields of a token we signed for `purpose`; InvalidTokenError otherwise."""
    *fields, signature = token.split(".")
    if len(fields) != count:
        raise InvalidTokenError(f"malformed token: expected {count + 1} parts")
    expected = _signature(secret, ".".join(fields), purpose)
    # Compare the text as issued: decoding first would accept other spellings of the same
    # bytes (spare bits in the last character, added padding) as further valid tokens.
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        raise InvalidTokenError("token signature does not match")
    return fields


def dated_token(secret: str, purpose: str, row_id: int, issued_at: datetime) -> str:
    """A token naming one row (a lead, a consent) for `purpose`, with when it was issued, so
    `read_dated_token` can refuse it once it is too old."""
    return sign(secret, [str(row_id), str(int(issued_at.timestamp()))], purpose)


def read_dated_token(
    secret: str, token: str, purpose: str, now: datetime, max_age: timedelta
) -> int:
    """The row a `dated_token` we issued for `purpose` names; InvalidTokenError when forged,
    altered, issued for another purpose, older than `max_age` or issued in the future."""
    row_part, issued_part = unsign(secret, token, 2, purpose)
    if not (row_part.isdigit() and issued_part.isdigit()):
        raise InvalidTokenError(f"malformed {purpose} token")
    age = now.timestamp() - int(issued_part)
    if not -_SKEW.total_seconds() <= age <= max_age.total_seconds():
        raise InvalidTokenError(f"{purpose} token expired")
    return int(row_part)


def lead_token(secret: str, lead_id: int, issued_at: datetime) -> str:
    """A token naming a lead, for a link to the website: the snippet sends it back, and the
    collect endpoint (`read_lead_token`) joins the visitor to that lead."""
    return dated_token(secret, "lead", lead_id, issued_at)


def read_lead_token(
    secret: str, token: str, now: datetime, max_age: timedelta = LEAD_TOKEN_MAX_AGE
) -> int:
    """The lead a token we issued names; InvalidTokenError when forged, altered or older than
    `max_age` (or issued in the future)."""
    return read_dated_token(secret, token, "lead", now, max_age)
