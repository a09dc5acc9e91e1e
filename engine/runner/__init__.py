"""The engine over time: Dramatiq actors, the scheduler, simulation, backtests, demo personas,
experiments' winners.

May import: app, read, delivery, funnel, workflow, channels and the low floors.
"""

from engine.runner.actors import Tasks, make_broker
from engine.runner.backtest import BacktestReport, backtest
from engine.runner.inline import run_due
from engine.runner.simulation import ScriptedEvent, Simulation
from engine.runner.winners import decide_winners, pick_variant

__all__ = [
    "BacktestReport",
    "ScriptedEvent",
    "Simulation",
    "Tasks",
    "backtest",
    "decide_winners",
    "make_broker",
    "pick_variant",
    "run_due",
]
