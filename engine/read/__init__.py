"""Read models for people: lead views, funnel stats, timelines and Prometheus metrics.

May import: funnel, workflow and the low floors. Reads only; changes nothing.
"""

from engine.read.metrics import Metrics
from engine.read.stats import funnel
from engine.read.timeline import timeline
from engine.read.views import find_by_key, lead_detail

__all__ = ["Metrics", "find_by_key", "funnel", "lead_detail", "timeline"]
