"""From a planned step to a sent message: render, guard, pace, send, feedback, handoff.

May import: funnel, workflow, channels and the low floors.
"""
