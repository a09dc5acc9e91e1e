"""Read models for people: lead views, funnel stats, timelines and Prometheus metrics.

May import: funnel, workflow and the low floors. Reads only; changes nothing.
"""
