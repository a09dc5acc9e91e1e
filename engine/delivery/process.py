"""What delivery needs from the process that runs it; `engine.app.App` provides all of it.

Declared here, where it is used, so delivery never imports the App that is built from it; a
test may hand in any object with these attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from channels.base import Channel
from engine.delivery.pacing import Pacer
from engine.delivery.rendering import Renderer
from engine.settings import Settings
from engine.workflow.runtime import Runtime


@dataclass(frozen=True)
class CrmTarget:
    """Where handoffs go: the CRM webhook (None: the database row is the handoff) and its key."""

    url: str | None
    secret: str


class DeliveryContext(Protocol):
    """The process's parts a send or a handoff uses."""

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Where the transactions around each provider or CRM call begin."""

    @property
    def rt(self) -> Runtime:
        """Workflows, sending rules, owner assignment and the clock."""

    @property
    def settings(self) -> Settings:
        """Public URL and secret for unsubscribe links; the sender of owner notes."""

    @property
    def renderer(self) -> Renderer:
        """The templates."""

    @property
    def channels(self) -> Mapping[str, Channel]:
        """The adapter per channel name."""

    @property
    def pacer(self) -> Pacer | None:
        """Send slots per sender; None sends unpaced."""

    @property
    def crm(self) -> CrmTarget:
        """Where handoffs go."""
