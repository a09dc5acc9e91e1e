"""Signed unsubscribe tokens: the link names lead and email topic, and cannot be forged or altered.

Links sent before topics existed name their sequence instead; `topic_named` reads those as
the topic that sequence sends under now.
"""

from __future__ import annotations

from engine.signing import InvalidTokenError, b64, sign, unb64, unsign
from engine.workflow.spec import DEFAULT_TOPIC, TOPIC, Workflows

__all__ = ["InvalidTokenError", "make_token", "read_token", "topic_named"]


def make_token(secret: str, lead_id: int, topic: str) -> str:
    """A URL-safe token `<lead>.<topic>.<signature>` signed with HMAC-SHA256."""
    return sign(secret, [str(lead_id), b64(topic.encode())])


def read_token(secret: str, token: str) -> tuple[int, str]:
    """The (lead id, topic) a token names; InvalidTokenError when it was not signed by us."""
    lead_part, topic_part = unsign(secret, token, 2)
    try:
        return int(lead_part), unb64(topic_part).decode()
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
