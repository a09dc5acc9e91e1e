"""Signed unsubscribe tokens: the link names lead and email topic, and cannot be forged or altered.

Links sent before topics existed name their sequence instead; `topic_named` reads those as
the topic that sequence sends under now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from engine.errors import NurtureError
from engine.workflow.spec import DEFAULT_TOPIC, TOPIC, Workflows


class InvalidTokenError(NurtureError):
    """Raised when an unsubscribe token is malformed or its signature does not match."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, lead_id: int, topic: str) -> str:
    """A URL-safe token `<lead>.<topic>.<signature>` signed with HMAC-SHA256."""
    payload = f"{lead_id}.{_b64(topic.encode())}"
    signature = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    return f"{payload}.{_b64(signature)}"


def read_token(secret: str, token: str) -> tuple[int, str]:
    """The (lead id, topic) a token names; InvalidTokenError when it was not signed by us."""
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


def topic_named(workflows: Workflows, name: str) -> str:
    """The topic a token's name means: the name itself, unless no loaded sequence sends under it
    but one is called so (a link from before topics, which named its sequence); a name that
    cannot be a topic (an old link to a sequence since removed) means the default topic."""
    if any(sequence.topic == name for sequence in workflows.sequences.values()):
        return name
    sequence = workflows.sequences.get(name)
    if sequence is not None:
        return sequence.topic
    return name if TOPIC.fullmatch(name) else DEFAULT_TOPIC
