"""From a planned step to a sent message: render, guard, pace, send, feedback, handoff.

May import: funnel, workflow, channels and the low floors.
"""

from engine.delivery.feedback import record_delivery_event, record_delivery_events
from engine.delivery.handoff import HandoffAttempt, deliver_handoff
from engine.delivery.process import CrmTarget, DeliveryContext
from engine.delivery.rendering import Renderer
from engine.delivery.sending import SendAttempt, send_delivery

__all__ = [
    "CrmTarget",
    "DeliveryContext",
    "HandoffAttempt",
    "Renderer",
    "SendAttempt",
    "deliver_handoff",
    "record_delivery_event",
    "record_delivery_events",
    "send_delivery",
]
