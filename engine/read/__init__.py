"""Read models for people: lead views, funnel stats, timelines, the dashboard's overview and
Prometheus metrics.

May import: funnel, workflow and the low floors. Reads only; changes nothing.
"""

from engine.read.experiments import experiments_overview, sequence_experiments
from engine.read.metrics import Metrics
from engine.read.overview import Period, overview
from engine.read.stats import funnel, stage_counts
from engine.read.timeline import Entry, EntryKind, score_series, timeline
from engine.read.views import find_by_key, lead_detail

__all__ = [
    "Entry",
    "EntryKind",
    "Metrics",
    "Period",
    "experiments_overview",
    "find_by_key",
    "funnel",
    "lead_detail",
    "overview",
    "score_series",
    "sequence_experiments",
    "stage_counts",
    "timeline",
]
