"""The engine over time: Dramatiq actors, the scheduler, simulation and demo personas.

May import: app, delivery, funnel, workflow and the low floors.
"""
