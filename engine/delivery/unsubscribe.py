"""Signed unsubscribe tokens: the link names lead and list, and cannot be forged or altered."""

from __future__ import annotations

import base64
import hashlib
import hmac

from engine.errors import NurtureError


class InvalidTokenError(NurtureError):
    """Raised when an unsubscribe token is malformed or its signature does not match."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, lead_id: int, list_name: str) -> str:
    """A URL-safe token `<lead>.<list>.<signature>` signed with HMAC-SHA256."""
    payload = f"{lead_id}.{_b64(list_name.encode())}"
    signature = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    return f"{payload}.{_b64(signature)}"


def read_token(secret: str, token: str) -> tuple[int, str]:
    """The (lead id, list) a token names; InvalidTokenError when it was not signed by us."""
    try:
        lead_part, list_part, signature = token.split(".")
        expected = hmac.new(
            secret.encode(), f"{lead_part}.{list_part}".encode(), hashlib.sha256
        ).digest()[:16]
        # Compare the text as issued: decoding first would accept other spellings of the same
        # bytes (spare bits in the last character, added padding) as further valid tokens.
        if not signature.isascii() or not hmac.compare_digest(_b64(expected), signature):
            raise InvalidTokenError("unsubscribe token signature does not match")
        return int(lead_part), _unb64(list_part).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidTokenError(f"malformed unsubscribe token: {error}") from error
