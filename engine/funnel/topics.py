"""Email topics a lead has left: recorded with a `topic_unsubscribed` event, read before sends.

A sequence's emails go out under its topic (`topic:` in its YAML, else `marketing`). Leaving
a topic stops the emails of every sequence with that topic and no others; leaving everything
is the `unsubscribed` event (email consent off). The `unsubscribed` event type stays the
whole opt-out, so `exit_when: [unsubscribed]` and scoring rules on it keep their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from engine.db import is_postgres
from engine.errors import InvalidLeadError
from engine.models import Lead, TopicOptOut
from engine.workflow.spec import TOPIC

TOPIC_EVENT = "topic_unsubscribed"


def topic_of(properties: Mapping[str, Any]) -> str:
    """The topic a `topic_unsubscribed` event leaves; InvalidLeadError when it names none."""
    topic = properties.get("topic")
    if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
        raise InvalidLeadError(
            f"a {TOPIC_EVENT} event needs a topic property: lower-case letters, digits and -"
            ", at most 100, like product-news"
        )
    return topic


def leave_topic(session: Session, lead: Lead, topic: str, source: str, now: datetime) -> None:
    """Record that the lead left `topic`, once: leaving it again changes nothing."""
    insert = pg_insert if is_postgres(session) else sqlite_insert
    session.execute(
        insert(TopicOptOut)
        .values(lead_id=lead.id, topic=topic, source=source, created_at=now)
        .on_conflict_do_nothing(index_elements=["lead_id", "topic"])
    )


_LEFT = select(TopicOptOut.id).where(
    TopicOptOut.lead_id == bindparam("lead"), TopicOptOut.topic == bindparam("topic")
)


def has_left(session: Session, lead_id: int, topic: str) -> bool:
    """True when the lead left this topic."""
    return session.scalar(_LEFT, {"lead": lead_id, "topic": topic}) is not None
