"""The engine over time: Dramatiq actors, the scheduler, simulation and demo personas.

May import: app, delivery, funnel, workflow and the low floors.
"""

from engine.runner.actors import Tasks, make_broker
from engine.runner.inline import run_due
from engine.runner.simulation import ScriptedEvent, Simulation

__all__ = ["ScriptedEvent", "Simulation", "Tasks", "make_broker", "run_due"]
